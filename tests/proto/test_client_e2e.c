/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The client drives proto-testdev through every command: negotiation,
 * device/region/IRQ info (sparse and trap-while-saving caps, the BAR's fd
 * mmap'd and read back), region access split into small transfers,
 * WRITE_MULTI, SET_IRQS with the device raising a vector, DMA maps with
 * and without an fd (device DMA through the mmap and through DMA_WRITE
 * messages, the dirty callback), DMA logging, unmap and unmap-all,
 * RESET, DEVICE_FEATURE, and a migration of the device state from one
 * server process to another. Usage: test-client-e2e PATH-TO-proto-testdev
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ferry/crc32c.h"
#include "ferry/util.h"
#include "ferry/vfu_client.h"
#include "proto_testdev.h"
#include "proto_util.h"

#define XFER		4096u	/* small, so BAR2 access is split */
#define IOVA_FD		0x100000ull
#define IOVA_MSG	0x200000ull
#define DMA_MEM		(64u * 1024)

static const char *testdev;

struct dirty_sum {
	int calls;
	uint64_t lo, hi;
};

static void on_dirty(void *opaque, uint64_t iova, uint64_t len)
{
	struct dirty_sum *d = opaque;

	if (!d->calls || iova < d->lo)
		d->lo = iova;
	if (!d->calls || iova + len > d->hi)
		d->hi = iova + len;
	d->calls++;
}

static uint64_t reg_read(struct vfu_client *c, uint64_t reg)
{
	uint64_t v = ~0ull;

	CHECK_RET(vfu_client_region_read(c, VFU_PCI_BAR0_REGION_INDEX, reg,
					 &v, sizeof(v)), 0);
	return v;
}

static void reg_write(struct vfu_client *c, uint64_t reg, uint64_t v)
{
	CHECK_RET(vfu_client_region_write(c, VFU_PCI_BAR0_REGION_INDEX, reg,
					  &v, sizeof(v)), 0);
}

/* Start a device DMA and wait (bounded) for its status. */
static int64_t device_dma(struct vfu_client *c, uint64_t op, uint64_t addr,
			  uint64_t len, uint8_t pattern)
{
	uint64_t deadline = clock_ns() + TU_WAIT_MS * 1000000ull;
	uint64_t st;

	reg_write(c, TESTDEV_REG_DMA_ADDR, addr);
	reg_write(c, TESTDEV_REG_DMA_LEN, len);
	reg_write(c, TESTDEV_REG_DMA_PATTERN, pattern);
	reg_write(c, TESTDEV_REG_DMA_GO, op);
	do {
		st = reg_read(c, TESTDEV_REG_DMA_STATUS);
		if (st != TESTDEV_STATUS_BUSY)
			return (int64_t)st;
		usleep(1000);
	} while (clock_ns() < deadline);
	CHECK(0, "device DMA never completed");
	return -ETIMEDOUT;
}

static bool eventfd_fired(int fd, uint64_t *val)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN };

	if (poll(&pfd, 1, TU_WAIT_MS) != 1)
		return false;
	return read(fd, val, sizeof(*val)) == sizeof(*val);
}

static void test_info_and_regions(struct vfu_client *c)
{
	struct vfu_device_info info;
	struct vfu_client_region r;
	struct vfu_irq_info irq;
	uint8_t *map, buf[TESTDEV_BAR2_SIZE], back[TESTDEV_BAR2_SIZE];
	uint64_t v;

	CHECK_RET(vfu_client_device_info(c, &info), 0);
	CHECK(info.flags == (VFU_DEVICE_FLAGS_RESET | VFU_DEVICE_FLAGS_PCI) &&
	      info.num_regions == VFU_PCI_NUM_REGIONS &&
	      info.num_irqs == VFU_PCI_NUM_IRQS,
	      "info flags %#x regions %u irqs %u", info.flags,
	      info.num_regions, info.num_irqs);

	CHECK_RET(vfu_client_region_info(c, VFU_PCI_BAR0_REGION_INDEX, &r), 0);
	CHECK(r.size == TESTDEV_BAR0_SIZE && r.fd == -1 &&
	      !(r.flags & VFU_REGION_FLAG_MMAP), "BAR0 info");
	vfu_client_region_release(&r);
	CHECK_RET(vfu_client_region_info(c, VFU_PCI_CONFIG_REGION_INDEX, &r),
		  0);
	CHECK(r.size == TESTDEV_CONFIG_SIZE, "config size %lu",
	      (unsigned long)r.size);
	vfu_client_region_release(&r);
	CHECK(vfu_client_region_info(c, VFU_PCI_NUM_REGIONS, &r) < 0,
	      "region index out of range accepted");

	CHECK_RET(vfu_client_region_info(c, VFU_PCI_BAR2_REGION_INDEX, &r), 0);
	CHECK(r.size == TESTDEV_BAR2_SIZE && r.fd >= 0 &&
	      (r.flags & VFU_REGION_FLAG_MMAP), "BAR2 info");
	CHECK(r.nr_sparse == 2 && r.sparse[0].offset == TESTDEV_SPARSE0_OFF &&
	      r.sparse[0].size == TESTDEV_SPARSE0_SIZE &&
	      r.sparse[1].offset == TESTDEV_SPARSE1_OFF &&
	      r.sparse[1].size == TESTDEV_SPARSE1_SIZE,
	      "sparse areas: %u", r.nr_sparse);
	CHECK(r.nr_trap_while_saving == 1 &&
	      r.trap_while_saving[0].offset == TESTDEV_TRAP_OFF &&
	      r.trap_while_saving[0].size == TESTDEV_TRAP_SIZE,
	      "trap areas: %u", r.nr_trap_while_saving);

	/* The same bytes through the fd mmap and through REGION_READ/WRITE,
	 * the latter split into XFER-sized messages. */
	map = r.fd >= 0 ? mmap(NULL, r.size, PROT_READ | PROT_WRITE,
			       MAP_SHARED, r.fd, (off_t)r.fd_offset) :
		MAP_FAILED;
	CHECK(map != MAP_FAILED, "mmap BAR2");
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (uint8_t)(i * 7 + 3);
	CHECK_RET(vfu_client_region_write(c, VFU_PCI_BAR2_REGION_INDEX, 0,
					  buf, sizeof(buf)), 0);
	if (map != MAP_FAILED) {
		CHECK(!memcmp(map, buf, sizeof(buf)), "mmap does not see write");
		memset(map + TESTDEV_SPARSE1_OFF, 0x77, 64);
		munmap(map, r.size);
	}
	memcpy(buf + TESTDEV_SPARSE1_OFF, (uint8_t[64]){ [0 ... 63] = 0x77 },
	       64);
	CHECK_RET(vfu_client_region_read(c, VFU_PCI_BAR2_REGION_INDEX, 0,
					 back, sizeof(back)), 0);
	CHECK(!memcmp(back, buf, sizeof(buf)), "region read mismatch");
	vfu_client_region_release(&r);
	CHECK(r.fd == -1, "release left fd");

	/* Registers, WRITE_MULTI. */
	CHECK_RET(reg_read(c, TESTDEV_REG_ID), TESTDEV_ID);
	reg_write(c, TESTDEV_REG_SCRATCH, 0x1122334455667788ull);
	CHECK_RET(reg_read(c, TESTDEV_REG_SCRATCH), 0x1122334455667788ull);
	{
		struct vfu_write_multi_entry w[2] = {
			{ .offset = TESTDEV_REG_SCRATCH, .count = 8 },
			{ .offset = TESTDEV_REG_DMA_PATTERN, .count = 1 },
		};

		v = 0xabcdef;
		memcpy(w[0].data, &v, 8);
		w[1].data[0] = 0x42;
		CHECK_RET(vfu_client_write_multi(c, w, 2), 0);
		CHECK_RET(reg_read(c, TESTDEV_REG_SCRATCH), 0xabcdef);
		CHECK_RET(reg_read(c, TESTDEV_REG_DMA_PATTERN) & 0xff, 0x42);
	}

	/* IRQs: two eventfds, the device raises vector 1. */
	CHECK_RET(vfu_client_irq_info(c, VFU_PCI_MSIX_IRQ_INDEX, &irq), 0);
	CHECK(irq.count == TESTDEV_MSIX_VECTORS &&
	      (irq.flags & VFU_IRQ_INFO_EVENTFD), "MSI-X count %u flags %#x",
	      irq.count, irq.flags);
	{
		int efd[2] = { eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK),
			       eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK) };

		CHECK_RET(vfu_client_set_irqs(c, VFU_PCI_MSIX_IRQ_INDEX, 0, 2,
					      efd), 0);
		reg_write(c, TESTDEV_REG_IRQ_TRIGGER, 1);
		CHECK_RET(reg_read(c, TESTDEV_REG_IRQ_RESULT), 1);
		CHECK(eventfd_fired(efd[1], &v) && v == 1,
		      "vector 1 eventfd not signalled");
		CHECK(read(efd[0], &v, sizeof(v)) < 0, "vector 0 signalled");
		/* De-assigned: the device has nowhere to signal. */
		CHECK_RET(vfu_client_set_irqs(c, VFU_PCI_MSIX_IRQ_INDEX, 0, 2,
					      NULL), 0);
		reg_write(c, TESTDEV_REG_IRQ_TRIGGER, 1);
		CHECK_RET(reg_read(c, TESTDEV_REG_IRQ_RESULT), 0);
		CHECK(read(efd[1], &v, sizeof(v)) < 0, "signalled after removal");
		close(efd[0]);
		close(efd[1]);
	}
}

static void test_dma(struct vfu_client *c)
{
	struct dirty_sum d = { 0 };
	uint8_t *fdmem, *msgmem;
	uint64_t page = 4096, bitmap[1] = { 0 };
	int mfd = memfd_create("e2e-dma", MFD_CLOEXEC);

	CHECK(mfd >= 0 && ftruncate(mfd, DMA_MEM) == 0, "memfd");
	fdmem = mmap(NULL, DMA_MEM, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	msgmem = calloc(1, DMA_MEM);
	if (fdmem == MAP_FAILED || !msgmem) {
		CHECK(0, "DMA memory");
		return;
	}
	vfu_client_set_dirty_cb(c, on_dirty, &d);

	CHECK_RET(vfu_client_dma_map(c, IOVA_FD, DMA_MEM, mfd, 0,
				     VFU_DMA_FLAG_READ | VFU_DMA_FLAG_WRITE,
				     fdmem), 0);
	CHECK_RET(vfu_client_dma_map(c, IOVA_MSG, DMA_MEM, -1, 0,
				     VFU_DMA_FLAG_READ | VFU_DMA_FLAG_WRITE,
				     msgmem), 0);
	close(mfd);	/* the server holds its own reference now */

	/* Device logging on the fd-backed map (the server's side). */
	CHECK_RET(vfu_client_dma_log_start(c, &page, NULL, 0), 0);
	CHECK_RET(page, 4096);

	/* fd-backed: lands through the server's mmap, no messages. */
	CHECK_RET(device_dma(c, TESTDEV_GO_WRITE, IOVA_FD + 0x2040, 64, 0x5c),
		  0);
	CHECK(fdmem[0x2040] == 0x5c && fdmem[0x207f] == 0x5c &&
	      fdmem[0x2080] == 0, "fd-backed DMA bytes");
	CHECK(d.calls == 0, "dirty cb for an fd-backed write");
	CHECK_RET(vfu_client_dma_log_report(c, IOVA_FD, DMA_MEM, page, bitmap),
		  0);
	CHECK(bitmap[0] == (1ull << 2), "dirty bitmap %#lx",
	      (unsigned long)bitmap[0]);
	bitmap[0] = ~0ull;
	CHECK_RET(vfu_client_dma_log_report(c, IOVA_FD, DMA_MEM, page, bitmap),
		  0);
	CHECK(bitmap[0] == 0, "report did not clear: %#lx",
	      (unsigned long)bitmap[0]);
	CHECK_RET(vfu_client_dma_log_stop(c), 0);

	/* fd-less: DMA_WRITE messages served by the client, reported to
	 * the dirty callback; 3 pages' worth, so the server may chunk. */
	CHECK_RET(device_dma(c, TESTDEV_GO_WRITE, IOVA_MSG + 0x1000,
			     3 * 4096, 0xa5), 0);
	CHECK(msgmem[0x1000] == 0xa5 && msgmem[0x3fff] == 0xa5 &&
	      msgmem[0xfff] == 0 && msgmem[0x4000] == 0, "message DMA bytes");
	CHECK(d.calls >= 1 && d.lo == IOVA_MSG + 0x1000 &&
	      d.hi == IOVA_MSG + 0x4000, "dirty cb %d calls [%#lx, %#lx)",
	      d.calls, (unsigned long)d.lo, (unsigned long)d.hi);
	/* DMA_READ messages: the device CRCs our bytes. */
	for (int i = 0; i < 256; i++)
		msgmem[0x8000 + i] = (uint8_t)i;
	CHECK_RET(device_dma(c, TESTDEV_GO_READ, IOVA_MSG + 0x8000, 256, 0),
		  0);
	CHECK_RET(reg_read(c, TESTDEV_REG_DMA_CRC), crc32c(msgmem + 0x8000,
							   256));
	/* Outside every map: the device's DMA fails, nothing is written. */
	CHECK_RET(device_dma(c, TESTDEV_GO_WRITE, IOVA_MSG + DMA_MEM - 8, 16,
			     1), -EFAULT);

	CHECK_RET(vfu_client_dma_unmap(c, IOVA_MSG, DMA_MEM), 0);
	CHECK_RET(device_dma(c, TESTDEV_GO_WRITE, IOVA_MSG, 16, 1), -EFAULT);
	CHECK(msgmem[0] == 0, "write after unmap");
	CHECK_RET(vfu_client_dma_unmap(c, IOVA_MSG, DMA_MEM), -ENOENT);
	CHECK_RET(vfu_client_dma_unmap_all(c), 0);
	CHECK_RET(device_dma(c, TESTDEV_GO_WRITE, IOVA_FD, 16, 1), -EFAULT);
	CHECK(fdmem[0] == 0, "write after unmap-all");

	vfu_client_set_dirty_cb(c, NULL, NULL);
	munmap(fdmem, DMA_MEM);
	free(msgmem);
}

static void test_features(struct vfu_client *c)
{
	struct vfu_feature_precopy_info pi;
	enum vfu_mig_state st;
	uint64_t flags = 0, len = 0;
	size_t got = 1;

	CHECK_RET(vfu_client_feature(c, VFU_FEATURE_MIGRATION,
				     VFU_FEATURE_PROBE | VFU_FEATURE_GET,
				     NULL, 0, NULL, 0, &got), 0);
	CHECK_RET(vfu_client_mig_flags(c, &flags), 0);
	CHECK_RET(flags, VFU_MIGRATION_STOP_COPY | VFU_MIGRATION_P2P |
		  VFU_MIGRATION_PRE_COPY);
	CHECK_RET(vfu_client_mig_get_state(c, &st), 0);
	CHECK_RET(st, VFU_MIG_STATE_RUNNING);
	CHECK_RET(vfu_client_mig_data_size(c, &len), 0);
	CHECK(len > TESTDEV_BAR2_SIZE, "data size %lu", (unsigned long)len);
	/* Only valid in PRE_COPY. */
	CHECK_RET(vfu_client_precopy_info(c, &pi), -EINVAL);

	/* RESET puts registers back; the device stays RUNNING. */
	reg_write(c, TESTDEV_REG_SCRATCH, 99);
	CHECK_RET(vfu_client_reset(c), 0);
	CHECK_RET(reg_read(c, TESTDEV_REG_SCRATCH), 0);
	CHECK_RET(reg_read(c, TESTDEV_REG_ID), TESTDEV_ID);
	CHECK_RET(vfu_client_mig_get_state(c, &st), 0);
	CHECK_RET(st, VFU_MIG_STATE_RUNNING);
}

/* Drain the stream until a 0-byte read; returns bytes appended. */
static size_t drain(struct vfu_client *c, uint8_t **buf, size_t *len)
{
	size_t total = 0;

	for (int guard = 0; guard < 10000; guard++) {
		uint8_t *p = realloc(*buf, *len + XFER);
		ssize_t n;

		if (!p)
			break;
		*buf = p;
		n = vfu_client_mig_read(c, *buf + *len, XFER);
		if (n <= 0) {
			CHECK(n == 0, "mig read: %zd", n);
			break;
		}
		*len += (size_t)n;
		total += (size_t)n;
	}
	return total;
}

static void test_migration(struct vfu_client *src, const char *dir)
{
	struct vfu_client_opts opts = { .max_data_xfer_size = XFER };
	struct vfu_feature_precopy_info pi;
	struct tu_server dst_srv;
	struct vfu_client *dst;
	uint8_t pattern[TESTDEV_BAR2_SIZE], back[TESTDEV_BAR2_SIZE];
	uint8_t *stream = NULL;
	size_t len = 0;
	enum vfu_mig_state st;

	for (size_t i = 0; i < sizeof(pattern); i++)
		pattern[i] = (uint8_t)(i ^ (i >> 8));
	CHECK_RET(vfu_client_region_write(src, VFU_PCI_BAR2_REGION_INDEX, 0,
					  pattern, sizeof(pattern)), 0);
	reg_write(src, TESTDEV_REG_SCRATCH, 0xfeedface);

	CHECK_RET(vfu_client_mig_set_state(src, VFU_MIG_STATE_PRE_COPY), 0);
	CHECK_RET(vfu_client_precopy_info(src, &pi), 0);
	CHECK(pi.initial_bytes > 0, "no initial bytes");
	CHECK(drain(src, &stream, &len) == pi.initial_bytes,
	      "pre-copy drained %zu, announced %lu", len,
	      (unsigned long)pi.initial_bytes);
	/* Forbidden: straight back from STOP_COPY to PRE_COPY. */
	CHECK_RET(vfu_client_mig_set_state(src, VFU_MIG_STATE_STOP_COPY), 0);
	CHECK(vfu_client_mig_set_state(src, VFU_MIG_STATE_PRE_COPY) < 0,
	      "STOP_COPY->PRE_COPY accepted");
	CHECK(drain(src, &stream, &len) > 0, "no stop-copy data");
	CHECK_RET(vfu_client_mig_read(src, back, XFER), 0);
	CHECK_RET(vfu_client_mig_set_state(src, VFU_MIG_STATE_STOP), 0);

	if (tu_server_start_in(&dst_srv, dir, "dst.sock", testdev, NULL)) {
		CHECK(0, "second server");
		free(stream);
		return;
	}
	if (vfu_client_connect(dst_srv.sock, &opts, &dst)) {
		CHECK(0, "connect to destination");
		goto out_stop;
	}
	/* A corrupted stream is refused and leaves the device unharmed. */
	CHECK_RET(vfu_client_mig_set_state(dst, VFU_MIG_STATE_RESUMING), 0);
	stream[0] ^= 0xff;
	CHECK_RET(vfu_client_mig_write(dst, stream, len), 0);
	CHECK(vfu_client_mig_set_state(dst, VFU_MIG_STATE_STOP) < 0,
	      "corrupt stream accepted");
	stream[0] ^= 0xff;
	CHECK_RET(vfu_client_reset(dst), 0);

	CHECK_RET(vfu_client_mig_set_state(dst, VFU_MIG_STATE_RESUMING), 0);
	CHECK_RET(vfu_client_mig_write(dst, stream, len), 0);
	CHECK_RET(vfu_client_mig_set_state(dst, VFU_MIG_STATE_STOP), 0);
	CHECK_RET(vfu_client_mig_set_state(dst, VFU_MIG_STATE_RUNNING), 0);
	CHECK_RET(vfu_client_mig_get_state(dst, &st), 0);
	CHECK_RET(st, VFU_MIG_STATE_RUNNING);
	CHECK_RET(reg_read(dst, TESTDEV_REG_SCRATCH), 0xfeedface);
	CHECK_RET(vfu_client_region_read(dst, VFU_PCI_BAR2_REGION_INDEX, 0,
					 back, sizeof(back)), 0);
	CHECK(!memcmp(back, pattern, sizeof(back)), "BAR2 not migrated");
	vfu_client_close(dst);

	CHECK_RET(vfu_client_mig_set_state(src, VFU_MIG_STATE_RUNNING), 0);
out_stop:
	tu_server_stop(&dst_srv);
	unlink(dst_srv.sock);
	free(stream);
}

static void test_no_extras(const char *dir)
{
	static const char *const args[] = { "--no-extras", NULL };
	struct vfu_feature_precopy_info pi;
	struct tu_server s;
	struct vfu_client *c;
	uint64_t len;

	if (tu_server_start_in(&s, dir, "basic.sock", testdev, args)) {
		CHECK(0, "basic server");
		return;
	}
	if (!vfu_client_connect(s.sock, NULL, &c)) {
		CHECK_RET(vfu_client_mig_set_state(c, VFU_MIG_STATE_PRE_COPY),
			  0);
		CHECK_RET(vfu_client_precopy_info(c, &pi), -ENOTSUP);
		CHECK_RET(vfu_client_mig_data_size(c, &len), -ENOTSUP);
		CHECK_RET(vfu_client_mig_set_state(c, VFU_MIG_STATE_RUNNING),
			  0);
		vfu_client_close(c);
	} else {
		CHECK(0, "connect basic");
	}
	tu_server_stop(&s);
	unlink(s.sock);
}

int main(int argc, char **argv)
{
	struct vfu_client_opts opts = { .max_data_xfer_size = XFER };
	struct tu_server srv;
	struct vfu_client *c;
	int base = count_open_fds();

	if (argc < 2) {
		fprintf(stderr, "usage: %s PROTO-TESTDEV\n", argv[0]);
		return 2;
	}
	testdev = argv[1];
	if (tu_server_start(&srv, testdev, NULL)) {
		fprintf(stderr, "cannot start %s\n", testdev);
		return 1;
	}
	if (vfu_client_connect(srv.sock, &opts, &c)) {
		fprintf(stderr, "cannot connect\n");
		tu_server_stop(&srv);
		tu_rmdir(srv.dir, srv.sock);
		return 1;
	}
	CHECK(vfu_client_caps(c)->max_msg_fds >= 1, "caps");

	test_info_and_regions(c);
	test_dma(c);
	test_features(c);
	test_migration(c, srv.dir);
	test_no_extras(srv.dir);

	vfu_client_close(c);
	CHECK_RET(WIFEXITED(tu_server_stop(&srv)), 1);
	tu_rmdir(srv.dir, srv.sock);
	CHECK_RET(count_open_fds(), base);

	if (tu_failures) {
		fprintf(stderr, "%d check(s) failed\n", tu_failures);
		return 1;
	}
	printf("client-e2e: all checks passed\n");
	return 0;
}
