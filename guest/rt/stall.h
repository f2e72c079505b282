/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Time from the TSC, and the stall meter. The TSC keeps running while a
 * VMM has the VM stopped (migration downtime, CPR), so the longest gap
 * between consecutive samples of a busy loop is the pause the guest saw.
 * Every main loop calls stall_sample() once per unit of work; the time of
 * the work itself is part of each gap, so the baseline is a few µs
 * (plus the heartbeat's console output once a second).
 *
 * Two figures: the longest gap since the meter started (stall_max_us(),
 * heartbeat output included), and the longest gap of the current
 * heartbeat window (stall_window_us()), with the time the heartbeat spent
 * printing itself left out, so that a pause shorter than that output
 * still shows.
 */
#ifndef GUEST_STALL_H
#define GUEST_STALL_H

#include <stdint.h>

extern uint64_t tsc_hz;			/* set by tsc_calibrate() */
extern const char *tsc_source;		/* "pit", "cpuid" or "guess" */
extern uint64_t stall_last_tsc;
extern uint64_t stall_max_tsc;
extern uint64_t stall_win_tsc;		/* longest gap of this window */
extern uint64_t stall_skip_tsc;		/* left out of the next gap */

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
	if (gap > stall_skip_tsc && gap - stall_skip_tsc > stall_win_tsc)
		stall_win_tsc = gap - stall_skip_tsc;
	stall_skip_tsc = 0;
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
/*
 * A heartbeat's window figure: stall_window_us() returns the longest gap
 * since the previous call (in µs) and starts a new window; call it right
 * before printing the heartbeat and stall_window_skip() right after: the
 * time in between is left out of the new window (not of stall_max_us()).
 * stall_skipped_us() is how long that was, the last time: a pause that
 * fell in it shows there and nowhere else.
 */
uint64_t stall_window_us(void);
void stall_window_skip(void);
uint64_t stall_skipped_us(void);
/* Restart the meter (after start-up work that is not the workload). */
void stall_reset(void);

#endif /* GUEST_STALL_H */
