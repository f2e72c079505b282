// SPDX-License-Identifier: BSD-3-Clause
/*
 * memstress: rewrites a working set of self-identifying pages (see
 * rt/pagecheck.h) at a chosen rate, verifying each page before it is
 * rewritten, and reports the longest stall it saw. Any lost or damaged
 * page is a FAIL with the page's report. Runs in ring 3.
 *
 * Parameters: seconds= (0 = forever), pages=, rate= (pages per second,
 * 0 = flat out), fill=1 (the first pass, which writes the working set
 * once, is not held to rate: "written once, then idle"), seed= (unused
 * by the checker; reserved for symmetry with dmastress),
 * selftest_corrupt=1 (flip one word of a verified page after
 * the first pass, behind the checker's back: the run must FAIL),
 * selftest_fault=1 (read an unmapped address: the exception path must
 * report FAIL).
 */
#include <stdint.h>

#include "cmdline.h"
#include "console.h"
#include "guest.h"
#include "lib.h"
#include "mem.h"
#include "pagecheck.h"
#include "stall.h"

#define DEFAULT_PAGES		4096
#define HEARTBEAT_US		1000000ull
#define PAGE_BYTES		4096ull
#define RESERVE_BYTES		(1ull << 20)	/* head room left unused */
#define SELFTEST_WORD		100
#define SELFTEST_UNMAPPED	(1ull << 40)	/* beyond every mapping */

const char guest_name[] = "memstress";

static uint64_t opt_seconds;
static uint64_t opt_pages = DEFAULT_PAGES;
static uint64_t opt_rate;
static uint64_t opt_fill;
static uint64_t opt_selftest_corrupt;
static uint64_t opt_selftest_fault;

static const struct param params[] = {
	{ "seconds", &opt_seconds },
	{ "pages", &opt_pages },
	{ "rate", &opt_rate },
	{ "fill", &opt_fill },
	{ "selftest_corrupt", &opt_selftest_corrupt },
	{ "selftest_fault", &opt_selftest_fault },
};

static int fail_mismatch(const struct page_mismatch *bad,
			 const struct pageset *ps)
{
	pageset_report(bad);
	say("FAIL page_mismatch page=%lu word=%u expected=0x%lx found=0x%lx "
	    "rewrites=%lu passes=%lu max_stall_us=%lu", bad->page, bad->word,
	    bad->expected, bad->found, ps->rewrites, ps->pass - 1,
	    stall_max_us());
	return 1;
}

/* Flip a bit in a page the current pass has not reached yet, so the very
 * next verification of it must catch the damage. */
static void selftest_corrupt(const struct pageset *ps)
{
	uint64_t index = ps->nr / 2;
	volatile uint64_t *p = pageset_page(ps, index);

	say("selftest: corrupting page %lu word %u", index, SELFTEST_WORD);
	p[SELFTEST_WORD] ^= 0x10;
}

int guest_main(void)
{
	struct page_mismatch bad;
	struct pageset ps;
	uint64_t max_pages, start, now, next_beat, deadline, done_corrupt = 0;
	void *base;

	params_parse(params, ARRAY_SIZE(params));
	mem_init();

	max_pages = mem_free_bytes() > RESERVE_BYTES ?
		    (mem_free_bytes() - RESERVE_BYTES) / PAGE_BYTES : 0;
	if (opt_pages > max_pages) {
		say("pages=%lu does not fit, using %lu", opt_pages, max_pages);
		opt_pages = max_pages;
	}
	if (opt_pages == 0) {
		say("FAIL no_memory max_stall_us=0");
		return 1;
	}
	base = mem_alloc(opt_pages * PAGE_BYTES, PAGE_BYTES);
	pageset_init(&ps, base, opt_pages);

	say("start pages=%lu rate=%lu fill=%lu seconds=%lu mem_mib=%lu "
	    "base=0x%lx tsc_khz=%lu tsc_src=%s", opt_pages, opt_rate, opt_fill,
	    opt_seconds, mem_total_bytes() >> 20, (uint64_t)base,
	    tsc_hz / 1000, tsc_source);

	if (opt_selftest_fault) {
		say("selftest: reading unmapped address 0x%llx",
		    SELFTEST_UNMAPPED);
		(void)*(volatile uint64_t *)SELFTEST_UNMAPPED;
	}

	stall_reset();
	start = stall_last_tsc;
	next_beat = start + us_to_tsc(HEARTBEAT_US);
	deadline = opt_seconds ? start + us_to_tsc(opt_seconds * 1000000) : 0;

	for (;;) {
		stall_sample(&now);
		if (deadline && now >= deadline)
			break;
		if (now >= next_beat) {
			uint64_t win = stall_window_us();

			say("heartbeat t=%lu rewrites=%lu passes=%lu "
			    "max_stall_us=%lu win_stall_us=%lu win_skip_us=%lu",
			    tsc_to_ms(now - start) / 1000, ps.rewrites,
			    ps.pass - 1, stall_max_us(), win,
			    stall_skipped_us());
			stall_window_skip();
			next_beat += us_to_tsc(HEARTBEAT_US);
			if (next_beat < now)
				next_beat = now + us_to_tsc(HEARTBEAT_US);
		}
		if (opt_rate && !(opt_fill && ps.pass == 1)) {
			uint64_t allowed = tsc_to_us(now - start) * opt_rate /
					   1000000 + (opt_fill ? ps.nr : 0);

			if (ps.rewrites >= allowed) {
				cpu_relax();
				continue;
			}
		}
		if (pageset_step(&ps, &bad))
			return fail_mismatch(&bad, &ps);
		if (opt_selftest_corrupt && !done_corrupt && ps.pass == 2) {
			selftest_corrupt(&ps);
			done_corrupt = 1;
		}
	}

	if (pageset_verify_all(&ps, &bad))
		return fail_mismatch(&bad, &ps);
	if (opt_selftest_corrupt && !done_corrupt)
		say("selftest: the first pass did not finish; nothing corrupted");
	say("PASS max_stall_us=%lu pages=%lu rewrites=%lu passes=%lu",
	    stall_max_us(), ps.nr, ps.rewrites, ps.pass - 1);
	return 0;
}
