/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Migration stream framing, RAM batches, URIs and convergence.
 *
 * A reference stream (header, CONFIG, RAM, DEV_DATA, an unknown optional
 * section, END) is written to a file channel; loads of every prefix must
 * fail as truncated, every single-bit flip in the framing and payload
 * must be rejected, the version matrix must be accepted/refused exactly
 * as docs/migration-stream.md says.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ferry/crc32c.h"
#include "ferry/mig_channel.h"
#include "ferry/mig_converge.h"
#include "ferry/mig_ram.h"
#include "ferry/mig_stream.h"
#include "ferry/util.h"

#define TEST_PAGES	64

static uint8_t *ref;		/* reference stream bytes */
static size_t ref_len;

/* A channel reading from a memory copy (through a pipe-less memfd). */
static struct mig_channel *chan_from_bytes(const void *buf, size_t len)
{
	struct mig_channel *ch;
	int fd = memfd_create("stream", MFD_CLOEXEC);

	assert_true(fd >= 0);
	if (len)
		assert_int_equal(write(fd, buf, len), (ssize_t)len);
	lseek(fd, 0, SEEK_SET);
	assert_int_equal(mig_channel_from_fd(fd, false, 0, &ch), 0);
	return ch;
}

static void build_reference(void)
{
	static uint8_t ram_src[TEST_PAGES * MIG_PAGE_SIZE];
	struct mig_ram ram = { .nr = 1, .pages = TEST_PAGES };
	uint64_t bm[1] = { ~0ull };
	struct mig_channel *ch;
	struct mig_ram_stats st = { 0 };
	const char cfg[] = "{\"ram_size\":262144}";
	bool more;
	int fd = memfd_create("ref", MFD_CLOEXEC);

	for (unsigned i = 0; i < TEST_PAGES; i++)
		if (i % 3)	/* every third page stays zero */
			memset(ram_src + i * MIG_PAGE_SIZE, (int)i, MIG_PAGE_SIZE);
	ram.r[0] = (struct mig_ram_range){ .gpa = 0x100000,
		.size = TEST_PAGES * MIG_PAGE_SIZE, .hva = ram_src };
	assert_true(fd >= 0);
	assert_int_equal(mig_channel_from_fd(dup(fd), false, 0, &ch), 0);
	assert_int_equal(mig_stream_write_header(ch), 0);
	assert_int_equal(mig_section_write(ch, MIG_SEC_CONFIG, 0, 0, cfg,
					   sizeof(cfg), NULL, 0), 0);
	assert_int_equal(mig_ram_send_dirty(ch, &ram, bm, 0, &more, &st), 0);
	assert_false(more);
	assert_int_equal(st.zero_pages, (TEST_PAGES + 2) / 3);
	assert_int_equal(st.pages_sent + st.zero_pages, TEST_PAGES);
	assert_int_equal(bm[0], 0);
	assert_int_equal(mig_section_write(ch, MIG_SEC_DEV_DATA, 0, 1, "abc",
					   3, "defg", 4), 0);
	assert_int_equal(mig_section_write(ch, 0x7777, MIG_SEC_F_OPTIONAL, 0,
					   "skip me", 7, NULL, 0), 0);
	assert_int_equal(mig_section_write(ch, MIG_SEC_END, 0, 0, NULL, 0,
					   NULL, 0), 0);
	mig_channel_close(ch);
	ref_len = (size_t)lseek(fd, 0, SEEK_END);
	ref = malloc(ref_len);
	assert_int_equal(pread(fd, ref, ref_len, 0), (ssize_t)ref_len);
	close(fd);
}

/* Load a whole stream into dst RAM. 0 when it reached END intact. */
static int load_stream(const uint8_t *buf, size_t len, uint8_t *dst_ram,
		       char *err, size_t errlen)
{
	struct mig_ram ram = { .nr = 1, .pages = TEST_PAGES };
	struct mig_channel *ch = chan_from_bytes(buf, len);
	int ret;

	ram.r[0] = (struct mig_ram_range){ .gpa = 0x100000,
		.size = TEST_PAGES * MIG_PAGE_SIZE, .hva = dst_ram };
	ret = mig_stream_read_header(ch, NULL, err, errlen);
	while (!ret) {
		struct mig_section sec;
		void *p;

		ret = mig_section_read(ch, &sec, &p, err, errlen);
		if (ret)
			break;
		if (sec.type == MIG_SEC_END) {
			free(p);
			break;
		}
		if (sec.type == MIG_SEC_RAM)
			ret = mig_ram_load(&ram, p, sec.length, err, errlen);
		else if (sec.type != MIG_SEC_CONFIG &&
			 sec.type != MIG_SEC_DEV_DATA &&
			 !(sec.flags & MIG_SEC_F_OPTIONAL))
			ret = -EBADMSG;
		free(p);
	}
	mig_channel_close(ch);
	return ret;
}

static void test_roundtrip(void **state)
{
	static uint8_t dst[TEST_PAGES * MIG_PAGE_SIZE];
	char err[256] = "";

	memset(dst, 0xee, sizeof(dst));	/* zero pages must be cleared */
	assert_int_equal(load_stream(ref, ref_len, dst, err, sizeof(err)), 0);
	for (unsigned i = 0; i < TEST_PAGES; i++)
		for (unsigned b = 0; b < MIG_PAGE_SIZE; b += 512)
			assert_int_equal(dst[i * MIG_PAGE_SIZE + b],
					 i % 3 ? (uint8_t)i : 0);
}

/* Every proper prefix fails (QEMU's test-vmstate does 0, n-2, n/2). */
static void test_truncated(void **state)
{
	static uint8_t dst[TEST_PAGES * MIG_PAGE_SIZE];
	char err[256];

	for (size_t n = 0; n < ref_len; n += (n < 64 ? 1 : 97)) {
		int ret = load_stream(ref, n, dst, err, sizeof(err));

		if (ret == 0)
			fail_msg("prefix of %zu/%zu bytes loaded", n, ref_len);
	}
	assert_int_not_equal(load_stream(ref, ref_len - 1, dst, err,
					 sizeof(err)), 0);
	assert_int_not_equal(load_stream(ref + ref_len / 2, ref_len / 2, dst,
					 err, sizeof(err)), 0);
}

/* Any single bit flip anywhere is caught by magic/CRC/length checks. */
static void test_bitflips(void **state)
{
	static uint8_t dst[TEST_PAGES * MIG_PAGE_SIZE];
	uint8_t *copy = malloc(ref_len);
	char err[256];
	unsigned seed = 12345, tried = 0;

	/* every bit of the first 200 bytes (headers, framing) ... */
	for (size_t off = 0; off < MIN(ref_len, (size_t)200); off++) {
		for (int bit = 0; bit < 8; bit++) {
			memcpy(copy, ref, ref_len);
			copy[off] ^= (uint8_t)(1u << bit);
			if (load_stream(copy, ref_len, dst, err, sizeof(err)) == 0)
				fail_msg("flip at %zu bit %d accepted", off, bit);
			tried++;
		}
	}
	/* ... and 1000 random bits over the whole stream */
	for (int i = 0; i < 1000; i++) {
		size_t off;

		seed = seed * 1103515245u + 12345u;
		off = (seed >> 8) % ref_len;
		memcpy(copy, ref, ref_len);
		copy[off] ^= (uint8_t)(1u << (seed & 7));
		if (load_stream(copy, ref_len, dst, err, sizeof(err)) == 0)
			fail_msg("flip at %zu accepted", off);
		tried++;
	}
	assert_true(tried > 2000);
	free(copy);
}

static void write_version(uint8_t *h, uint16_t major, uint16_t minor)
{
	uint32_t crc;

	memcpy(h + 8, &major, 2);
	memcpy(h + 10, &minor, 2);
	crc = crc32c(h, 12);
	memcpy(h + 12, &crc, 4);
}

/* Wrong magic, major+1, minor+1 rejected; the current and an older
 * minor (0: before the three-step hand-over) accepted. */
static void test_versions(void **state)
{
	static uint8_t dst[TEST_PAGES * MIG_PAGE_SIZE];
	uint8_t *copy = malloc(ref_len);
	char err[256];

	memcpy(copy, ref, ref_len);
	memcpy(copy, "QEMU_VM!", 8);
	assert_int_equal(load_stream(copy, ref_len, dst, err, sizeof(err)),
			 -EBADMSG);
	assert_non_null(strstr(err, "bad magic"));

	memcpy(copy, ref, ref_len);
	write_version(copy, MIG_STREAM_MAJOR + 1, 0);
	assert_int_equal(load_stream(copy, ref_len, dst, err, sizeof(err)),
			 -EPROTONOSUPPORT);
	assert_non_null(strstr(err, "unsupported stream version 2.0"));

	memcpy(copy, ref, ref_len);
	write_version(copy, MIG_STREAM_MAJOR, MIG_STREAM_MINOR + 1);
	assert_int_equal(load_stream(copy, ref_len, dst, err, sizeof(err)),
			 -EPROTONOSUPPORT);

	memcpy(copy, ref, ref_len);
	write_version(copy, MIG_STREAM_MAJOR, MIG_STREAM_MINOR);
	assert_int_equal(load_stream(copy, ref_len, dst, err, sizeof(err)), 0);

	memcpy(copy, ref, ref_len);
	write_version(copy, MIG_STREAM_MAJOR, 0);
	assert_int_equal(load_stream(copy, ref_len, dst, err, sizeof(err)), 0);
	free(copy);
}

/* An oversize length is refused before any allocation. */
static void test_section_limits(void **state)
{
	struct mig_section sec = { .type = MIG_SEC_RAM,
		.length = (uint64_t)MIG_SECTION_MAX_LEN + 1 };
	struct mig_channel *ch;
	char err[256];
	void *p;

	sec.hdr_crc = crc32c(&sec, offsetof(struct mig_section, hdr_crc));
	ch = chan_from_bytes(&sec, sizeof(sec));
	assert_int_equal(mig_section_read(ch, &sec, &p, err, sizeof(err)),
			 -EFBIG);
	assert_null(p);
	mig_channel_close(ch);
}

static void test_ram_load_rejects(void **state)
{
	static uint8_t mem[4 * MIG_PAGE_SIZE];
	struct mig_ram ram = { .nr = 1, .pages = 4 };
	uint8_t buf[8 + 8 + MIG_PAGE_SIZE];
	uint32_t count = 1;
	uint64_t e;
	char err[256];

	ram.r[0] = (struct mig_ram_range){ .gpa = 0x2000,
		.size = sizeof(mem), .hva = mem };
	memset(buf, 0, sizeof(buf));
	memcpy(buf, &count, 4);
	e = 0x1000;			/* below RAM */
	memcpy(buf + 8, &e, 8);
	assert_int_equal(mig_ram_load(&ram, buf, sizeof(buf), err,
				      sizeof(err)), -EBADMSG);
	e = 0x2000 + sizeof(mem);	/* just past RAM */
	memcpy(buf + 8, &e, 8);
	assert_int_equal(mig_ram_load(&ram, buf, sizeof(buf), err,
				      sizeof(err)), -EBADMSG);
	e = 0x2004;			/* unaligned */
	memcpy(buf + 8, &e, 8);
	assert_int_equal(mig_ram_load(&ram, buf, sizeof(buf), err,
				      sizeof(err)), -EBADMSG);
	e = 0x3000;			/* good address, short data */
	memcpy(buf + 8, &e, 8);
	assert_int_equal(mig_ram_load(&ram, buf, sizeof(buf) - 1, err,
				      sizeof(err)), -EBADMSG);
	count = MIG_RAM_BATCH + 1;
	memcpy(buf, &count, 4);
	assert_int_equal(mig_ram_load(&ram, buf, sizeof(buf), err,
				      sizeof(err)), -EBADMSG);
	count = 1;
	memcpy(buf, &count, 4);
	memset(buf + 16, 0x5a, MIG_PAGE_SIZE);
	assert_int_equal(mig_ram_load(&ram, buf, sizeof(buf), err,
				      sizeof(err)), 0);
	assert_int_equal(mem[0x1000], 0x5a);
	assert_int_equal(mem[0], 0);
}

static void test_ram_mark_and_pfn(void **state)
{
	struct mig_ram ram = { .nr = 2, .pages = 8 };
	uint64_t bm[1] = { 0 };

	ram.r[0] = (struct mig_ram_range){ .gpa = 0, .size = 4 * MIG_PAGE_SIZE };
	ram.r[1] = (struct mig_ram_range){ .gpa = 1ull << 32,
		.size = 4 * MIG_PAGE_SIZE };
	assert_int_equal(mig_ram_pfn(&ram, (1ull << 32) + 0x1000), 5);
	assert_int_equal(mig_ram_gpa(&ram, 5), (1ull << 32) + 0x1000);
	assert_int_equal(mig_ram_pfn(&ram, 0x4000), UINT64_MAX);
	mig_ram_mark(&ram, bm, 0x3fff, 2);	/* straddles pages 3 and 4(hole) */
	assert_int_equal(bm[0], 1ull << 3);
	mig_ram_mark(&ram, bm, UINT64_MAX - 1, 4);	/* overflow: ignored */
	mig_ram_mark(&ram, bm, (1ull << 32), 2 * MIG_PAGE_SIZE);
	assert_int_equal(bm[0], (1ull << 3) | (1ull << 4) | (1ull << 5));
	assert_int_equal(bitmap_count(bm, 8), 3);
	/* Ending just below 2^64: must not wrap and loop for ever. */
	alarm(10);
	mig_ram_mark(&ram, bm, UINT64_MAX - MIG_PAGE_SIZE, MIG_PAGE_SIZE);
	assert_int_equal(bitmap_count(bm, 8), 3);
	/* A device-chosen huge span is clamped to RAM, not walked. */
	mig_ram_mark(&ram, bm, 0, 1ull << 62);
	alarm(0);
	assert_int_equal(bm[0], 0xff);
}

/* Holes of a memfd are sent as zero pages without being read (reading
 * would allocate them); written pages are sent with their data. */
static void test_ram_send_skips_holes(void **state)
{
	const uint64_t pages = 256;
	struct mig_ram ram = { .nr = 1, .pages = pages };
	uint64_t bm[4] = { ~0ull, ~0ull, ~0ull, ~0ull };
	struct mig_ram_stats st = { 0 };
	struct mig_channel *out;
	struct stat before, after;
	uint8_t *mem;
	bool more;
	int fd = memfd_create("ram", MFD_CLOEXEC);

	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)(pages * MIG_PAGE_SIZE)), 0);
	mem = mmap(NULL, pages * MIG_PAGE_SIZE, PROT_READ | PROT_WRITE,
		   MAP_SHARED, fd, 0);
	assert_true(mem != MAP_FAILED);
	mem[10 * MIG_PAGE_SIZE] = 1;		/* data page */
	mem[200 * MIG_PAGE_SIZE + 7] = 2;	/* data page */
	memset(mem + 100 * MIG_PAGE_SIZE, 0, MIG_PAGE_SIZE); /* written, zero */
	ram.r[0] = (struct mig_ram_range){ .gpa = 0, .size = pages * MIG_PAGE_SIZE,
		.hva = mem, .has_fd = true, .fd = fd, .fd_offset = 0 };
	assert_int_equal(fstat(fd, &before), 0);
	assert_int_equal(mig_channel_from_fd(memfd_create("s", MFD_CLOEXEC),
					     false, 0, &out), 0);
	assert_int_equal(mig_ram_send_dirty(out, &ram, bm, 0, &more, &st), 0);
	mig_channel_close(out);
	assert_int_equal(st.pages_sent, 2);
	assert_int_equal(st.zero_pages, pages - 2);
	assert_int_equal(fstat(fd, &after), 0);
	/* no hole was faulted in: only the three written pages are backed */
	assert_int_equal(after.st_blocks, before.st_blocks);
	munmap(mem, pages * MIG_PAGE_SIZE);
	close(fd);
}

/* With a loaded bitmap the loader treats never-loaded pages as fresh
 * zero pages: it does not touch them, but it does clear a page it loaded
 * earlier when a zero page for it arrives. */
static void test_ram_load_fresh(void **state)
{
	static uint8_t mem[4 * MIG_PAGE_SIZE];
	uint64_t loaded[1] = { 0 };
	struct mig_ram ram = { .nr = 1, .pages = 4, .loaded = loaded };
	uint8_t buf[8 + 8 + MIG_PAGE_SIZE];
	uint32_t count = 1;
	uint64_t e;
	char err[256];

	ram.r[0] = (struct mig_ram_range){ .gpa = 0, .size = sizeof(mem),
		.hva = mem };
	memset(mem, 0x77, sizeof(mem));	/* marks what the loader touches */
	memset(buf, 0, sizeof(buf));
	memcpy(buf, &count, 4);
	e = 1 * MIG_PAGE_SIZE | MIG_RAM_F_ZERO;	/* never loaded: skipped */
	memcpy(buf + 8, &e, 8);
	assert_int_equal(mig_ram_load(&ram, buf, 16, err, sizeof(err)), 0);
	assert_int_equal(mem[MIG_PAGE_SIZE], 0x77);
	e = 2 * MIG_PAGE_SIZE;			/* data */
	memcpy(buf + 8, &e, 8);
	memset(buf + 16, 0x5a, MIG_PAGE_SIZE);
	assert_int_equal(mig_ram_load(&ram, buf, sizeof(buf), err,
				      sizeof(err)), 0);
	assert_int_equal(mem[2 * MIG_PAGE_SIZE], 0x5a);
	assert_true(loaded[0] & (1ull << 2));
	e = 2 * MIG_PAGE_SIZE | MIG_RAM_F_ZERO;	/* loaded before: cleared */
	memcpy(buf + 8, &e, 8);
	assert_int_equal(mig_ram_load(&ram, buf, 16, err, sizeof(err)), 0);
	assert_int_equal(mem[2 * MIG_PAGE_SIZE + 100], 0);
}

static void test_uri(void **state)
{
	struct mig_uri u;
	char err[256];

	assert_int_equal(mig_uri_parse("tcp:127.0.0.1:4444", &u, err,
				       sizeof(err)), 0);
	assert_int_equal(u.kind, MIG_URI_TCP);
	assert_string_equal(u.host, "127.0.0.1");
	assert_string_equal(u.port, "4444");
	assert_int_equal(mig_uri_parse("tcp:[::1]:5", &u, err, sizeof(err)), 0);
	assert_string_equal(u.host, "::1");
	assert_int_equal(mig_uri_parse("unix:/tmp/m.sock", &u, err,
				       sizeof(err)), 0);
	assert_int_equal(u.kind, MIG_URI_UNIX);
	assert_int_equal(mig_uri_parse("file:/tmp/x", &u, err, sizeof(err)), 0);
	assert_int_equal(u.kind, MIG_URI_FILE);
	assert_int_equal(mig_uri_parse("tcp:host", &u, err, sizeof(err)),
			 -EINVAL);
	assert_int_equal(mig_uri_parse("tcp:host:12x", &u, err, sizeof(err)),
			 -EINVAL);
	assert_int_equal(mig_uri_parse("exec:cat", &u, err, sizeof(err)),
			 -EINVAL);
	assert_non_null(strstr(err, "expected"));
	assert_int_equal(mig_uri_parse("unix:", &u, err, sizeof(err)), -EINVAL);
	/* Refused at submission, not found out at connect time. */
	assert_int_equal(mig_uri_parse("tcp:127.0.0.1:99999", &u, err,
				       sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "not 0..65535"));
	assert_int_equal(mig_uri_parse("tcp:bad host:1", &u, err,
				       sizeof(err)), -EINVAL);
	assert_int_equal(mig_uri_parse("tcp:a..b:1", &u, err, sizeof(err)),
			 -EINVAL);
	assert_int_equal(mig_uri_parse("tcp:300.1.1.1:1", &u, err,
				       sizeof(err)), -EINVAL);
	assert_int_equal(mig_uri_parse("tcp:-x.example:1", &u, err,
				       sizeof(err)), -EINVAL);
	assert_int_equal(mig_uri_parse("tcp:dst-1.example.org:4444", &u, err,
				       sizeof(err)), 0);
}

/*
 * A stalled peer (connected, reading nothing) must fail a large write
 * with -ETIMEDOUT once the channel timeout passes without progress,
 * rather than block inside send() for ever.
 */
static void test_write_timeout(void **state)
{
	struct mig_channel *ch;
	size_t len = 16u << 20;	/* far more than a socket buffer */
	void *buf = calloc(1, len);
	int sv[2];

	assert_non_null(buf);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0,
				    sv), 0);
	assert_int_equal(mig_channel_from_fd(sv[0], true, 200, &ch), 0);
	alarm(10);	/* without the bound the write never returns */
	assert_int_equal(mig_write(ch, buf, len), -ETIMEDOUT);
	alarm(0);
	assert_true(ch->bytes_written < len);
	mig_channel_close(ch);
	close(sv[1]);
	free(buf);
}

static void test_converge(void **state)
{
	struct mig_converge c;
	char why[256];

	mig_converge_init(&c, 300, 0);
	assert_false(mig_converge_ready(&c, 1));	/* no bandwidth yet */
	/* 100 MB/s link, guest dirtying 10 MB/s */
	mig_converge_sample(&c, 100000000, 1000000000, 10000000);
	assert_true(mig_converge_ready(&c, 10000000));	/* ~100 ms */
	assert_false(mig_converge_ready(&c, 50000000));	/* ~500 ms */
	mig_converge_reason(&c, why, sizeof(why));
	assert_non_null(strstr(why, "expected downtime"));
	/* dirtying faster than the link: says so */
	mig_converge_sample(&c, 100000000, 1000000000, 400000000);
	mig_converge_ready(&c, 50000000);
	mig_converge_reason(&c, why, sizeof(why));
	assert_non_null(strstr(why, "not converging"));
	/* max-bandwidth caps the estimate and throttles */
	mig_converge_init(&c, 300, 10000000);
	mig_converge_sample(&c, 100000000, 1000000000, 0);
	assert_false(mig_converge_ready(&c, 10000000));	/* 1 s at 10 MB/s */
	assert_int_equal(mig_converge_throttle_ns(&c, 10000000, 0),
			 1000000000ull);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_roundtrip),
		cmocka_unit_test(test_truncated),
		cmocka_unit_test(test_bitflips),
		cmocka_unit_test(test_versions),
		cmocka_unit_test(test_section_limits),
		cmocka_unit_test(test_ram_load_rejects),
		cmocka_unit_test(test_ram_mark_and_pfn),
		cmocka_unit_test(test_ram_send_skips_holes),
		cmocka_unit_test(test_ram_load_fresh),
		cmocka_unit_test(test_uri),
		cmocka_unit_test(test_write_timeout),
		cmocka_unit_test(test_converge),
	};
	int ret;

	build_reference();
	ret = cmocka_run_group_tests(tests, NULL, NULL);
	free(ref);
	return ret;
}
