/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * A TCP loopback proxy between a migration source and its destination,
 * for faults a real network has: each connection it forwards (numbered
 * in accept order: 0 the main channel, k the k-th multifd channel) may
 * be slowed at random (seeded, so a failure can be replayed), or cut --
 * closed, or stalled silently as a partition would -- once a given
 * section type passes on it, or once so many bytes have. The source to
 * destination direction is parsed as a migration stream so that a cut
 * can name a point of the protocol; the bytes are never changed.
 *
 * Every thread is joined and every fd closed by tproxy_stop(); waits are
 * bounded (poll with a timeout, the stop pipe).
 */
#ifndef FERRY_TESTS_ENGINE_PROXY_H
#define FERRY_TESTS_ENGINE_PROXY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TPROXY_MAX_CONNS	16

enum tproxy_cut {
	TPROXY_CUT_NONE,
	TPROXY_CUT_CLOSE,	/* both sockets shut down: EOF, EPIPE */
	TPROXY_CUT_STALL,	/* nothing more either way, nothing closed */
};

struct tproxy_fault {
	unsigned max_delay_us;	/* per forwarded chunk, 0..max, seeded */
	enum tproxy_cut cut;
	/* the cut comes with the first section of this type (0: none) */
	uint16_t cut_at_type;
	/* ...or once this many stream bytes went forward (0: none) */
	uint64_t cut_after_bytes;
};

struct tproxy;

/* Listen on 127.0.0.1 (an ephemeral port, written as "tcp:..." to
 * uri) and forward to target_port. */
int tproxy_start(uint16_t target_port, uint64_t seed, struct tproxy **out,
		 char *uri, size_t urilen);
/* Set before the connection arrives. */
void tproxy_set_fault(struct tproxy *p, unsigned conn,
		      const struct tproxy_fault *f);
/* Connections accepted so far; whether conn's cut happened. */
unsigned tproxy_conns(struct tproxy *p);
bool tproxy_was_cut(struct tproxy *p, unsigned conn);
void tproxy_stop(struct tproxy *p);

#endif /* FERRY_TESTS_ENGINE_PROXY_H */
