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
 * report FAIL), cpus=N (1..16: start APs 1..N-1 with INIT-SIPI-SIPI;
 * each CPU rewrites and verifies its own share of the pages at its share
 * of rate=, with its own stall meter, and the BSP pings each AP with an
 * IPI once a millisecond and waits for it to be taken: an AP that is
 * lost, stuck or loses an interrupt is a FAIL naming it),
 * selftest_ipi=1 (with cpus>1: count an IPI to CPU 1 that is never
 * sent: the run must FAIL ipi_lost).
 */
#include <stdint.h>

#include "cmdline.h"
#include "console.h"
#include "guest.h"
#include "lib.h"
#include "mem.h"
#include "pagecheck.h"
#include "smp.h"
#include "stall.h"

#define DEFAULT_PAGES		4096
#define HEARTBEAT_US		1000000ull
#define PAGE_BYTES		4096ull
#define RESERVE_BYTES		(1ull << 20)	/* head room left unused */
#define SELFTEST_WORD		100
#define SELFTEST_UNMAPPED	(1ull << 40)	/* beyond every mapping */
#define IPI_VECTOR		0x40
#define IPI_PERIOD_US		1000ull
#define IPI_TIMEOUT_US		2000000ull	/* of running time */
#define GAP_PAUSED_US		10000ull	/* a longer gap: VM stopped */
#define AP_DONE_TIMEOUT_US	30000000ull

const char guest_name[] = "memstress";

static uint64_t opt_seconds;
static uint64_t opt_pages = DEFAULT_PAGES;
static uint64_t opt_rate;
static uint64_t opt_fill;
static uint64_t opt_selftest_corrupt;
static uint64_t opt_selftest_fault;
static uint64_t opt_cpus = 1;
static uint64_t opt_selftest_ipi;

static const struct param params[] = {
	{ "seconds", &opt_seconds },
	{ "pages", &opt_pages },
	{ "rate", &opt_rate },
	{ "fill", &opt_fill },
	{ "selftest_corrupt", &opt_selftest_corrupt },
	{ "selftest_fault", &opt_selftest_fault },
	{ "cpus", &opt_cpus },
	{ "selftest_ipi", &opt_selftest_ipi },
};

enum share_state { SHARE_WAIT, SHARE_RUN, SHARE_DONE, SHARE_FAIL };

/* One CPU's part of the working set. The AP owns ps and max_stall_tsc
 * and publishes the rest; the BSP owns the IPI bookkeeping. */
static struct cpu_share {
	struct pageset ps;
	struct page_mismatch bad;
	uint64_t rate;			/* pages per second, 0 = flat out */
	uint64_t max_stall_tsc;
	volatile uint64_t rewrites;
	volatile uint64_t passes;
	volatile int state;
	uint64_t ipis_sent;
	uint64_t ipi_sent_tsc;
	uint64_t ipi_wait_tsc;		/* running time the last one took */
} shares[GUEST_MAX_CPUS];

static volatile int ap_stop;

static int fail_mismatch(const struct page_mismatch *bad,
			 const struct pageset *ps, unsigned int cpu)
{
	pageset_report(bad);
	say("FAIL page_mismatch page=%lu word=%u expected=0x%lx found=0x%lx "
	    "rewrites=%lu passes=%lu cpu=%u max_stall_us=%lu", bad->page,
	    bad->word, bad->expected, bad->found, ps->rewrites, ps->pass - 1,
	    cpu, stall_max_us());
	return 1;
}

/* Rate limit: may this CPU rewrite another page now? */
static int share_may_step(const struct cpu_share *sh, uint64_t now,
			  uint64_t start)
{
	uint64_t allowed;

	if (!sh->rate || (opt_fill && sh->ps.pass == 1))
		return 1;
	allowed = tsc_to_us(now - start) * sh->rate / 1000000 +
		  (opt_fill ? sh->ps.nr : 0);
	return sh->ps.rewrites < allowed;
}

int guest_ap_main(unsigned int cpu)
{
	struct cpu_share *sh = &shares[cpu];
	uint64_t start, last, now;

	smp_wait_go();
	sh->state = SHARE_RUN;
	start = last = rdtsc();
	while (!ap_stop) {
		now = rdtsc();
		if (now - last > sh->max_stall_tsc)
			sh->max_stall_tsc = now - last;
		last = now;
		if (!share_may_step(sh, now, start)) {
			cpu_relax();
			continue;
		}
		if (pageset_step(&sh->ps, &sh->bad))
			goto fail;
		sh->rewrites = sh->ps.rewrites;
		sh->passes = sh->ps.pass - 1;
	}
	if (pageset_verify_all(&sh->ps, &sh->bad))
		goto fail;
	__atomic_store_n(&sh->state, SHARE_DONE, __ATOMIC_RELEASE);
	return 0;
fail:
	__atomic_store_n(&sh->state, SHARE_FAIL, __ATOMIC_RELEASE);
	return 1;
}

/* The BSP's look at the APs once per loop: a failed share, and the IPI
 * ping (one outstanding per AP; gap is the time since the last loop, not
 * counted against a pending IPI when the VM was evidently stopped). */
static int aps_check(uint64_t now, uint64_t gap)
{
	for (unsigned int cpu = 1; cpu < opt_cpus; cpu++) {
		struct cpu_share *sh = &shares[cpu];
		uint64_t got;

		if (sh->state == SHARE_FAIL)
			return fail_mismatch(&sh->bad, &sh->ps, cpu);
		got = irq_count_cpu(cpu, IPI_VECTOR);
		if (got > sh->ipis_sent) {
			say("FAIL ipi_extra cpu=%u sent=%lu taken=%lu "
			    "max_stall_us=%lu", cpu, sh->ipis_sent, got,
			    stall_max_us());
			return 1;
		}
		if (got < sh->ipis_sent) {
			if (gap < us_to_tsc(GAP_PAUSED_US))
				sh->ipi_wait_tsc += gap;
			if (sh->ipi_wait_tsc > us_to_tsc(IPI_TIMEOUT_US)) {
				say("FAIL ipi_lost cpu=%u sent=%lu taken=%lu "
				    "waited_ms=%lu max_stall_us=%lu", cpu,
				    sh->ipis_sent, got,
				    tsc_to_ms(sh->ipi_wait_tsc),
				    stall_max_us());
				return 1;
			}
			continue;
		}
		if (now - sh->ipi_sent_tsc < us_to_tsc(IPI_PERIOD_US))
			continue;
		if (opt_selftest_ipi && cpu == 1 && sh->ipis_sent == 1) {
			/* Negative control: count one never sent. */
			say("selftest: not sending IPI 2 to cpu 1");
		} else if (smp_ipi(cpu, IPI_VECTOR)) {
			say("FAIL ipi_send cpu=%u max_stall_us=%lu", cpu,
			    stall_max_us());
			return 1;
		}
		sh->ipis_sent++;
		sh->ipi_sent_tsc = now;
		sh->ipi_wait_tsc = 0;
	}
	return 0;
}

/* Stop the APs, wait for their final verification, fold in their
 * figures. */
static int aps_finish(uint64_t *rewrites, uint64_t *passes,
		      uint64_t *max_stall_us, uint64_t *ipis)
{
	uint64_t last = rdtsc(), waited = 0, now, gap;

	ap_stop = 1;
	for (unsigned int cpu = 1; cpu < opt_cpus; cpu++) {
		struct cpu_share *sh = &shares[cpu];
		int st;

		while ((st = __atomic_load_n(&sh->state, __ATOMIC_ACQUIRE)) ==
		       SHARE_RUN || st == SHARE_WAIT) {
			now = rdtsc();
			gap = now - last;
			last = now;
			if (gap < us_to_tsc(GAP_PAUSED_US))
				waited += gap;
			if (waited > us_to_tsc(AP_DONE_TIMEOUT_US)) {
				say("FAIL ap_stuck cpu=%u rewrites=%lu "
				    "max_stall_us=%lu", cpu, sh->rewrites,
				    stall_max_us());
				return 1;
			}
			cpu_relax();
		}
		if (st == SHARE_FAIL)
			return fail_mismatch(&sh->bad, &sh->ps, cpu);
		/* The last IPI, sent before the stop, must be taken too:
		 * the AP idles with interrupts on. */
		waited = 0;
		while (irq_count_cpu(cpu, IPI_VECTOR) < sh->ipis_sent &&
		       waited <= us_to_tsc(IPI_TIMEOUT_US)) {
			now = rdtsc();
			gap = now - last;
			last = now;
			if (gap < us_to_tsc(GAP_PAUSED_US))
				waited += gap;
			cpu_relax();
		}
		if (irq_count_cpu(cpu, IPI_VECTOR) != sh->ipis_sent) {
			say("FAIL %s cpu=%u sent=%lu taken=%lu max_stall_us=%lu",
			    irq_count_cpu(cpu, IPI_VECTOR) < sh->ipis_sent ?
			    "ipi_lost" : "ipi_extra", cpu, sh->ipis_sent,
			    irq_count_cpu(cpu, IPI_VECTOR), stall_max_us());
			return 1;
		}
		say("cpu %u: rewrites=%lu passes=%lu max_stall_us=%lu "
		    "ipis=%lu", cpu, sh->ps.rewrites, sh->ps.pass - 1,
		    tsc_to_us(sh->max_stall_tsc), sh->ipis_sent);
		*rewrites += sh->ps.rewrites;
		*passes = MIN(*passes, sh->ps.pass - 1);
		*max_stall_us = MAX(*max_stall_us,
				    tsc_to_us(sh->max_stall_tsc));
		*ipis += sh->ipis_sent;
	}
	return 0;
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

/* Split the working set: CPU i gets pages [i * nr / n, (i + 1) * nr / n). */
static void shares_init(uint64_t *base, uint64_t nr)
{
	for (unsigned int cpu = 0; cpu < opt_cpus; cpu++) {
		uint64_t first = cpu * nr / opt_cpus;
		uint64_t end = (cpu + 1) * nr / opt_cpus;

		pageset_init(&shares[cpu].ps, base + first * PAGECHECK_WORDS,
			     end - first);
		shares[cpu].rate = opt_rate ? MAX(opt_rate / opt_cpus, 1) : 0;
	}
}

int guest_main(void)
{
	struct page_mismatch bad;
	struct pageset *ps = &shares[0].ps;
	uint64_t max_pages, start, now, gap, next_beat, deadline;
	uint64_t done_corrupt = 0, rewrites, passes, max_us, ipis = 0;
	void *base;

	params_parse(params, ARRAY_SIZE(params));
	mem_init();

	if (opt_cpus < 1 || opt_cpus > GUEST_MAX_CPUS) {
		say("FAIL cpus=%lu: must be 1..%u max_stall_us=0", opt_cpus,
		    GUEST_MAX_CPUS);
		return 1;
	}
	max_pages = mem_free_bytes() > RESERVE_BYTES ?
		    (mem_free_bytes() - RESERVE_BYTES) / PAGE_BYTES : 0;
	if (opt_pages > max_pages) {
		say("pages=%lu does not fit, using %lu", opt_pages, max_pages);
		opt_pages = max_pages;
	}
	if (opt_pages < opt_cpus) {
		say("FAIL no_memory max_stall_us=0");
		return 1;
	}
	base = mem_alloc(opt_pages * PAGE_BYTES, PAGE_BYTES);
	shares_init(base, opt_pages);
	if (smp_start(opt_cpus))
		return 1;

	say("start pages=%lu rate=%lu fill=%lu seconds=%lu mem_mib=%lu "
	    "base=0x%lx tsc_khz=%lu tsc_src=%s cpus=%u", opt_pages, opt_rate,
	    opt_fill, opt_seconds, mem_total_bytes() >> 20, (uint64_t)base,
	    tsc_hz / 1000, tsc_source, smp_cpus());

	if (opt_selftest_fault) {
		say("selftest: reading unmapped address 0x%llx",
		    SELFTEST_UNMAPPED);
		(void)*(volatile uint64_t *)SELFTEST_UNMAPPED;
	}

	smp_go();
	stall_reset();
	start = stall_last_tsc;
	next_beat = start + us_to_tsc(HEARTBEAT_US);
	deadline = opt_seconds ? start + us_to_tsc(opt_seconds * 1000000) : 0;

	for (;;) {
		gap = stall_sample(&now);
		if (deadline && now >= deadline)
			break;
		if (opt_cpus > 1 && aps_check(now, gap))
			return 1;
		if (now >= next_beat) {
			uint64_t win = stall_window_us(), all = ps->rewrites;

			for (unsigned int cpu = 1; cpu < opt_cpus; cpu++)
				all += shares[cpu].rewrites;
			say("heartbeat t=%lu rewrites=%lu passes=%lu "
			    "max_stall_us=%lu win_stall_us=%lu win_skip_us=%lu "
			    "all_rewrites=%lu",
			    tsc_to_ms(now - start) / 1000, ps->rewrites,
			    ps->pass - 1, stall_max_us(), win,
			    stall_skipped_us(), all);
			stall_window_skip();
			next_beat += us_to_tsc(HEARTBEAT_US);
			if (next_beat < now)
				next_beat = now + us_to_tsc(HEARTBEAT_US);
		}
		if (!share_may_step(&shares[0], now, start)) {
			cpu_relax();
			continue;
		}
		if (pageset_step(ps, &bad))
			return fail_mismatch(&bad, ps, 0);
		if (opt_selftest_corrupt && !done_corrupt && ps->pass == 2) {
			selftest_corrupt(ps);
			done_corrupt = 1;
		}
	}

	if (pageset_verify_all(ps, &bad))
		return fail_mismatch(&bad, ps, 0);
	if (opt_selftest_corrupt && !done_corrupt)
		say("selftest: the first pass did not finish; nothing corrupted");
	rewrites = ps->rewrites;
	passes = ps->pass - 1;
	max_us = stall_max_us();
	if (aps_finish(&rewrites, &passes, &max_us, &ipis))
		return 1;
	say("PASS max_stall_us=%lu pages=%lu rewrites=%lu passes=%lu "
	    "cpus=%lu ipis=%lu", max_us, opt_pages, rewrites, passes,
	    opt_cpus, ipis);
	return 0;
}
