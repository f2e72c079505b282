/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Time from the TSC, and the stall meter. The TSC keeps running while a
 * VMM has the VM stopped (migration downtime, CPR), so the longest gap
 * between consecutive samples of a busy loop is the pause the guest saw.
 * Every main loop calls stall_sample() once per unit of work; the time of
 * the work itself is part of each gap, so the baseline is a few µs
 * (plus the heartbeat's console output once a second).
 */
#ifndef GUEST_STALL_H
#define GUEST_STALL_H

#include <stdint.h>

extern uint64_t tsc_hz;			/* set by tsc_calibrate() */
extern const char *tsc_source;		/* "pit", "cpuid" or "guess" */
extern uint64_t stall_last_tsc;
extern uint64_t stall_max_tsc;

static inline uint64_t rdtsc(void)
{
	uint32_t lo, hi;

	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

/* Sample the TSC, fold the gap since the last sample into the maximum;
 * returns the gap so callers can extend their own deadlines by it. */
static inline uint64_t stall_sample(uint64_t *now)
{
	uint64_t t = rdtsc(), gap = t - stall_last_tsc;

	if (gap > stall_max_tsc)
		stall_max_tsc = gap;
	stall_last_tsc = t;
	if (now)
		*now = t;
	return gap;
}

void tsc_calibrate(void);
uint64_t tsc_to_us(uint64_t ticks);
uint64_t tsc_to_ms(uint64_t ticks);
uint64_t us_to_tsc(uint64_t us);
uint64_t stall_max_us(void);
/* Restart the meter (after start-up work that is not the workload). */
void stall_reset(void);

#endif /* GUEST_STALL_H */
