/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Convergence: when may the source stop the guest?
 *
 * The engine feeds samples (bytes sent, time spent, pages dirtied) after
 * every iteration; bandwidth and dirty rate are smoothed over the last
 * iterations. The expected downtime is remaining / bandwidth, where
 * remaining is the dirty RAM plus every device's pending data (its
 * STOP_COPY estimate) plus a fixed allowance for CPU/irqchip state. The
 * switchover happens when expected downtime <= downtime limit (and, with
 * switchover-ack, once the destination acked). A migration whose dirty
 * rate keeps up with the bandwidth never converges; mig_converge_reason()
 * says why, for query-migrate.
 */
#ifndef FERRY_MIG_CONVERGE_H
#define FERRY_MIG_CONVERGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MIG_DEFAULT_DOWNTIME_MS	300	/* QEMU's default downtime-limit */
#define MIG_MAX_DOWNTIME_MS	2000000	/* 2000 s, QEMU's maximum */
#define MIG_STATE_ALLOWANCE	(64u << 10)	/* vCPU/irqchip/etc. bytes */

struct mig_converge {
	uint64_t downtime_limit_ms;
	uint64_t max_bandwidth;		/* bytes/s, 0 = unlimited */
	double bandwidth;		/* bytes/s, smoothed */
	double dirty_rate;		/* bytes/s, smoothed */
	uint64_t remaining;		/* bytes at the last decision */
	uint64_t expected_downtime_ms;
	unsigned iterations;
};

void mig_converge_init(struct mig_converge *c, uint64_t downtime_limit_ms,
		       uint64_t max_bandwidth);
/* One iteration: sent bytes in elapsed_ns, dirtied bytes found after it. */
void mig_converge_sample(struct mig_converge *c, uint64_t sent,
			 uint64_t elapsed_ns, uint64_t dirtied);
/* Decide with remaining bytes to send; updates expected downtime. */
bool mig_converge_ready(struct mig_converge *c, uint64_t remaining);
/* Human-readable state for query-migrate (why not converging yet). */
void mig_converge_reason(const struct mig_converge *c, char *buf,
			 size_t len);
/* Sleep-based rate limit: how long to wait after sending `sent` bytes
 * in `elapsed_ns` to stay under max_bandwidth (0 = no wait). */
uint64_t mig_converge_throttle_ns(const struct mig_converge *c,
				  uint64_t sent, uint64_t elapsed_ns);

#endif /* FERRY_MIG_CONVERGE_H */
