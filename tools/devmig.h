/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Device-migration driver: migrates a ferry-dma device between two
 * ferry-dev servers while a DMA job stream runs, and verifies that
 * nothing was lost. Used by tools/ferry-devmig and tests/devmig.
 *
 * The driver plays the VMM: guest memory is a memfd DMA-mapped to both
 * servers, jobs are queued on the source's ring, the client keeps a
 * shadow of every byte the device should produce (CRC32C) and checks
 * each completion against it.
 */
#ifndef FERRY_TOOLS_DEVMIG_H
#define FERRY_TOOLS_DEVMIG_H

#include <stdbool.h>
#include <stdint.h>

struct devmig_opts {
	const char *src_path;
	const char *dst_path;
	uint32_t precopy_rounds;	/* 0: 3 */
	uint32_t jobs_per_round;	/* 0: 40 */
	bool verbose;
};

struct devmig_result {
	uint64_t precopy_bytes;
	uint64_t stopcopy_bytes;
	uint32_t rounds;
	uint64_t last_initial_bytes;
	uint64_t last_dirty_bytes;
	uint64_t jobs_total;
	uint64_t jobs_on_src;		/* completed before the switchover */
	bool inflight_at_stop;

	/* DMA dirty logging, page granularity over guest memory. */
	uint64_t page_size;
	uint64_t nr_pages;
	uint64_t *reported;		/* union of the reports */
	uint64_t *truth;		/* pages jobs wrote while logging */
	uint64_t pages_reported;
	uint64_t pages_truth;
	uint64_t pages_missing;

	uint32_t devmem_crc_src;
	uint32_t devmem_crc_dst;
	uint32_t running_crc_dev;
	uint32_t running_crc_shadow;
	bool ring_state_equal;
	uint64_t irq_src_after_stop;	/* vector 0 signals on the source */
	uint64_t irq_dst_after_unmask;	/* vector 0 signals on the dest. */
	uint64_t bad_completions;

	bool ok;
	char why[256];			/* first failure, when !ok */
};

/* Run the whole scenario. 0 when it ran (see r->ok for the verdict),
 * -errno when it could not (r->why says why). */
int devmig_run(const struct devmig_opts *o, struct devmig_result *r);
void devmig_result_free(struct devmig_result *r);
void devmig_result_print(const struct devmig_result *r);

/* Pages set in truth but not in reported (the coverage check). */
uint64_t devmig_coverage_missing(const uint64_t *truth,
				 const uint64_t *reported, uint64_t nr_pages);

#endif /* FERRY_TOOLS_DEVMIG_H */
