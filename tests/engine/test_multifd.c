/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Multifd in the migration engine alone (no KVM): two fake hosts with
 * real ferry-dev devices (harness.h), the destination at its door as a
 * VMM with --incoming is (mig_load_listen()), the source connecting its
 * main channel and N multifd channels.
 *
 *  - 2 channels over a unix socket and 4 over TCP loopback through a
 *    proxy that delays every channel at random (seeded; the seed is
 *    printed and FERRY_TEST_SEED replays it): the destination runs
 *    exactly the frozen source's guest (RAM byte for byte, device
 *    memory, every DMA result), every channel carried data, the device
 *    state went as packets, as many received as sent.
 *  - device state packets sent last to first: the reassembler holds
 *    them all until packet 0 and the device still gets its stream in
 *    order; with a queue bound below the device's state the destination
 *    refuses with the bound's name, and the source keeps its guest.
 *  - a packet never sent: the destination names the missing packet.
 *  - negative control: the same reversed packets given to the device in
 *    arrival order (x-multifd-no-reorder) must not produce a correct
 *    destination, so the checks above can see a reordering bug.
 *  - a channel closed mid-RAM, a channel stalled at the switchover (the
 *    source is paused then), and a destination set up for another
 *    number of channels: the source keeps its guest running, the
 *    destination never starts one, and the same source migrates again.
 * Every case ends with as many fds and threads as it started with.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ferry/mig_stream.h"
#include "ferry/util.h"
#include "harness.h"
#include "proxy.h"

#define MF_DEVMEM		"8M"
#define QUEUE_BOUND		(1ull << 20)
#define CUT_AFTER_BYTES		(4ull << 20)
#define STALL_IO_MS		1500u
#define MAX_DELAY_US		2000u

static uint64_t seed;

struct mf_setup {
	unsigned channels;		/* 0: no multifd */
	bool ack;			/* switchover-ack */
	bool reverse, drop_first;	/* source debug */
	uint64_t max_queued;		/* destination */
	bool no_reorder;
};

static void set_multifd(struct side *s, const struct mf_setup *m)
{
	struct mig_params p;
	char err[256] = "";
	int ret;

	mig_engine_get_params(s->e, &p);
	p.multifd = m->channels > 0;
	if (m->channels)
		p.multifd_channels = m->channels;
	p.switchover_ack = m->ack;
	p.devstate_reverse = m->reverse;
	p.devstate_drop_first = m->drop_first;
	p.max_queued_bytes = m->max_queued;
	p.no_reorder = m->no_reorder;
	ret = mig_engine_set_params(s->e, &p, err, sizeof(err));
	CHECK(ret == 0, "%s: multifd params: %s", s->role, err);
}

/* Both sides with the same channels; the rest as given. */
static int open_pair(struct side *src, struct side *dst,
		     const struct mf_setup *ms, const struct mf_setup *md)
{
	if (side_open(src, "source", MODEL, true) ||
	    side_open(dst, "destination", MODEL, false))
		return -1;
	set_multifd(src, ms);
	set_multifd(dst, md);
	return 0;
}

/* What multifd itself must show after a completed migration. */
static void check_multifd_stats(struct side *src, struct side *dst,
				unsigned channels)
{
	struct mig_stats s, d;

	mig_engine_stats(src->e, &s);
	mig_engine_stats(dst->e, &d);
	printf("  multifd: %u channels, %.2f MiB on them of %.2f MiB sent:",
	       s.nr_channels, s.multifd_bytes / 1048576.0,
	       s.transferred / 1048576.0);
	for (unsigned i = 0; i < s.nr_channels; i++)
		printf(" %.2f", s.channel_bytes[i] / 1048576.0);
	printf(" MiB\n  device state: %" PRIu64 " packets sent, %" PRIu64
	       " received, %" PRIu64 " ahead of their turn, at most %" PRIu64
	       " bytes waiting\n", s.dev_packets, d.dev_packets,
	       d.dev_packets_early, d.dev_queued_peak);
	CHECK(s.nr_channels == channels && d.nr_channels == channels,
	      "channels: source %u destination %u, want %u", s.nr_channels,
	      d.nr_channels, channels);
	for (unsigned i = 0; i < s.nr_channels; i++)
		CHECK(s.channel_bytes[i] > 0 &&
		      s.channel_bytes[i] == d.channel_bytes[i],
		      "channel %u: %" PRIu64 " bytes sent, %" PRIu64
		      " received", i, s.channel_bytes[i], d.channel_bytes[i]);
	/* Most of guest RAM's pages went beside the main channel. */
	CHECK(s.multifd_bytes > s.transferred / 2, "only %" PRIu64 " of %"
	      PRIu64 " bytes on the multifd channels", s.multifd_bytes,
	      s.transferred);
	CHECK(s.dev_packets > 1 && s.dev_packets == d.dev_packets,
	      "device state packets: %" PRIu64 " sent, %" PRIu64 " received",
	      s.dev_packets, d.dev_packets);
}

/* A completed multifd migration from src to a destination at uri. */
static void migrate_and_check(struct side *src, struct side *dst,
			      const char *uri, unsigned channels)
{
	if (source_start(src, uri))
		return;
	wait_final(src);
	wait_final(dst);
	check_completed(src, dst, true);
	check_multifd_stats(src, dst, channels);
}

/* After a failure: the source's guest, untouched; multifd again to a
 * fresh destination, direct. */
static void again_multifd(struct side *src, const struct mf_setup *m)
{
	struct mf_setup clean = { .channels = m->channels };
	struct side dst = { 0 };
	char uri[160];
	uint16_t port;

	printf("  again, to a fresh destination:\n");
	set_multifd(src, &clean);
	if (!side_open(&dst, "destination2", MODEL, false)) {
		set_multifd(&dst, &clean);
		if (!dest_listen(&dst, true, uri, sizeof(uri), &port))
			migrate_and_check(src, &dst, uri, m->channels);
	}
	side_close(&dst);
}

/* A failed migration: both sides final, the reason on the destination
 * (want_dst) or the source (want_src) as expected. */
static void check_failed(struct side *src, struct side *dst,
			 const char *want_src, const char *want_dst)
{
	enum mig_status ss = wait_final(src), ds = wait_final(dst);
	char es[512], ed[512];

	CHECK(ss == MIG_STATUS_FAILED, "source: %s", mig_status_name(ss));
	CHECK(ds == MIG_STATUS_FAILED, "destination: %s", mig_status_name(ds));
	CHECK(!want_src || error_has(src, want_src, es, sizeof(es)),
	      "source error '%s' lacks '%s'", es, want_src);
	CHECK(!want_dst || error_has(dst, want_dst, ed, sizeof(ed)),
	      "destination error '%s' lacks '%s'", ed, want_dst);
	error_has(src, "", es, sizeof(es));
	error_has(dst, "", ed, sizeof(ed));
	printf("  source: %s\n  destination: %s\n", es, ed);
	check_source_kept(src);
	check_dest_refused(dst, false);
}

/* ---- the cases ---- */

static const char *case_unix(void)
{
	struct mf_setup m = { .channels = 2, .ack = true };
	struct side src = { 0 }, dst = { 0 };
	char uri[160];
	uint16_t port;

	if (!open_pair(&src, &dst, &m, &m) &&
	    !dest_listen(&dst, false, uri, sizeof(uri), &port))
		migrate_and_check(&src, &dst, uri, 2);
	side_close(&dst);
	side_close(&src);
	return "2 channels over a unix socket, switchover-ack on (a device "
	       "without pre-copy is acknowledged at once): RAM byte for byte, "
	       "device memory and every DMA result; every channel carried "
	       "data, device state as packets";
}

static const char *case_reordered(void)
{
	struct mf_setup m = { .channels = 4 };
	struct tproxy_fault slow = { .max_delay_us = MAX_DELAY_US };
	struct side src = { 0 }, dst = { 0 };
	struct tproxy *px = NULL;
	char uri[160], puri[64];
	uint16_t port;

	if (open_pair(&src, &dst, &m, &m) ||
	    dest_listen(&dst, true, uri, sizeof(uri), &port))
		goto out;
	if (tproxy_start(port, seed, &px, puri, sizeof(puri))) {
		CHECK(0, "proxy");
		goto out;
	}
	for (unsigned i = 0; i <= m.channels; i++)
		tproxy_set_fault(px, i, &slow);
	printf("  through a proxy delaying every chunk by up to %u us "
	       "(seed %" PRIu64 ")\n", MAX_DELAY_US, seed);
	migrate_and_check(&src, &dst, puri, 4);
	CHECK(tproxy_conns(px) == m.channels + 1, "%u connections through "
	      "the proxy", tproxy_conns(px));
out:
	side_close(&dst);
	side_close(&src);
	tproxy_stop(px);
	return "4 channels over TCP, each delayed at random: the same exact "
	       "destination";
}

static const char *case_reverse(void)
{
	struct mf_setup ms = { .channels = 4, .reverse = true };
	struct mf_setup md = { .channels = 4 };
	struct side src = { 0 }, dst = { 0 };
	struct mig_stats d;
	char uri[160];
	uint16_t port;

	if (!open_pair(&src, &dst, &ms, &md) &&
	    !dest_listen(&dst, true, uri, sizeof(uri), &port)) {
		migrate_and_check(&src, &dst, uri, 4);
		mig_engine_stats(dst.e, &d);
		CHECK(d.dev_packets_early > 0 && d.dev_queued_peak > 0,
		      "reversed packets: %" PRIu64 " early, peak %" PRIu64,
		      d.dev_packets_early, d.dev_queued_peak);
	}
	side_close(&dst);
	side_close(&src);
	return "device state packets sent last to first: held until their "
	       "turn, the device got its stream in order";
}

static const char *case_queue_bound(void)
{
	struct mf_setup ms = { .channels = 4, .reverse = true };
	struct mf_setup md = { .channels = 4, .max_queued = QUEUE_BOUND };
	struct side src = { 0 }, dst = { 0 };
	char uri[160];
	uint16_t port;

	if (!open_pair(&src, &dst, &ms, &md) &&
	    !dest_listen(&dst, true, uri, sizeof(uri), &port) &&
	    !source_start(&src, uri)) {
		check_failed(&src, &dst, "queued out of order",
			     "queued out of order");
		again_multifd(&src, &ms);
	}
	side_close(&dst);
	side_close(&src);
	return "more than x-migration-max-queued-buffers-size waiting: the "
	       "destination refuses, naming the bound; the source keeps its "
	       "guest and migrates again";
}

static const char *case_drop(void)
{
	struct mf_setup ms = { .channels = 2, .drop_first = true };
	struct mf_setup md = { .channels = 2 };
	struct side src = { 0 }, dst = { 0 };
	char uri[160];
	uint16_t port;

	if (!open_pair(&src, &dst, &ms, &md) &&
	    !dest_listen(&dst, true, uri, sizeof(uri), &port) &&
	    !source_start(&src, uri))
		check_failed(&src, &dst, "packet 0 never arrived",
			     "packet 0 never arrived");
	side_close(&dst);
	side_close(&src);
	return "a device state packet that never comes: found once every "
	       "channel ended, named; the source keeps its guest";
}

static const char *case_no_reorder(void)
{
	struct mf_setup ms = { .channels = 4, .reverse = true };
	struct mf_setup md = { .channels = 4, .no_reorder = true };
	struct side src = { 0 }, dst = { 0 };
	enum mig_status ss, ds;
	uint32_t crc_src, crc_dst;
	char uri[160], err[512];
	uint16_t port;

	if (open_pair(&src, &dst, &ms, &md) ||
	    dest_listen(&dst, true, uri, sizeof(uri), &port) ||
	    source_start(&src, uri))
		goto out;
	ss = wait_final(&src);
	ds = wait_final(&dst);
	error_has(&dst, "", err, sizeof(err));
	if (ds == MIG_STATUS_COMPLETED) {
		crc_src = devmem_crc(&src);
		crc_dst = devmem_crc(&dst);
		printf("  negative control: completed, device memory CRC32C "
		       "source %08x destination %08x\n", crc_src, crc_dst);
		CHECK(crc_src != crc_dst, "device state applied out of order "
		      "still gave the same device memory");
	} else {
		printf("  negative control: the destination refused the "
		       "disordered state: %s\n", err);
		/* The device itself, not a check of the reassembler. */
		CHECK(strstr(err, "rejected its migration data"),
		      "the destination failed for another reason: %s", err);
		CHECK(ss == MIG_STATUS_FAILED, "source %s after the "
		      "destination failed", mig_status_name(ss));
		check_source_kept(&src);
	}
out:
	side_close(&dst);
	side_close(&src);
	return "negative control: reversed packets applied in arrival order "
	       "do not give a correct destination";
}

static const char *case_cut_ram(void)
{
	struct mf_setup m = { .channels = 4 };
	/* Mid-RAM, or at the latest at the end of the first pass: how
	 * much of the RAM a channel carries depends on the scheduler. */
	struct tproxy_fault cut = { .cut = TPROXY_CUT_CLOSE,
				    .cut_after_bytes = CUT_AFTER_BYTES,
				    .cut_at_type = MIG_SEC_MF_SYNC };
	struct side src = { 0 }, dst = { 0 };
	struct tproxy *px = NULL;
	char uri[160], puri[64];
	uint16_t port;

	if (open_pair(&src, &dst, &m, &m) ||
	    dest_listen(&dst, true, uri, sizeof(uri), &port))
		goto out;
	if (tproxy_start(port, seed, &px, puri, sizeof(puri))) {
		CHECK(0, "proxy");
		goto out;
	}
	tproxy_set_fault(px, 2, &cut);	/* multifd channel 1 */
	if (source_start(&src, puri))
		goto out;
	check_failed(&src, &dst, NULL, NULL);
	CHECK(tproxy_was_cut(px, 2), "the proxy never cut channel 1");
	again_multifd(&src, &m);
out:
	side_close(&dst);
	side_close(&src);
	tproxy_stop(px);
	return "a multifd channel closed mid-RAM: the source keeps its guest, "
	       "the destination starts none; migrating again works";
}

static const char *case_stall_switchover(void)
{
	struct mf_setup m = { .channels = 2 };
	struct tproxy_fault stall = { .cut = TPROXY_CUT_STALL,
				      .cut_at_type = MIG_SEC_DEV_PACKET };
	struct side src = { 0 }, dst = { 0 };
	struct tproxy *px = NULL;
	char uri[160], puri[64];
	uint16_t port;

	if (open_pair(&src, &dst, &m, &m) ||
	    dest_listen(&dst, true, uri, sizeof(uri), &port))
		goto out;
	set_io_timeout(&src, STALL_IO_MS);
	set_io_timeout(&dst, STALL_IO_MS);
	if (tproxy_start(port, seed, &px, puri, sizeof(puri))) {
		CHECK(0, "proxy");
		goto out;
	}
	/* Both channels: whichever takes the first packet stalls. */
	tproxy_set_fault(px, 1, &stall);
	tproxy_set_fault(px, 2, &stall);
	if (source_start(&src, puri))
		goto out;
	check_failed(&src, &dst, NULL, NULL);
	CHECK(tproxy_was_cut(px, 1) || tproxy_was_cut(px, 2),
	      "the proxy never stalled a channel");
	set_io_timeout(&src, 0);
	again_multifd(&src, &m);
out:
	side_close(&dst);
	side_close(&src);
	tproxy_stop(px);
	return "a multifd channel silent from the switchover on (source "
	       "paused): x-io-timeout ends it, the guest runs on the source "
	       "again";
}

static const char *case_config(void)
{
	struct mf_setup ms = { .channels = 4 }, md = { .channels = 2 };
	struct side src = { 0 }, dst = { 0 };
	char uri[160];
	uint16_t port;

	if (!open_pair(&src, &dst, &ms, &md) &&
	    !dest_listen(&dst, true, uri, sizeof(uri), &port) &&
	    !source_start(&src, uri))
		check_failed(&src, &dst, "configuration mismatch",
			     "configuration mismatch");
	side_close(&dst);
	side_close(&src);
	return "4 channels to a destination set for 2: refused before any "
	       "RAM, the source keeps its guest";
}

static const struct test_case cases[] = {
	{ "unix-2", case_unix },
	{ "tcp-4-reordered", case_reordered },
	{ "devstate-reverse", case_reverse },
	{ "devstate-queue-bound", case_queue_bound },
	{ "devstate-drop", case_drop },
	{ "no-reorder-control", case_no_reorder },
	{ "channel-cut-ram", case_cut_ram },
	{ "channel-stall-switchover", case_stall_switchover },
	{ "config-mismatch", case_config },
};

int main(int argc, char **argv)
{
	const char *s = getenv("FERRY_TEST_SEED");

	seed = s ? strtoull(s, NULL, 0) : (uint64_t)time(NULL);
	printf("seed %" PRIu64 " (FERRY_TEST_SEED replays it)\n", seed);
	/* All of the device's state at the switchover, in 8+ packets. */
	side_devmem = MF_DEVMEM;
	side_no_precopy = true;
	return harness_main(cases, ARRAY_SIZE(cases), argc, argv);
}
