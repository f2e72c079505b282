/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Bad input against the server (style-anchors B7 server list, B9 rows
 * 12-14), as raw messages: each must get an error reply with the
 * expected errno, the next valid request must still succeed, and fds
 * attached to refused messages must be closed (the server's fd count
 * returns to its baseline). Desynchronising headers (msg_size below the
 * header or above the limit) may end the connection; then the server
 * must accept the next one.
 * Usage: test-server-negative PATH-TO-proto-testdev
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ferry/util.h"
#include "proto_testdev.h"
#include "proto_util.h"

#define MAX_MAPS	4

static struct tu_server srv;
static int conn_fds;	/* server fd count with our one connection */

/* The server is alive and in sync: a valid request gets its reply. */
static void check_alive(struct vfu_conn *conn, const char *after)
{
	struct vfu_device_info info = { .argsz = sizeof(info) };
	struct vfu_msg reply;
	int ret;

	ret = tu_raw_call(conn, VFU_CMD_DEVICE_GET_INFO, &info, sizeof(info),
			  NULL, 0, &reply);
	CHECK(ret == 0, "server not serving after %s: %d", after, ret);
	if (!ret)
		vfu_msg_release(&reply);
}

static void expect(struct vfu_conn *conn, const char *what, uint16_t cmd,
		   const void *p, size_t len, const int *fds, size_t nr_fds,
		   int want)
{
	int ret = tu_raw_call(conn, cmd, p, len, fds, nr_fds, NULL);

	CHECK(ret == want, "%s: got %d, want %d", what, ret, want);
	check_alive(conn, what);
}

/* A lying header: error reply or hang-up, and the server lives on. */
static void test_bad_header(uint32_t msg_size, const char *what)
{
	struct vfu_hdr h = { .msg_id = 7, .cmd = VFU_CMD_DEVICE_GET_INFO,
			     .msg_size = msg_size };
	struct vfu_conn conn;
	struct vfu_msg msg;
	int ret;

	if (tu_raw_connect(srv.sock, &conn)) {
		CHECK(0, "connect for %s", what);
		return;
	}
	CHECK_RET(tu_raw_negotiate(&conn), 0);
	tu_raw_write(&conn, &h, sizeof(h), NULL, 0);
	ret = tu_raw_recv(&conn, &msg);
	if (!ret) {
		CHECK((msg.hdr.flags & VFU_F_ERROR) &&
		      msg.hdr.error_no == EINVAL, "%s: flags %#x errno %u",
		      what, msg.hdr.flags, msg.hdr.error_no);
		vfu_msg_release(&msg);
	} else {
		CHECK(ret == -EPIPE || ret == -ECONNRESET,
		      "%s: neither error reply nor hang-up: %d", what, ret);
	}
	vfu_conn_close(&conn);
	if (tu_raw_connect(srv.sock, &conn)) {
		CHECK(0, "server gone after %s", what);
		return;
	}
	CHECK_RET(tu_raw_negotiate(&conn), 0);
	check_alive(&conn, what);
	vfu_conn_close(&conn);
}

static void test_negotiation(void)
{
	struct vfu_conn conn;
	uint8_t buf[128];
	struct vfu_version v = { VFU_VERSION_MAJOR, VFU_VERSION_MINOR };
	static const char *const bad_json[] = {
		"garbage",
		"{\"capabilities\":{\"max_msg_fds\":\"8\"}}",
		"{\"capabilities\":{\"max_msg_fds\":-1}}",
		"{\"capabilities\":{\"max_msg_fds\":65}}",
		"{\"capabilities\":{\"max_data_xfer_size\":[]}}",
		"{\"capabilities\":7}",
	};

	if (tu_raw_connect(srv.sock, &conn)) {
		CHECK(0, "connect");
		return;
	}
	/* Commands before VERSION are refused. */
	{
		struct vfu_device_info info = { .argsz = sizeof(info) };

		CHECK_RET(tu_raw_call(&conn, VFU_CMD_DEVICE_GET_INFO, &info,
				      sizeof(info), NULL, 0, NULL), -EINVAL);
	}
	for (size_t i = 0; i < ARRAY_SIZE(bad_json); i++) {
		size_t jl = strlen(bad_json[i]) + 1;

		memcpy(buf, &v, sizeof(v));
		memcpy(buf + sizeof(v), bad_json[i], jl);
		CHECK(tu_raw_call(&conn, VFU_CMD_VERSION, buf, sizeof(v) + jl,
				  NULL, 0, NULL) == -EINVAL,
		      "bad JSON %zu accepted", i);
	}
	/* No NUL. */
	memcpy(buf + sizeof(v), "{}", 2);
	CHECK_RET(tu_raw_call(&conn, VFU_CMD_VERSION, buf, sizeof(v) + 2,
			      NULL, 0, NULL), -EINVAL);
	/* Short payload. */
	CHECK_RET(tu_raw_call(&conn, VFU_CMD_VERSION, buf, 2, NULL, 0, NULL),
		  -EINVAL);
	/* Major mismatch. */
	v.major = VFU_VERSION_MAJOR + 1;
	memcpy(buf, &v, sizeof(v));
	memcpy(buf + sizeof(v), "{}", 3);
	CHECK_RET(tu_raw_call(&conn, VFU_CMD_VERSION, buf, sizeof(v) + 3,
			      NULL, 0, NULL), -EINVAL);
	/* Good, then VERSION twice. */
	CHECK_RET(tu_raw_negotiate(&conn), 0);
	CHECK_RET(tu_raw_negotiate(&conn), -EINVAL);
	check_alive(&conn, "VERSION twice");
	vfu_conn_close(&conn);
}

static void test_headers_and_payloads(struct vfu_conn *conn)
{
	uint8_t zero[64] = { 0 };
	struct vfu_device_info info = { .argsz = sizeof(info) };
	struct vfu_msg msg;
	int efd[3];

	/* A "reply" from the client is no request: dropped, not served,
	 * and the next request's reply is the next thing we see. */
	CHECK_RET(tu_raw_send(conn, 0x77, VFU_CMD_DEVICE_GET_INFO,
			      VFU_F_TYPE_REPLY, &info, sizeof(info), NULL, 0),
		  0);
	check_alive(conn, "REPLY flag on a request");
	CHECK_RET(tu_raw_send(conn, 0x78, VFU_CMD_DEVICE_GET_INFO, 0x7,
			      &info, sizeof(info), NULL, 0), 0);
	CHECK_RET(tu_raw_recv(conn, &msg), 0);
	CHECK((msg.hdr.flags & VFU_F_ERROR) && msg.hdr.error_no == EINVAL &&
	      msg.hdr.msg_id == 0x78, "unknown message type not refused");
	vfu_msg_release(&msg);

	expect(conn, "unknown command", VFU_CMD_MAX, NULL, 0, NULL, 0,
	       -EINVAL);
	expect(conn, "command 14 (v1)", 14, zero, 16, NULL, 0, -EINVAL);
	expect(conn, "command 0", 0, NULL, 0, NULL, 0, -EINVAL);

	/* Missing or short payload, per command. */
	static const struct { uint16_t cmd; size_t len; } shorts[] = {
		{ VFU_CMD_DMA_MAP, 0 }, { VFU_CMD_DMA_MAP, 31 },
		{ VFU_CMD_DMA_UNMAP, 0 }, { VFU_CMD_DMA_UNMAP, 23 },
		{ VFU_CMD_DEVICE_GET_INFO, 0 }, { VFU_CMD_DEVICE_GET_INFO, 15 },
		{ VFU_CMD_DEVICE_GET_REGION_INFO, 0 },
		{ VFU_CMD_DEVICE_GET_REGION_INFO, 31 },
		{ VFU_CMD_DEVICE_GET_IRQ_INFO, 15 },
		{ VFU_CMD_DEVICE_SET_IRQS, 0 }, { VFU_CMD_DEVICE_SET_IRQS, 19 },
		{ VFU_CMD_REGION_READ, 0 }, { VFU_CMD_REGION_READ, 15 },
		{ VFU_CMD_REGION_WRITE, 15 },
		{ VFU_CMD_REGION_WRITE_MULTI, 0 },
		{ VFU_CMD_REGION_WRITE_MULTI, 7 },
		{ VFU_CMD_DEVICE_FEATURE, 0 }, { VFU_CMD_DEVICE_FEATURE, 7 },
	};
	for (size_t i = 0; i < ARRAY_SIZE(shorts); i++) {
		char what[64];

		snprintf(what, sizeof(what), "short %s (%zu bytes)",
			 vfu_cmd_name(shorts[i].cmd), shorts[i].len);
		expect(conn, what, shorts[i].cmd, zero, shorts[i].len, NULL, 0,
		       -EINVAL);
	}

	/* argsz too small. */
	{
		struct vfu_device_info bad = { .argsz = 8 };
		struct vfu_region_info ri = { .argsz = 16, .index = 0 };
		struct vfu_irq_info ii = { .argsz = 4, .index = 2 };

		expect(conn, "GET_INFO argsz 8", VFU_CMD_DEVICE_GET_INFO, &bad,
		       sizeof(bad), NULL, 0, -EINVAL);
		expect(conn, "REGION_INFO argsz 16",
		       VFU_CMD_DEVICE_GET_REGION_INFO, &ri, sizeof(ri), NULL,
		       0, -EINVAL);
		expect(conn, "IRQ_INFO argsz 4", VFU_CMD_DEVICE_GET_IRQ_INFO,
		       &ii, sizeof(ii), NULL, 0, -EINVAL);
	}
	/* argsz (max reply) larger than the data limit. */
	{
		struct vfu_mig_data md = { .argsz = UINT32_MAX, .size = 16 };
		struct vfu_device_feature df = {
			.argsz = 4, .flags = VFU_FEATURE_GET |
					      VFU_FEATURE_MIGRATION,
		};

		expect(conn, "feature argsz 4", VFU_CMD_DEVICE_FEATURE, &df,
		       sizeof(df), NULL, 0, -EINVAL);
		/* In RUNNING the state gate answers first: EBUSY. */
		expect(conn, "MIG_DATA_READ in RUNNING", VFU_CMD_MIG_DATA_READ,
		       &md, sizeof(md), NULL, 0, -EBUSY);
	}

	/* Too many fds, and fds on refused messages, are closed. */
	for (int i = 0; i < 3; i++)
		efd[i] = eventfd(0, EFD_CLOEXEC);
	expect(conn, "fds on a bad message", VFU_CMD_DEVICE_GET_INFO, zero, 4,
	       efd, 3, -EINVAL);
	expect(conn, "fds on GET_INFO", VFU_CMD_DEVICE_GET_INFO, &info,
	       sizeof(info), efd, 1, -EINVAL);
	{
		struct vfu_irq_set is = {
			.argsz = sizeof(is),
			.flags = VFU_IRQ_SET_DATA_EVENTFD |
				 VFU_IRQ_SET_ACTION_TRIGGER,
			.index = VFU_PCI_MSIX_IRQ_INDEX, .count = 1,
		};

		expect(conn, "3 fds for 1 vector", VFU_CMD_DEVICE_SET_IRQS,
		       &is, sizeof(is), efd, 3, -EINVAL);
		is.count = 3;
		expect(conn, "vectors beyond the index",
		       VFU_CMD_DEVICE_SET_IRQS, &is, sizeof(is), efd, 3,
		       -EINVAL);
		is.count = 1;
		is.flags |= VFU_IRQ_SET_ACTION_MASK;
		expect(conn, "two actions", VFU_CMD_DEVICE_SET_IRQS, &is,
		       sizeof(is), efd, 1, -EINVAL);
	}
	{
		int many[VFU_MAX_MSG_FDS_LIMIT];

		for (size_t i = 0; i < ARRAY_SIZE(many); i++)
			many[i] = efd[i % 3];
		expect(conn, "64 fds", VFU_CMD_DEVICE_GET_INFO, &info,
		       sizeof(info), many, ARRAY_SIZE(many), -EINVAL);
	}
	for (int i = 0; i < 3; i++)
		close(efd[i]);
	CHECK_RET(tu_wait_fds(srv.pid, conn_fds), conn_fds);
}

static void test_region_access(struct vfu_conn *conn)
{
	struct {
		struct vfu_region_access ra;
		uint8_t data[16];
	} __attribute__((packed)) w = { 0 };
	struct vfu_region_access ra = { .region = VFU_PCI_BAR0_REGION_INDEX };
	struct vfu_region_info ri = { .argsz = sizeof(ri) };
	struct vfu_msg reply;
	uint64_t before, after;

	/* The device's access counter shows refused requests never reach
	 * it (the read itself counts once). */
	ra.offset = TESTDEV_REG_ACCESSES;
	ra.count = 8;
	CHECK_RET(tu_raw_call(conn, VFU_CMD_REGION_READ, &ra, sizeof(ra),
			      NULL, 0, &reply), 0);
	memcpy(&before, reply.payload + sizeof(ra), 8);
	vfu_msg_release(&reply);

	ri.index = VFU_PCI_NUM_REGIONS;
	expect(conn, "region info index 9", VFU_CMD_DEVICE_GET_REGION_INFO,
	       &ri, sizeof(ri), NULL, 0, -EINVAL);
	/* Absent: size 0, flags 0, no fd -- VFIO's answer, which QEMU's
	 * client needs for BAR0-5. */
	ri.index = VFU_PCI_BAR1_REGION_INDEX;
	CHECK_RET(tu_raw_call(conn, VFU_CMD_DEVICE_GET_REGION_INFO, &ri,
			      sizeof(ri), NULL, 0, &reply), 0);
	CHECK(reply.payload_len == sizeof(ri) && !reply.nr_fds,
	      "absent region info: %zu bytes, %zu fds", reply.payload_len,
	      (size_t)reply.nr_fds);
	if (reply.payload_len == sizeof(ri)) {
		memcpy(&ri, reply.payload, sizeof(ri));
		CHECK(ri.index == VFU_PCI_BAR1_REGION_INDEX && !ri.size &&
		      !ri.flags, "absent region info: index %u size %llu "
		      "flags %#x", ri.index, (unsigned long long)ri.size,
		      ri.flags);
	}
	vfu_msg_release(&reply);

	ra = (struct vfu_region_access){ .region = 9, .count = 8 };
	expect(conn, "read region 9", VFU_CMD_REGION_READ, &ra, sizeof(ra),
	       NULL, 0, -EINVAL);
	ra = (struct vfu_region_access){ .offset = UINT64_MAX, .count = 8 };
	expect(conn, "read offset UINT64_MAX", VFU_CMD_REGION_READ, &ra,
	       sizeof(ra), NULL, 0, -EINVAL);
	ra = (struct vfu_region_access){ .offset = UINT64_MAX - 3,
					 .count = 8 };
	expect(conn, "offset+count wraps", VFU_CMD_REGION_READ, &ra,
	       sizeof(ra), NULL, 0, -EINVAL);
	ra = (struct vfu_region_access){ .offset = TESTDEV_BAR0_SIZE - 4,
					 .count = 8 };
	expect(conn, "read past region end", VFU_CMD_REGION_READ, &ra,
	       sizeof(ra), NULL, 0, -EINVAL);
	ra = (struct vfu_region_access){ .region = VFU_PCI_BAR2_REGION_INDEX,
					 .count = VFU_DEFAULT_MAX_DATA_XFER + 8 };
	expect(conn, "count > max xfer", VFU_CMD_REGION_READ, &ra, sizeof(ra),
	       NULL, 0, -EINVAL);
	ra = (struct vfu_region_access){ .count = 8 };
	expect(conn, "read with data", VFU_CMD_REGION_READ, &w, sizeof(w),
	       NULL, 0, -EINVAL);
	w.ra = (struct vfu_region_access){ .offset = TESTDEV_REG_SCRATCH,
					   .count = 8 };
	expect(conn, "write count < payload", VFU_CMD_REGION_WRITE, &w,
	       sizeof(w), NULL, 0, -EINVAL);
	w.ra.count = 24;
	expect(conn, "write count > payload", VFU_CMD_REGION_WRITE, &w,
	       sizeof(w), NULL, 0, -EINVAL);

	ra = (struct vfu_region_access){ .offset = TESTDEV_REG_ACCESSES,
					 .count = 8 };
	CHECK_RET(tu_raw_call(conn, VFU_CMD_REGION_READ, &ra, sizeof(ra),
			      NULL, 0, &reply), 0);
	memcpy(&after, reply.payload + sizeof(ra), 8);
	vfu_msg_release(&reply);
	/* check_alive() does GET_INFO only; +1 for the first read. */
	CHECK(after == before + 1, "device saw %lu refused accesses",
	      (unsigned long)(after - before - 1));

	/* count = 0 is allowed and returns nothing. */
	ra = (struct vfu_region_access){ .offset = 0, .count = 0 };
	CHECK_RET(tu_raw_call(conn, VFU_CMD_REGION_READ, &ra, sizeof(ra),
			      NULL, 0, &reply), 0);
	CHECK(reply.payload_len == sizeof(ra), "count 0 reply %zu bytes",
	      reply.payload_len);
	vfu_msg_release(&reply);
}

static void test_dma_maps(struct vfu_conn *conn)
{
	struct vfu_dma_map m = {
		.argsz = sizeof(m),
		.flags = VFU_DMA_FLAG_READ | VFU_DMA_FLAG_WRITE,
		.addr = 0x100000, .size = 0x10000,
	};
	struct vfu_dma_unmap u = { .argsz = sizeof(u) };
	int mfd = memfd_create("neg", MFD_CLOEXEC);

	CHECK(mfd >= 0 && ftruncate(mfd, 0x100000) == 0, "memfd");
	expect(conn, "map with fd", VFU_CMD_DMA_MAP, &m, sizeof(m), &mfd, 1,
	       0);
	m.addr = 0x108000;
	expect(conn, "overlapping map", VFU_CMD_DMA_MAP, &m, sizeof(m), &mfd,
	       1, -EEXIST);
	m.addr = 0x100000;
	expect(conn, "same map again", VFU_CMD_DMA_MAP, &m, sizeof(m), NULL,
	       0, -EEXIST);
	m.addr = 0x200000;
	m.flags = 0x80;
	expect(conn, "unknown map flags", VFU_CMD_DMA_MAP, &m, sizeof(m),
	       &mfd, 1, -EINVAL);
	m.flags = VFU_DMA_FLAG_READ;
	m.size = 0;
	expect(conn, "map size 0", VFU_CMD_DMA_MAP, &m, sizeof(m), NULL, 0,
	       -EINVAL);
	m.addr = UINT64_MAX - 0xfff;
	m.size = 0x2000;
	expect(conn, "map wraps", VFU_CMD_DMA_MAP, &m, sizeof(m), NULL, 0,
	       -EINVAL);
	m.size = 0x1000;
	for (uint64_t i = 1; i < MAX_MAPS; i++) {
		m.addr = 0x1000000 * (i + 1);
		expect(conn, "map up to the limit", VFU_CMD_DMA_MAP, &m,
		       sizeof(m), NULL, 0, 0);
	}
	m.addr = 0x90000000;
	expect(conn, "one map too many", VFU_CMD_DMA_MAP, &m, sizeof(m),
	       &mfd, 1, -ENOSPC);

	u.addr = 0x500000;
	u.size = 0x1000;
	expect(conn, "unmap unknown", VFU_CMD_DMA_UNMAP, &u, sizeof(u), NULL,
	       0, -ENOENT);
	u.addr = 0x100000;
	u.size = 0x8000;
	expect(conn, "unmap part of a map", VFU_CMD_DMA_UNMAP, &u, sizeof(u),
	       NULL, 0, -ENOENT);
	u.flags = VFU_DMA_UNMAP_FLAG_ALL;
	expect(conn, "unmap-all with an address", VFU_CMD_DMA_UNMAP, &u,
	       sizeof(u), NULL, 0, -EINVAL);
	u.flags = VFU_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP;
	expect(conn, "v1 dirty bitmap unmap", VFU_CMD_DMA_UNMAP, &u,
	       sizeof(u), NULL, 0, -EINVAL);
	u = (struct vfu_dma_unmap){ .argsz = sizeof(u),
				    .flags = VFU_DMA_UNMAP_FLAG_ALL };
	expect(conn, "unmap all", VFU_CMD_DMA_UNMAP, &u, sizeof(u), NULL, 0,
	       0);
	close(mfd);
	CHECK_RET(tu_wait_fds(srv.pid, conn_fds), conn_fds);
}

static int set_state(struct vfu_conn *conn, uint32_t st)
{
	struct {
		struct vfu_device_feature df;
		struct vfu_feature_mig_state s;
	} __attribute__((packed)) req = {
		.df = { .argsz = sizeof(req),
			.flags = VFU_FEATURE_SET |
				 VFU_FEATURE_MIG_DEVICE_STATE },
		.s = { .device_state = st, .data_fd = UINT32_MAX },
	};

	return tu_raw_call(conn, VFU_CMD_DEVICE_FEATURE, &req, sizeof(req),
			   NULL, 0, NULL);
}

static void test_mig_states(struct vfu_conn *conn)
{
	struct {
		struct vfu_mig_data md;
		uint8_t data[16];
	} __attribute__((packed)) w = { .md = { .argsz = 8, .size = 16 } };
	struct vfu_mig_data r = { .argsz = 8 + 64, .size = 64 };
	struct vfu_dma_map m = {
		.argsz = sizeof(m), .flags = VFU_DMA_FLAG_READ,
		.addr = 0x100000, .size = 0x1000,
	};

	expect(conn, "MIG_DATA_WRITE in RUNNING", VFU_CMD_MIG_DATA_WRITE, &w,
	       sizeof(w), NULL, 0, -EBUSY);
	expect(conn, "MIG_DATA_READ in RUNNING", VFU_CMD_MIG_DATA_READ, &r,
	       sizeof(r), NULL, 0, -EBUSY);
	CHECK_RET(set_state(conn, 0xabcd), -EINVAL);
	CHECK_RET(set_state(conn, VFU_MIG_STATE_ERROR), -EINVAL);
	CHECK_RET(set_state(conn, VFU_MIG_STATE_STOP_COPY), 0);
	expect(conn, "DMA_MAP in STOP_COPY", VFU_CMD_DMA_MAP, &m, sizeof(m),
	       NULL, 0, -EBUSY);
	expect(conn, "MIG_DATA_WRITE in STOP_COPY", VFU_CMD_MIG_DATA_WRITE,
	       &w, sizeof(w), NULL, 0, -EBUSY);
	CHECK_RET(set_state(conn, VFU_MIG_STATE_PRE_COPY), -EINVAL);
	/* Refused arc: still in STOP_COPY, still serving. */
	expect(conn, "MIG_DATA_READ in STOP_COPY", VFU_CMD_MIG_DATA_READ, &r,
	       sizeof(r), NULL, 0, 0);
	r.size = VFU_DEFAULT_MAX_DATA_XFER + 1;
	r.argsz = 8 + r.size;
	expect(conn, "MIG_DATA_READ > max xfer", VFU_CMD_MIG_DATA_READ, &r,
	       sizeof(r), NULL, 0, -EINVAL);
	r.size = 64;
	r.argsz = 8;
	expect(conn, "MIG_DATA_READ argsz < size", VFU_CMD_MIG_DATA_READ, &r,
	       sizeof(r), NULL, 0, -EINVAL);
	CHECK_RET(set_state(conn, VFU_MIG_STATE_RUNNING), 0);
	CHECK_RET(set_state(conn, VFU_MIG_STATE_RESUMING), 0);
	w.md.size = 32;
	expect(conn, "MIG_DATA_WRITE size != payload", VFU_CMD_MIG_DATA_WRITE,
	       &w, sizeof(w), NULL, 0, -EINVAL);
	CHECK_RET(set_state(conn, VFU_MIG_STATE_RUNNING), -EINVAL);
	{
		/* The device rejected the (empty) stream: RESET recovers. */
		CHECK_RET(tu_raw_call(conn, VFU_CMD_DEVICE_RESET, NULL, 0,
				      NULL, 0, NULL), 0);
		check_alive(conn, "reset after failed resume");
	}
}

int main(int argc, char **argv)
{
	static const char *const args[] = { "--max-maps=" "4", NULL };
	struct vfu_conn conn;
	int idle, base = count_open_fds();

	if (argc < 2) {
		fprintf(stderr, "usage: %s PROTO-TESTDEV\n", argv[0]);
		return 2;
	}
	if (tu_server_start(&srv, argv[1], args)) {
		fprintf(stderr, "cannot start %s\n", argv[1]);
		return 1;
	}
	idle = tu_settled_fds(srv.pid);

	test_negotiation();
	test_bad_header(8, "msg_size < header");
	test_bad_header(VFU_MAX_MSG_SIZE + 1, "msg_size > max");
	CHECK_RET(tu_wait_fds(srv.pid, idle), idle);

	if (tu_raw_connect(srv.sock, &conn) || tu_raw_negotiate(&conn)) {
		CHECK(0, "connect");
		goto out;
	}
	conn_fds = tu_settled_fds(srv.pid);
	test_headers_and_payloads(&conn);
	test_region_access(&conn);
	test_dma_maps(&conn);
	test_mig_states(&conn);
	CHECK_RET(tu_wait_fds(srv.pid, conn_fds), conn_fds);
	vfu_conn_close(&conn);
	CHECK_RET(tu_wait_fds(srv.pid, idle), idle);
out:
	tu_server_stop(&srv);
	tu_rmdir(srv.dir, srv.sock);
	CHECK_RET(count_open_fds(), base);
	if (tu_failures) {
		fprintf(stderr, "%d check(s) failed\n", tu_failures);
		return 1;
	}
	printf("server-negative: all checks passed\n");
	return 0;
}
