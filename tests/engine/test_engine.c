/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The migration engine on its own: no KVM, no ferry-vmm. Two fake hosts
 * (fake_host.h) in this process, each with a real ferry-dev device
 * server, migrate a "guest" whose RAM is written both by a dirtier
 * thread (the host's dirty log sees it) and by the device's DMA (only
 * the device's DMA log sees it), while the guest keeps running.
 *
 *  1. socketpair: a completed migration; RAM byte for byte, device
 *     memory, the VMM blob, device states and every DMA job's result on
 *     the destination; a job run there continues the device's ring.
 *  2. the same over TCP loopback (listener, accept on a thread).
 *  3. negative control: without the device DMA log the destination RAM
 *     must differ, only where the device wrote.
 *  4. cancel while iterating; 5. a destination configured differently;
 *  6. a corrupt RAM section on the wire. Each leaves the source running
 *     (guest progressing, device RUNNING, logs and traps off) and the
 *     destination never started; the same source engine then migrates
 *     to a fresh destination.
 *  7. a source whose return-path reader runs late still reports the
 *     destination's reason, not its own broken pipe.
 *  8-11. the hand-over cut at each of its steps (after END, COMMIT lost,
 *     RESUMED lost, the connection closed): never two guests running,
 *     never none without an "outcome unknown" the operator resolves.
 * Every case ends with as many fds and threads as it started with, and
 * prints one line saying what it proved. One case can be named on the
 * command line. Multifd has its own file (test_multifd.c).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ferry/mig_stream.h"
#include "ferry/util.h"
#include "harness.h"

#define ITER_WAIT_MS		20000u
#define CORRUPT_RAM_SECTION	5u
#define HANDOVER_IO_MS		1500u	/* x-io-timeout of the cut cases */

/* ---- channels ---- */

/*
 * A socket channel with faults, around the source's end: it may corrupt
 * one byte in the payload of the n-th RAM section it writes, after the
 * CRCs were computed (what a bad NIC or middlebox would do), following
 * the stream framing across any split of the writes; it may hold back
 * the return path for a while, as a return-path thread that is slow to
 * be scheduled would; and it may cut one direction of the path at a
 * given point of the hand-over, as a partition that silently drops
 * packets (not one that closes the connection) would.
 */
enum cut {
	CUT_NONE,
	CUT_RP_AFTER_END,	/* nothing comes back once END is out */
	CUT_FWD_AT_COMMIT,	/* COMMIT and all after it never arrive */
	CUT_RP_AFTER_COMMIT,	/* nothing comes back once COMMIT is out */
	CUT_RP_CLOSED_AFTER_COMMIT,	/* ...and the connection closes */
};

struct chan_fault {
	unsigned int corrupt_ram_section;	/* 0: none; 1 = first */
	unsigned int rp_delay_ms;		/* before the first read */
	enum cut cut;
	/* what happened */
	unsigned int ram_sections;		/* RAM sections seen */
	bool flipped;
	uint64_t section_len;
	uint64_t at;				/* payload offset flipped */
};

struct fault_chan {
	struct mig_channel ch;		/* first: the engine frees it */
	struct mig_channel *inner;
	struct chan_fault *f;
	bool delayed;
	atomic_bool end_out, commit_out;	/* written (or dropped) */
	atomic_bool shut;
	bool dropping;			/* CUT_FWD_AT_COMMIT reached */
	uint64_t hdr_left;		/* stream header bytes to pass */
	uint8_t sec[MIG_SECTION_HDR_SIZE];
	size_t sec_have;
	uint64_t payload_left;
	uint64_t payload_off;
	uint64_t flip_at;
	bool in_target;
};

static void fault_sync(struct fault_chan *c)
{
	c->inner->timeout_ms = c->ch.timeout_ms;
	c->inner->read_timeout_ms = c->ch.read_timeout_ms;
	c->inner->deadline_ns = c->ch.deadline_ns;
}

/* The return path is cut here: what arrived is lost, and nothing more
 * will, until the engine gives up on the channel. */
static bool rp_cut(struct fault_chan *c)
{
	return (c->f->cut == CUT_RP_AFTER_END && atomic_load(&c->end_out)) ||
	       ((c->f->cut == CUT_RP_AFTER_COMMIT ||
		 c->f->cut == CUT_RP_CLOSED_AFTER_COMMIT) &&
		atomic_load(&c->commit_out));
}

static int rp_swallow(struct fault_chan *c)
{
	/* A closed connection: EOF at once; a stall: until shut down. */
	while (c->f->cut != CUT_RP_CLOSED_AFTER_COMMIT &&
	       !atomic_load(&c->shut))
		sleep_ms(5);
	return -EPIPE;
}

static int fault_read(struct mig_channel *ch, void *buf, size_t len)
{
	struct fault_chan *c = container_of(ch, struct fault_chan, ch);
	int ret;

	if (c->f->rp_delay_ms && !c->delayed) {
		c->delayed = true;
		sleep_ms(c->f->rp_delay_ms);
	}
	if (rp_cut(c))
		return rp_swallow(c);
	fault_sync(c);
	ret = mig_read(c->inner, buf, len);
	ch->bytes_read = c->inner->bytes_read;
	if (rp_cut(c))
		return rp_swallow(c);
	return ret;
}

static int fault_write(struct mig_channel *ch, const void *buf, size_t len)
{
	struct fault_chan *c = container_of(ch, struct fault_chan, ch);
	struct chan_fault *f = c->f;
	const uint8_t *p = buf;
	uint8_t *copy = NULL;
	size_t i = 0, n;
	int ret;

	/* A section header in one write (mig_section_write's): note END
	 * and COMMIT, and drop everything from COMMIT on if asked. */
	if (!c->hdr_left && !c->payload_left && !c->sec_have &&
	    len == MIG_SECTION_HDR_SIZE) {
		struct mig_section sec;

		memcpy(&sec, buf, sizeof(sec));
		if (sec.type == MIG_SEC_COMMIT && f->cut == CUT_FWD_AT_COMMIT)
			c->dropping = true;
		if (sec.type == MIG_SEC_COMMIT)
			atomic_store(&c->commit_out, true);
		/* Before the write: once END is out, the destination's
		 * READY may race our own return from the write. */
		if (sec.type == MIG_SEC_END)
			atomic_store(&c->end_out, true);
	}
	if (c->dropping)
		return 0;

	while (i < len) {
		if (c->hdr_left) {
			n = (size_t)MIN(c->hdr_left, (uint64_t)(len - i));
			c->hdr_left -= n;
			i += n;
			continue;
		}
		if (!c->payload_left) {
			struct mig_section sec;

			n = MIN(sizeof(c->sec) - c->sec_have, len - i);
			memcpy(c->sec + c->sec_have, p + i, n);
			c->sec_have += n;
			i += n;
			if (c->sec_have < sizeof(c->sec))
				continue;
			memcpy(&sec, c->sec, sizeof(sec));
			c->sec_have = 0;
			c->payload_left = sec.length;
			c->payload_off = 0;
			c->in_target = false;
			if (sec.type == MIG_SEC_RAM &&
			    ++f->ram_sections == f->corrupt_ram_section &&
			    sec.length) {
				c->in_target = true;
				c->flip_at = sec.length / 2;
				f->section_len = sec.length;
			}
			continue;
		}
		n = (size_t)MIN(c->payload_left, (uint64_t)(len - i));
		if (c->in_target && c->flip_at >= c->payload_off &&
		    c->flip_at < c->payload_off + n) {
			/* The caller's buffer is const: flip in a copy. */
			copy = malloc(len);
			if (!copy)
				return -ENOMEM;
			memcpy(copy, buf, len);
			p = copy;
			copy[i + (c->flip_at - c->payload_off)] ^= 0x40;
			f->flipped = true;
			f->at = c->flip_at;
			c->in_target = false;
		}
		c->payload_off += n;
		c->payload_left -= n;
		i += n;
	}
	fault_sync(c);
	ret = mig_write(c->inner, p, len);
	ch->bytes_written = c->inner->bytes_written;
	free(copy);
	return ret;
}

static void fault_shutdown(struct mig_channel *ch)
{
	struct fault_chan *c = container_of(ch, struct fault_chan, ch);

	atomic_store(&c->shut, true);
	mig_channel_shutdown(c->inner);
}

static void fault_close(struct mig_channel *ch)
{
	struct fault_chan *c = container_of(ch, struct fault_chan, ch);

	mig_channel_close(c->inner);
	c->inner = NULL;
}

static const struct mig_channel_ops fault_ops = {
	.name = "faulty-socket",
	.read_full = fault_read,
	.write_full = fault_write,
	.shutdown = fault_shutdown,
	.close = fault_close,
};

/* start_socketpair()'s wrap: arg is the struct chan_fault. */
static struct mig_channel *fault_wrap(struct mig_channel *inner, void *arg)
{
	struct fault_chan *c = calloc(1, sizeof(*c));

	if (!c) {
		mig_channel_close(inner);
		return NULL;
	}
	c->ch.ops = &fault_ops;
	c->ch.fd = inner->fd;		/* for the send-queue estimate */
	c->ch.has_return_path = inner->has_return_path;
	c->ch.timeout_ms = inner->timeout_ms;
	c->ch.read_timeout_ms = inner->read_timeout_ms;
	c->inner = inner;
	c->f = arg;
	c->hdr_left = MIG_STREAM_HDR_SIZE;
	return &c->ch;
}


/* ---- the cases ---- */

static const char *case_socketpair(void)
{
	struct side src = { 0 }, dst = { 0 };

	if (!side_open(&src, "source", MODEL, true) &&
	    !side_open(&dst, "destination", MODEL, false) &&
	    !start_socketpair(&src, &dst, NULL, NULL)) {
		wait_final(&src);
		wait_final(&dst);
		check_completed(&src, &dst, true);
	}
	side_close(&dst);
	side_close(&src);
	return "over a socketpair, the destination got RAM byte for byte "
	       "(pages written only by device DMA included), device memory, "
	       "the VMM blob and every DMA result; devices STOP/RUNNING";
}

static const char *case_tcp(void)
{
	struct side src = { 0 }, dst = { 0 };

	if (!side_open(&src, "source", MODEL, true) &&
	    !side_open(&dst, "destination", MODEL, false) &&
	    !start_tcp(&src, &dst)) {
		wait_final(&src);
		wait_final(&dst);
		check_completed(&src, &dst, true);
	}
	side_close(&dst);
	side_close(&src);
	return "the same over TCP loopback through mig_save_start(uri) and a "
	       "listener";
}

static const char *case_no_device_log(void)
{
	struct side src = { 0 }, dst = { 0 };

	if (!side_open(&src, "source", MODEL, true) &&
	    !side_open(&dst, "destination", MODEL, false)) {
		set_params(&src, DOWNTIME_MS, false);
		if (!start_socketpair(&src, &dst, NULL, NULL)) {
			wait_final(&src);
			wait_final(&dst);
			check_completed(&src, &dst, false);
		}
	}
	side_close(&dst);
	side_close(&src);
	return "negative control: without device DMA logs the destination "
	       "RAM differs, only in pages the device wrote, so the "
	       "comparison catches lost DMA writes";
}

static const char *case_cancel(void)
{
	struct side src = { 0 }, dst = { 0 };
	uint64_t deadline;
	struct mig_stats st;
	int ret;

	if (side_open(&src, "source", MODEL, true) ||
	    side_open(&dst, "destination", MODEL, false))
		goto out;
	/* A limit of 0 never converges: it iterates until cancelled. */
	set_params(&src, 0, true);
	if (start_socketpair(&src, &dst, NULL, NULL))
		goto out;
	deadline = clock_ns() + ITER_WAIT_MS * 1000000ull;
	do {
		sleep_ms(5);
		mig_engine_stats(src.e, &st);
	} while ((st.status != MIG_STATUS_ACTIVE || st.iterations < 3) &&
		 mig_status_is_active(st.status) && clock_ns() < deadline);
	CHECK(st.status == MIG_STATUS_ACTIVE && st.iterations >= 3,
	      "source %s after %u iterations: %s",
	      mig_status_name(st.status), st.iterations, st.error);
	printf("  cancelling in %s after %u iterations (%s)\n",
	       mig_status_name(st.status), st.iterations, st.reason);
	ret = mig_engine_cancel(src.e);
	CHECK(ret == 0, "cancel: %d", ret);
	CHECK(wait_final(&src) == MIG_STATUS_CANCELLED, "source: %s",
	      mig_status_name(mig_engine_status(src.e)));
	CHECK(wait_final(&dst) == MIG_STATUS_FAILED, "destination: %s",
	      mig_status_name(mig_engine_status(dst.e)));
	printf("  source: %s; destination: %s\n", src.ev.status,
	       dst.ev.status);
	check_source_kept(&src);
	check_dest_refused(&dst, false);
	migrate_again(&src, false);
out:
	side_close(&dst);
	side_close(&src);
	return "cancel while iterating: source CANCELLED and running again "
	       "(guest, device RUNNING, logs and traps off), destination "
	       "never started; then the same source migrated fine";
}

static const char *case_config(void)
{
	struct side src = { 0 }, dst = { 0 };
	char err[512];

	if (side_open(&src, "source", MODEL, true) ||
	    side_open(&dst, "destination", "ferry-dma-rev2", false))
		goto out;
	if (start_socketpair(&src, &dst, NULL, NULL))
		goto out;
	CHECK(wait_final(&src) == MIG_STATUS_FAILED, "source: %s",
	      mig_status_name(mig_engine_status(src.e)));
	CHECK(wait_final(&dst) == MIG_STATUS_FAILED, "destination: %s",
	      mig_status_name(mig_engine_status(dst.e)));
	CHECK(error_has(&dst, "configuration mismatch", err, sizeof(err)) &&
	      strstr(err, "ferry-dma-rev2") && strstr(err, "\"" MODEL "\""),
	      "destination error: %s", err);
	printf("  destination: %s\n", err);
	/* What the destination said on the return path is the cause; a
	 * write error of the source after it closed is a consequence. */
	CHECK(error_has(&src, "configuration mismatch", err, sizeof(err)),
	      "source error: %s", err);
	printf("  source: %s\n", err);
	check_source_kept(&src);
	check_dest_refused(&dst, false);
	migrate_again(&src, true);
out:
	side_close(&dst);
	side_close(&src);
	return "a destination with another model refused before loading "
	       "(both errors name the mismatch); source kept the guest and "
	       "then migrated over TCP";
}

static const char *case_corrupt(void)
{
	struct chan_fault f = { .corrupt_ram_section = CORRUPT_RAM_SECTION };
	struct side src = { 0 }, dst = { 0 };
	char err[512];

	if (side_open(&src, "source", MODEL, true) ||
	    side_open(&dst, "destination", MODEL, false))
		goto out;
	if (start_socketpair(&src, &dst, fault_wrap, &f))
		goto out;
	CHECK(wait_final(&src) == MIG_STATUS_FAILED, "source: %s",
	      mig_status_name(mig_engine_status(src.e)));
	CHECK(wait_final(&dst) == MIG_STATUS_FAILED, "destination: %s",
	      mig_status_name(mig_engine_status(dst.e)));
	CHECK(f.flipped, "no byte flipped (%u RAM sections)",
	      f.ram_sections);
	printf("  flipped payload byte %" PRIu64 " of %" PRIu64 " in RAM "
	       "section %u\n", f.at, f.section_len, CORRUPT_RAM_SECTION);
	CHECK(error_has(&dst, "CRC", err, sizeof(err)),
	      "destination error: %s", err);
	printf("  destination: %s\n", err);
	/* The destination's reason, not the source's broken pipe. */
	CHECK(error_has(&src, "CRC", err, sizeof(err)), "source error: %s",
	      err);
	printf("  source: %s\n", err);
	check_source_kept(&src);
	check_dest_refused(&dst, false);
	migrate_again(&src, false);
out:
	side_close(&dst);
	side_close(&src);
	return "a byte flipped in a RAM section on the wire: destination "
	       "failed on the CRC and never started; source FAILED, kept the "
	       "guest, then migrated fine";
}

/*
 * The source's error must be the destination's reason, which it sent on
 * the return path before it closed, even when the source's return-path
 * reader runs late -- here held back 300 ms, on a busy host a scheduling
 * delay -- and the source's own write fails first ("Broken pipe"). This
 * failed every time before the engine let a peer's reason replace a
 * failed send.
 */
static const char *case_late_rp(void)
{
	struct chan_fault f = { .rp_delay_ms = 300 };
	struct side src = { 0 }, dst = { 0 };
	char err[512];

	if (side_open(&src, "source", MODEL, true) ||
	    side_open(&dst, "destination", "ferry-dma-rev2", false))
		goto out;
	if (start_socketpair(&src, &dst, fault_wrap, &f))
		goto out;
	CHECK(wait_final(&src) == MIG_STATUS_FAILED, "source: %s",
	      mig_status_name(mig_engine_status(src.e)));
	CHECK(wait_final(&dst) == MIG_STATUS_FAILED, "destination: %s",
	      mig_status_name(mig_engine_status(dst.e)));
	error_has(&dst, "configuration mismatch", err, sizeof(err));
	printf("  destination: %s\n", err);
	CHECK(error_has(&src, "configuration mismatch", err, sizeof(err)),
	      "source reports a consequence, not the cause: %s", err);
	printf("  source: %s\n", err);
	check_source_kept(&src);
	check_dest_refused(&dst, false);
out:
	side_close(&dst);
	side_close(&src);
	return "with a late return-path reader the source still reports the "
	       "destination's reason";
}

/*
 * The partition that made the guest run twice before the three-step
 * hand-over: the destination gets everything, the return path silently
 * drops what it sends. The destination must not run without COMMIT;
 * the source, never READY, gives up when the switchover overruns its
 * budget and the guest runs here again: on exactly one side.
 */
static const char *case_rp_cut_after_end(void)
{
	struct chan_fault f = { .cut = CUT_RP_AFTER_END };
	struct side src = { 0 }, dst = { 0 };
	struct mig_stats st;
	char err[512];

	if (side_open(&src, "source", MODEL, true) ||
	    side_open(&dst, "destination", MODEL, false))
		goto out;
	if (start_socketpair(&src, &dst, fault_wrap, &f))
		goto out;
	CHECK(wait_final(&src) == MIG_STATUS_FAILED, "source: %s",
	      mig_status_name(mig_engine_status(src.e)));
	CHECK(wait_final(&dst) == MIG_STATUS_FAILED, "destination: %s",
	      mig_status_name(mig_engine_status(dst.e)));
	CHECK(error_has(&src, "switchover took more than", err, sizeof(err)),
	      "source error: %s", err);
	printf("  source: %s\n", err);
	error_has(&dst, "", err, sizeof(err));
	printf("  destination: %s\n", err);
	mig_engine_stats(src.e, &st);
	CHECK(!st.outcome_unknown, "the source never committed: its outcome "
	      "is known");
	check_source_kept(&src);
	check_dest_refused(&dst, true);
out:
	side_close(&dst);
	side_close(&src);
	return "return path cut after END: the destination loaded everything "
	       "but never ran without COMMIT; the source gave up at its "
	       "switchover budget and runs the guest: one side only";
}

/*
 * The forward path dies right at COMMIT: the source has given the guest
 * up, the destination never hears it. Neither may run it on its own.
 * Who gives up first decides what the source can know, so each order is
 * forced with x-io-timeout rather than left to a race of equal timers:
 * - the source first: silence tells it nothing, so it reports an unknown
 *   outcome and keeps the guest paused, devices stopped, until told;
 *   told "here", it runs on as if nothing happened;
 * - the destination first: its ERROR on the return path says it never
 *   ran the guest, so the source takes it back at once.
 */
static void commit_lost(bool dest_gives_up_first)
{
	struct chan_fault f = { .cut = CUT_FWD_AT_COMMIT };
	struct side src = { 0 }, dst = { 0 };
	uint64_t slow = HANDOVER_IO_MS * 4;
	struct mig_stats st;
	char err[512] = "";
	int ret;

	if (side_open(&src, "source", MODEL, true) ||
	    side_open(&dst, "destination", MODEL, false))
		goto out;
	set_io_timeout(&src, dest_gives_up_first ? slow : HANDOVER_IO_MS);
	set_io_timeout(&dst, dest_gives_up_first ? HANDOVER_IO_MS : slow);
	if (start_socketpair(&src, &dst, fault_wrap, &f))
		goto out;
	CHECK(wait_final(&src) == MIG_STATUS_FAILED, "source: %s",
	      mig_status_name(mig_engine_status(src.e)));
	CHECK(wait_final(&dst) == MIG_STATUS_FAILED, "destination: %s",
	      mig_status_name(mig_engine_status(dst.e)));
	mig_engine_stats(src.e, &st);
	printf("  source: %s\n", st.error);
	check_dest_refused(&dst, true);
	if (dest_gives_up_first) {
		CHECK(!st.outcome_unknown && !src.h.outcome_unknown &&
		      strstr(st.error, "destination failed"),
		      "source did not take the destination's word: %s",
		      st.error);
		set_io_timeout(&src, 0);
		check_source_kept(&src);
		goto out;
	}
	CHECK(st.outcome_unknown && src.h.outcome_unknown,
	      "source outcome not unknown: %s", st.error);
	CHECK(src.h.pause_depth == 1 && !src.h.handed_over,
	      "source must hold the guest paused (depth %u)",
	      src.h.pause_depth);
	dev_state_check(&src, VFU_MIG_STATE_STOP);
	ret = mig_save_start(src.e, "unix:/nonexistent", err, sizeof(err));
	CHECK(ret == -EINVAL && strstr(err, "outcome is unknown"),
	      "a new migration before the outcome is resolved: %d %s", ret,
	      err);
	/* The destination exited without running: the guest is ours. */
	ret = mig_engine_resolve(src.e, true, err, sizeof(err));
	CHECK(ret == 0, "resolve here: %s", err);
	set_io_timeout(&src, 0);
	check_source_kept(&src);
	migrate_again(&src, false);
out:
	side_close(&dst);
	side_close(&src);
}

static const char *case_commit_lost(void)
{
	commit_lost(false);
	return "forward path cut at COMMIT, the source gives up first: "
	       "neither side ran the guest on its own; the source held it "
	       "paused (devices STOP) with an unknown outcome, ran it again "
	       "when told, then migrated fine";
}

static const char *case_commit_lost_dest_first(void)
{
	commit_lost(true);
	return "forward path cut at COMMIT, the destination gives up first: "
	       "its ERROR reached the source, which ran the guest again at "
	       "once; the destination never ran it";
}

/*
 * The return path dies after COMMIT: the destination runs the guest and
 * its RESUMED is lost, in silence or with the connection closing (as a
 * destination closes it after RESUMED). The source must not resume on
 * either: outcome unknown, paused, devices stopped; told "destination",
 * it hands over.
 */
static const char *resumed_lost(enum cut cut)
{
	struct chan_fault f = { .cut = cut };
	struct side src = { 0 }, dst = { 0 };
	struct mig_stats st;
	char err[512] = "";
	int ret;

	if (side_open(&src, "source", MODEL, true) ||
	    side_open(&dst, "destination", MODEL, false))
		goto out;
	set_io_timeout(&src, HANDOVER_IO_MS);
	if (start_socketpair(&src, &dst, fault_wrap, &f))
		goto out;
	CHECK(wait_final(&src) == MIG_STATUS_FAILED, "source: %s",
	      mig_status_name(mig_engine_status(src.e)));
	CHECK(wait_final(&dst) == MIG_STATUS_COMPLETED, "destination: %s",
	      mig_status_name(mig_engine_status(dst.e)));
	mig_engine_stats(src.e, &st);
	printf("  source: %s\n", st.error);
	CHECK(st.outcome_unknown && src.h.outcome_unknown,
	      "source outcome not unknown: %s", st.error);
	CHECK(src.h.pause_depth == 1 && !fh_host_ops.running(&src.h),
	      "source runs the guest although the destination does (depth "
	      "%u)", src.h.pause_depth);
	CHECK(dst.h.started && dst.h.start_calls == 1,
	      "destination did not start the guest");
	dev_state_check(&src, VFU_MIG_STATE_STOP);
	dev_state_check(&dst, VFU_MIG_STATE_RUNNING);
	ret = mig_engine_resolve(src.e, false, err, sizeof(err));
	CHECK(ret == 0, "resolve destination: %s", err);
	CHECK(src.h.handed_over && src.h.pause_depth == 1,
	      "source did not hand over (handed %d, depth %u)",
	      src.h.handed_over, src.h.pause_depth);
	ret = mig_engine_resolve(src.e, true, err, sizeof(err));
	CHECK(ret == -EINVAL, "resolved twice");
out:
	side_close(&dst);
	side_close(&src);
	return "return path cut after COMMIT: the destination runs the guest; "
	       "the source did not resume on silence (unknown outcome, paused, "
	       "devices STOP) and handed over when told: one side only";
}

static const char *case_resumed_lost(void)
{
	return resumed_lost(CUT_RP_AFTER_COMMIT);
}

static const char *case_resumed_lost_closed(void)
{
	resumed_lost(CUT_RP_CLOSED_AFTER_COMMIT);
	return "the same when the connection closes instead of stalling: a "
	       "close tells the source nothing, only ERROR would";
}

static const struct test_case cases[] = {
	{ "socketpair", case_socketpair },
	{ "tcp", case_tcp },
	{ "no-device-dirty-log", case_no_device_log },
	{ "cancel", case_cancel },
	{ "config-mismatch", case_config },
	{ "corrupt-section", case_corrupt },
	{ "late-return-path", case_late_rp },
	{ "rp-cut-after-end", case_rp_cut_after_end },
	{ "commit-lost", case_commit_lost },
	{ "commit-lost-dest-first", case_commit_lost_dest_first },
	{ "resumed-lost", case_resumed_lost },
	{ "resumed-lost-closed", case_resumed_lost_closed },
};

int main(int argc, char **argv)
{
	return harness_main(cases, ARRAY_SIZE(cases), argc, argv);
}
