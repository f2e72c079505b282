// SPDX-License-Identifier: BSD-3-Clause
/*
 * TSC frequency: a PIT channel 2 one-shot waited out in ring 0 (one
 * service call per run) and timed with the native TSC in ring 3;
 * CPUID leaves 0x16/0x15 if the PIT does not answer; a stated guess as
 * the last resort, so a VMM without a PIT still runs the workload (its
 * times are then approximate, and the start line says tsc_src=guess).
 */
#include <stdint.h>

#include "boot.h"
#include "stall.h"
#include "svc.h"

#define CAL_MS		50	/* <= SVC_PIT_MAX_MS: the PIT count fits 16 bits */
#define CAL_RUNS_MAX	24
#define CAL_AGREE	3
#define CAL_TOL_PPM	2000	/* 0.2 % */
#define TSC_MIN_HZ	100000000ull	/* sanity bounds on the result */
#define TSC_MAX_HZ	20000000000ull
#define TSC_GUESS_HZ	2000000000ull

uint64_t tsc_hz = TSC_GUESS_HZ;
const char *tsc_source = "guess";	/* pit, pit-noisy, cpuid, guess */
uint64_t stall_last_tsc;
uint64_t stall_max_tsc;
uint64_t stall_win_tsc;
uint64_t stall_skip_tsc;
static uint64_t stall_out_tsc;	/* when the heartbeat output began */
static uint64_t stall_skipped_tsc;	/* how long it took, the last time */

/*
 * Runs are only ever lengthened (service entry/exit, host preemption of
 * an emulated ring 0 on a busy machine), so the shortest run is the
 * estimate; keep sampling until CAL_AGREE runs lie within CAL_TOL_PPM
 * of it, or CAL_RUNS_MAX runs.
 */
static int tsc_from_pit(void)
{
	uint64_t runs[CAL_RUNS_MAX], best = ~0ull;
	unsigned int n, agree = 0;

	for (n = 0; n < CAL_RUNS_MAX; n++) {
		uint64_t t0 = rdtsc();

		if (svc_call(SVC_PIT_WAIT, CAL_MS, 0, 0))
			return -1;
		runs[n] = rdtsc() - t0;
		if (runs[n] < best)
			best = runs[n];
		agree = 0;
		for (unsigned int i = 0; i <= n; i++)
			if (runs[i] - best <= best / 1000000 * CAL_TOL_PPM)
				agree++;
		if (agree >= CAL_AGREE)
			break;
	}
	best = best * 1000 / CAL_MS;
	if (best < TSC_MIN_HZ || best > TSC_MAX_HZ)
		return -1;
	tsc_hz = best;
	tsc_source = agree >= CAL_AGREE ? "pit" : "pit-noisy";
	return 0;
}

static int tsc_from_cpuid(void)
{
	const struct boot_info *bi = &boot_info;
	uint64_t hz = 0;

	if (bi->cpuid15[0] && bi->cpuid15[1] && bi->cpuid15[2])
		hz = (uint64_t)bi->cpuid15[2] * bi->cpuid15[1] /
		     bi->cpuid15[0];
	else if (bi->cpuid16_eax)
		hz = (uint64_t)bi->cpuid16_eax * 1000000;
	if (hz < TSC_MIN_HZ || hz > TSC_MAX_HZ)
		return -1;
	tsc_hz = hz;
	tsc_source = "cpuid";
	return 0;
}

void tsc_calibrate(void)
{
	if (tsc_from_pit() && tsc_from_cpuid()) {
		tsc_hz = TSC_GUESS_HZ;
		tsc_source = "guess";
	}
	stall_reset();
}

/* Split to stay within 64 bits for any realistic tick count. */
uint64_t tsc_to_us(uint64_t ticks)
{
	return ticks / tsc_hz * 1000000 + ticks % tsc_hz * 1000000 / tsc_hz;
}

uint64_t tsc_to_ms(uint64_t ticks)
{
	return ticks / tsc_hz * 1000 + ticks % tsc_hz * 1000 / tsc_hz;
}

uint64_t us_to_tsc(uint64_t us)
{
	return us / 1000000 * tsc_hz + us % 1000000 * tsc_hz / 1000000;
}

uint64_t stall_max_us(void)
{
	return tsc_to_us(stall_max_tsc);
}

uint64_t stall_window_us(void)
{
	uint64_t us = tsc_to_us(stall_win_tsc);

	stall_win_tsc = 0;
	stall_out_tsc = rdtsc();
	return us;
}

/* The output began after the last sample: the next gap holds all of it. */
void stall_window_skip(void)
{
	stall_skip_tsc = rdtsc() - stall_out_tsc;
	stall_skipped_tsc = stall_skip_tsc;
}

uint64_t stall_skipped_us(void)
{
	return tsc_to_us(stall_skipped_tsc);
}

void stall_reset(void)
{
	stall_last_tsc = rdtsc();
	stall_max_tsc = 0;
	stall_win_tsc = 0;
	stall_skip_tsc = 0;
	stall_skipped_tsc = 0;
}
