/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * tests/engine's common ground: a "side" is a fake host (fake_host.h)
 * with its own ferry-dev device server, the device, and a migration
 * engine. Two sides in one process migrate the fake guest; the checks
 * below say what a completed or failed migration must leave behind.
 * Failed checks are counted (CHECK), not fatal: a case goes on to clean
 * up, and harness_main() reports the count.
 */
#ifndef FERRY_TESTS_ENGINE_HARNESS_H
#define FERRY_TESTS_ENGINE_HARNESS_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "fake_host.h"
#include "ferry/mig_channel.h"
#include "ferry/mig_engine.h"
#include "../check.h"

#define SKIP			77
#define VM_NAME			"engine-test-vm"
#define MODEL			"ferry-dma"
#define DEVMEM			"1M"
#define CASE_TIMEOUT_S		120	/* watchdog per case */
#define IO_TIMEOUT_MS		10000u
#define DOWNTIME_MS		100u

extern int failures;
extern const char *ferry_dev;
extern char tmpdir[64];
extern const char *volatile current_case;
extern const char *side_devmem;		/* ferry-dev --device-memory */
extern bool side_no_precopy;		/* ferry-dev --no-precopy */

void sleep_ms(unsigned int ms);
unsigned int count_entries(const char *dir);

/* The engine's events, as trails ("setup>active>device>completed"). */
struct evlog {
	pthread_mutex_t lock;
	char status[160];
	char device[160];	/* the device's states, in order */
};

struct side {
	const char *role;
	struct fake_host h;
	bool h_init;
	pid_t pid;
	char sock[128];
	struct vdev *dev;
	struct mig_engine *e;
	struct evlog ev;
};

/* A side with side_devmem of device memory; a source's guest runs. 0, or
 * -errno (a failed CHECK). */
int side_open(struct side *s, const char *role, const char *model,
	      bool source);
void side_close(struct side *s);
/* Downtime limit, the test's bandwidth cap, device DMA logs on/off. */
void set_params(struct side *s, uint64_t downtime_ms, bool devlog);
void set_io_timeout(struct side *s, uint64_t ms);

/* Start both ends. socketpair: wrap (may be NULL) gets the source's
 * end. tcp: a loopback listener, accepted on a thread. */
int start_socketpair(struct side *src, struct side *dst,
		     struct mig_channel *(*wrap)(struct mig_channel *, void *),
		     void *arg);
int start_tcp(struct side *src, struct side *dst);
/* The destination at its door, as a VMM with --incoming: the engine
 * accepts the source and its multifd channels (mig_load_listen()).
 * tcp: a loopback port (*port), else a unix socket; uri says which. */
int dest_listen(struct side *dst, bool tcp, char *uri, size_t urilen,
		uint16_t *port);
int source_start(struct side *src, const char *uri);
/* Until the migration ended (bounded), its thread collected. */
enum mig_status wait_final(struct side *s);

struct ram_diff {
	uint64_t pages;			/* differing pages */
	uint64_t outside;		/* ...not written by device DMA */
	uint64_t first;			/* offset of the first */
};

int ram_compare(struct side *a, struct side *b, struct ram_diff *d);
void dev_state_check(struct side *s, enum vfu_mig_state want);
uint32_t devmem_crc(struct side *s);
void print_figures(struct side *src, struct side *dst);
/* The destination runs exactly the guest the source froze. devlog
 * false: the negative control (RAM must differ where the device
 * wrote). */
void check_completed(struct side *src, struct side *dst, bool devlog);
/* The guest is the source's again and runs, as if nothing happened. */
void check_source_kept(struct side *src);
/* No guest instruction ran on the destination. */
void check_dest_refused(struct side *dst, bool loaded);
bool error_has(struct side *s, const char *what, char *out, size_t len);
/* The same source engine to a fresh destination: still usable. */
void migrate_again(struct side *src, bool tcp);

struct test_case {
	const char *name;
	const char *(*fn)(void);	/* returns what it proved */
};

/* Run every case (or the one named in argv[1]) under a watchdog, with
 * fd and thread counts before and after; the exit status. */
int harness_main(const struct test_case *cases, size_t nr_cases, int argc,
		 char **argv);

#endif /* FERRY_TESTS_ENGINE_HARNESS_H */
