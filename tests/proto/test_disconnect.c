/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Disconnect hygiene (style-anchors B9 row 17).
 *  - A client that maps memory (with an fd), assigns eventfds and goes
 *    away: the server closes everything it got from that client (its fd
 *    count returns to the idle baseline), keeps the device state, and
 *    serves the next client.
 *  - A server killed under a waiting request: the waiter gets -ENOTCONN
 *    (not a timeout), later calls fail fast, the disconnect callback
 *    runs exactly once.
 * Usage: test-disconnect PATH-TO-proto-testdev
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ferry/util.h"
#include "ferry/vfu_client.h"
#include "proto_testdev.h"
#include "proto_util.h"

#define MEM_SIZE	(64u * 1024)

static atomic_int disconnects;

static void on_disconnect(void *opaque)
{
	atomic_fetch_add(&disconnects, 1);
}

/* 1 if pid has a mapping whose path contains name, 0 if not. */
static int maps_holding(pid_t pid, const char *name)
{
	char path[64], line[512];
	FILE *f;
	int found = 0;

	snprintf(path, sizeof(path), "/proc/%d/maps", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f))
		if (strstr(line, name))
			found = 1;
	fclose(f);
	return found;
}

static void test_client_leaves(struct tu_server *srv)
{
	struct vfu_client *c;
	struct vfu_client_region r;
	uint64_t v = 0x5eed;
	int idle, busy, mfd, efd[2];

	/* Let the server finish with the start-up probe connection. */
	idle = tu_settled_fds(srv->pid);
	CHECK(idle > 0, "cannot count server fds");

	if (vfu_client_connect(srv->sock, NULL, &c)) {
		CHECK(0, "connect");
		return;
	}
	mfd = memfd_create("disc", MFD_CLOEXEC);
	CHECK(mfd >= 0 && ftruncate(mfd, MEM_SIZE) == 0, "memfd");
	efd[0] = eventfd(0, EFD_CLOEXEC);
	efd[1] = eventfd(0, EFD_CLOEXEC);
	CHECK_RET(vfu_client_dma_map(c, 0x100000, MEM_SIZE, mfd, 0,
				     VFU_DMA_FLAG_READ | VFU_DMA_FLAG_WRITE,
				     NULL), 0);
	CHECK_RET(vfu_client_set_irqs(c, VFU_PCI_MSIX_IRQ_INDEX, 0, 2, efd), 0);
	CHECK_RET(vfu_client_region_write(c, VFU_PCI_BAR0_REGION_INDEX,
					  TESTDEV_REG_SCRATCH, &v, sizeof(v)),
		  0);
	CHECK_RET(vfu_client_region_info(c, VFU_PCI_BAR2_REGION_INDEX, &r), 0);
	vfu_client_region_release(&r);
	busy = tu_count_fds(srv->pid);
	/* connection + 2 eventfds; the memfd as an fd or only a mapping */
	CHECK(busy >= idle + 3, "server holds %d fds, idle %d", busy, idle);
	CHECK_RET(maps_holding(srv->pid, "/memfd:disc"), 1);

	vfu_client_close(c);
	close(mfd);
	close(efd[0]);
	close(efd[1]);
	CHECK_RET(tu_wait_fds(srv->pid, idle), idle);
	for (int i = 0; i < 1000 && maps_holding(srv->pid, "/memfd:disc"); i++)
		usleep(1000);
	CHECK_RET(maps_holding(srv->pid, "/memfd:disc"), 0);

	/* The next client finds the device state kept. */
	if (vfu_client_connect(srv->sock, NULL, &c)) {
		CHECK(0, "reconnect");
		return;
	}
	v = 0;
	CHECK_RET(vfu_client_region_read(c, VFU_PCI_BAR0_REGION_INDEX,
					 TESTDEV_REG_SCRATCH, &v, sizeof(v)),
		  0);
	CHECK_RET(v, 0x5eed);
	/* Nothing of the old client's maps survived. */
	CHECK_RET(vfu_client_dma_unmap(c, 0x100000, MEM_SIZE), -ENOENT);
	vfu_client_close(c);
	CHECK_RET(tu_wait_fds(srv->pid, idle), idle);
}

struct waiter {
	struct vfu_client *c;
	int ret;
};

static void *wait_thread(void *arg)
{
	struct waiter *w = arg;
	struct vfu_device_info info;

	w->ret = vfu_client_device_info(w->c, &info);
	return NULL;
}

static void test_server_dies(struct tu_server *srv)
{
	struct vfu_client_opts opts = { .timeout_ms = 60000 };
	struct waiter w[3];
	pthread_t th[3];
	struct vfu_client *c;
	struct vfu_device_info info;

	if (vfu_client_connect(srv->sock, &opts, &c)) {
		CHECK(0, "connect");
		return;
	}
	vfu_client_set_disconnect_cb(c, on_disconnect, NULL);
	/* Freeze the server so the requests stay pending, then kill it. */
	kill(srv->pid, SIGSTOP);
	for (int i = 0; i < 3; i++) {
		w[i] = (struct waiter){ .c = c, .ret = 1 };
		pthread_create(&th[i], NULL, wait_thread, &w[i]);
	}
	usleep(100 * 1000);
	tu_server_kill(srv);
	for (int i = 0; i < 3; i++) {
		pthread_join(th[i], NULL);
		/* -ENOTCONN, not -ETIMEDOUT after a minute. */
		CHECK_RET(w[i].ret, -ENOTCONN);
	}
	CHECK(!vfu_client_connected(c), "still connected");
	CHECK_RET(vfu_client_device_info(c, &info), -ENOTCONN);
	for (int i = 0; i < 1000 && !atomic_load(&disconnects); i++)
		usleep(1000);
	CHECK_RET(atomic_load(&disconnects), 1);
	vfu_client_close(c);
	CHECK_RET(atomic_load(&disconnects), 1);
}

int main(int argc, char **argv)
{
	struct tu_server srv;
	int base = count_open_fds();

	if (argc < 2) {
		fprintf(stderr, "usage: %s PROTO-TESTDEV\n", argv[0]);
		return 2;
	}
	if (tu_server_start(&srv, argv[1], NULL)) {
		fprintf(stderr, "cannot start %s\n", argv[1]);
		return 1;
	}
	test_client_leaves(&srv);
	test_server_dies(&srv);
	tu_server_kill(&srv);
	tu_rmdir(srv.dir, srv.sock);
	CHECK_RET(count_open_fds(), base);

	if (tu_failures) {
		fprintf(stderr, "%d check(s) failed\n", tu_failures);
		return 1;
	}
	printf("disconnect: all checks passed\n");
	return 0;
}
