/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The server side of a live update, in one process: server A serves a
 * real client (libferry's) with DMA maps -- two cut from one memfd, one
 * from another, one by message -- three MSI-X eventfds, INTx masked
 * with a resample eventfd, and a DMA log with bits in it; A is held at a message boundary and saved; server B
 * is restored from the saved session and serves the same client on, A
 * leaving without a word. Then the parser: every truncation, every
 * field made wrong and every fd missing is refused with nothing taken,
 * and the fd count of the process ends where it started.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "ferry/cpr_fds.h"
#include "ferry/util.h"
#include "ferry/vfu_client.h"
#include "ferry/vfu_server.h"
#include "ferry/vfu_transport.h"

#define NR_MSIX		4u
#define MAX_MAPS	16u
#define RAM_SIZE	(64u << 10)
#define IOVA_A		0x10000ull	/* RAM [0, 16K) */
#define IOVA_B		0x20000ull	/* RAM [16K, 32K): the same file */
#define IOVA_C		0x40000ull	/* another memfd, 8K */
#define IOVA_MSG	0x80000ull	/* no fd: DMA messages */
#define TIMEOUT_MS	5000u

/* The saved session's layout (lib/vfu_server_cpr.c). */
#define OFF_VERSION	4
#define OFF_RESERVED	6
#define OFF_FLAGS	8
#define OFF_MIG_STATE	12
#define OFF_MSG_ID	16
#define OFF_XFER_MAX	48
#define OFF_MAX_MAPS	52
#define OFF_NR_FILES	56
#define OFF_NR_REGIONS	60
#define OFF_REGIONS	64
#define REGION_SIZE	32
#define R_IOVA		0
#define R_SIZE		8
#define R_OFFSET	16
#define R_PROT		24
#define R_FILE		28

static ssize_t t_access(void *dev, uint32_t index, uint64_t offset, void *buf,
			uint32_t count, bool is_write)
{
	if (!is_write)
		memset(buf, 0x5a, count);
	return count;
}

static int t_reset(void *dev)
{
	return 0;
}

static int t_set_state(void *dev, enum vfu_mig_state from,
		       enum vfu_mig_state to)
{
	return 0;
}

static ssize_t t_read_data(void *dev, void *buf, size_t len)
{
	return 0;
}

static ssize_t t_write_data(void *dev, const void *buf, size_t len)
{
	return (ssize_t)len;
}

static const struct vfu_mig_ops t_mig = {
	.flags = VFU_MIGRATION_STOP_COPY,
	.set_state = t_set_state,
	.read_data = t_read_data,
	.write_data = t_write_data,
};

static const struct vfu_device_ops t_ops = {
	.region_access = t_access,
	.reset = t_reset,
	.mig = &t_mig,
};

static struct vfu_server *server_new(void)
{
	struct vfu_device_desc desc = {
		.name = "cpr",
		.device_flags = VFU_DEVICE_FLAGS_RESET | VFU_DEVICE_FLAGS_PCI,
		.ops = &t_ops,
	};
	struct vfu_server_config cfg = { .max_dma_maps = MAX_MAPS };

	for (unsigned int i = 0; i < VFU_PCI_NUM_REGIONS; i++)
		desc.regions[i].fd = -1;
	desc.regions[VFU_PCI_BAR0_REGION_INDEX] = (struct vfu_region_desc){
		.size = 4096, .fd = -1,
		.flags = VFU_REGION_FLAG_READ | VFU_REGION_FLAG_WRITE,
	};
	desc.irq_count[VFU_PCI_INTX_IRQ_INDEX] = 1;
	desc.irq_count[VFU_PCI_MSIX_IRQ_INDEX] = NR_MSIX;
	return vfu_server_create(&desc, &cfg);
}

struct fx {
	int fds0;
	char dir[64], path[96];
	struct vfu_server *a;
	pthread_t thread_a;
	struct vfu_client *c;
	int ram_fd, other_fd, efd[3];
	int intx_fd, resample_fd;
	uint8_t *ram;
	uint8_t msg[4096];
	struct cpr_fds *saved;		/* A's fds, borrowed */
	uint8_t *blob;
	size_t len;
};

static void *run_thread(void *arg)
{
	vfu_server_run(arg);
	return NULL;
}

static int memfd_sized(size_t size)
{
	int fd = memfd_create("cpr-test", MFD_CLOEXEC);

	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)size), 0);
	return fd;
}

/* A owned copy of A's registry, as a new process receives it. */
static struct cpr_fds *received(struct fx *f)
{
	struct cpr_fds *r = NULL;
	char err[128];
	int sv[2];

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0,
				    sv), 0);
	assert_int_equal(cpr_fds_send(f->saved, sv[0], TIMEOUT_MS), 0);
	assert_int_equal(cpr_fds_recv(sv[1], TIMEOUT_MS, &r, err,
				      sizeof(err)), 0);
	close(sv[0]);
	close(sv[1]);
	return r;
}

/*
 * INTx UNMASK with the resample eventfd, which libferry's client has no
 * call for: sent raw on its socket between two of its requests (the
 * reply is dropped by its receiver as unexpected; the next request's
 * reply says this one was served).
 */
static void send_unmask_fd(struct fx *f, int fd)
{
	struct vfu_irq_set s = {
		sizeof(s), VFU_IRQ_SET_DATA_EVENTFD | VFU_IRQ_SET_ACTION_UNMASK,
		VFU_PCI_INTX_IRQ_INDEX, 0, 1,
	};
	struct vfu_hdr h = { .msg_id = 0xfff0,
			     .cmd = VFU_CMD_DEVICE_SET_IRQS };
	struct iovec iov = { .iov_base = &s, .iov_len = sizeof(s) };
	struct vfu_conn c;
	uint8_t buf[4];

	vfu_conn_init_sock(&c, vfu_client_fd(f->c));
	assert_int_equal(vfu_conn_send(&c, &h, &iov, 1, &fd, 1), 0);
	c.fd = -1;	/* borrowed */
	vfu_conn_close(&c);
	assert_int_equal(vfu_client_region_read(f->c, VFU_PCI_BAR0_REGION_INDEX,
						0, buf, 4), 0);
}

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	uint64_t pgsize = 4096;
	uint8_t x = 0x77;

	assert_non_null(f);
	f->fds0 = count_open_fds();
	snprintf(f->dir, sizeof(f->dir), "/tmp/ferry-srvcpr-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->path, sizeof(f->path), "%s/s", f->dir);
	f->a = server_new();
	assert_non_null(f->a);
	assert_int_equal(vfu_server_listen(f->a, f->path, NULL), 0);
	assert_int_equal(pthread_create(&f->thread_a, NULL, run_thread, f->a),
			 0);

	assert_int_equal(vfu_client_connect(f->path, NULL, &f->c), 0);
	f->ram_fd = memfd_sized(RAM_SIZE);
	f->other_fd = memfd_sized(8192);
	f->ram = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
		      f->ram_fd, 0);
	assert_true(f->ram != MAP_FAILED);
	assert_int_equal(vfu_client_dma_map(f->c, IOVA_A, 16384, f->ram_fd, 0,
					    VFU_DMA_FLAG_READ |
					    VFU_DMA_FLAG_WRITE, NULL), 0);
	assert_int_equal(vfu_client_dma_map(f->c, IOVA_B, 16384, f->ram_fd,
					    16384, VFU_DMA_FLAG_READ |
					    VFU_DMA_FLAG_WRITE, NULL), 0);
	assert_int_equal(vfu_client_dma_map(f->c, IOVA_C, 8192, f->other_fd, 0,
					    VFU_DMA_FLAG_READ, NULL), 0);
	assert_int_equal(vfu_client_dma_map(f->c, IOVA_MSG, sizeof(f->msg), -1,
					    0, VFU_DMA_FLAG_READ |
					    VFU_DMA_FLAG_WRITE, f->msg), 0);
	for (int i = 0; i < 3; i++) {
		f->efd[i] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		assert_true(f->efd[i] >= 0);
	}
	assert_int_equal(vfu_client_set_irqs(f->c, VFU_PCI_MSIX_IRQ_INDEX, 0,
					     3, f->efd), 0);
	/* INTx delivered once (so masked), a resample fd watched. */
	f->intx_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	f->resample_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	assert_true(f->intx_fd >= 0 && f->resample_fd >= 0);
	assert_int_equal(vfu_client_set_irqs(f->c, VFU_PCI_INTX_IRQ_INDEX, 0,
					     1, &f->intx_fd), 0);
	send_unmask_fd(f, f->resample_fd);
	assert_int_equal(vfu_server_irq_trigger(f->a, VFU_PCI_INTX_IRQ_INDEX,
						0), 1);
	assert_int_equal(vfu_client_dma_log_start(f->c, &pgsize, NULL, 0), 0);
	/* A device write before the update: its log bit must survive. */
	assert_int_equal(vfu_server_dma_write(f->a, IOVA_A + 100, &x, 1), 0);

	assert_int_equal(vfu_server_hold(f->a, TIMEOUT_MS), 0);
	assert_int_equal(cpr_fds_new(&f->saved), 0);
	assert_int_equal(vfu_server_save(f->a, f->saved, (void **)&f->blob,
					 &f->len), 0);
	/* listen, client, two files (not three maps), three MSI-X
	 * eventfds, INTx's and its resample fd */
	assert_int_equal(cpr_fds_count(f->saved), 9);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;

	if (f->a) {
		vfu_server_release(f->a);
		vfu_server_stop(f->a);
		pthread_join(f->thread_a, NULL);
	}
	if (f->c)
		vfu_client_close(f->c);
	vfu_server_destroy(f->a);
	cpr_fds_free(f->saved);
	free(f->blob);
	munmap(f->ram, RAM_SIZE);
	close_safely(&f->ram_fd);
	close_safely(&f->other_fd);
	for (int i = 0; i < 3; i++)
		close_safely(&f->efd[i]);
	close_safely(&f->intx_fd);
	close_safely(&f->resample_fd);
	unlink(f->path);
	rmdir(f->dir);
	assert_int_equal(count_open_fds(), f->fds0);
	free(f);
	return 0;
}

/* Restore blob (len bytes) into a fresh server: must fail, taking
 * nothing. */
static void expect_refused(struct fx *f, const uint8_t *blob, size_t len,
			   struct cpr_fds *r, const char *what)
{
	struct vfu_server *b = server_new();
	struct cpr_fds *own = r ? r : received(f);
	unsigned int n = cpr_fds_count(own), left = cpr_fds_untaken(own);
	char err[256] = "";
	int ret;

	assert_non_null(b);
	ret = vfu_server_restore(b, own, blob, len, NULL, err, sizeof(err));
	if (ret == 0)
		fail_msg("%s: restored", what);
	assert_true(err[0] != '\0');
	assert_int_equal(cpr_fds_untaken(own), left);
	assert_int_equal(cpr_fds_count(own), n);
	vfu_server_destroy(b);
	cpr_fds_free(own);
}

static void test_truncated(void **state)
{
	struct fx *f = *state;

	for (size_t n = 0; n < f->len; n++)
		expect_refused(f, f->blob, n, NULL, "truncated");
}

static void put32(uint8_t *p, uint32_t v)
{
	memcpy(p, &v, 4);
}

static void put16(uint8_t *p, uint16_t v)
{
	memcpy(p, &v, 2);
}

static void put64(uint8_t *p, uint64_t v)
{
	memcpy(p, &v, 8);
}

static void test_fields(void **state)
{
	struct fx *f = *state;
	uint8_t *bad = malloc(f->len + 1);
	uint32_t nr;
	size_t log_off, irq_off;
	uint8_t *r0, *r1;

	assert_non_null(bad);
	memcpy(&nr, f->blob + OFF_NR_REGIONS, 4);
	assert_int_equal(nr, 4);
	log_off = OFF_REGIONS + nr * REGION_SIZE;
	/* nr, a count per index, INTx's vector, MSI-X's, the INTx word */
	irq_off = f->len - (4 + VFU_PCI_NUM_IRQS * 4 + 1 + NR_MSIX + 4);

#define MUTATE(what, stmt) do {						\
		memcpy(bad, f->blob, f->len);				\
		r0 = bad + OFF_REGIONS;					\
		r1 = r0 + REGION_SIZE;					\
		stmt;							\
		expect_refused(f, bad, f->len, NULL, what);		\
	} while (0)

	MUTATE("magic", bad[0] ^= 1);
	MUTATE("version", bad[OFF_VERSION]++);
	MUTATE("reserved", bad[OFF_RESERVED] = 1);
	MUTATE("unknown flag", bad[OFF_FLAGS] |= 0x80);
	MUTATE("negotiated without client", put32(bad + OFF_FLAGS, 2));
	MUTATE("migration state 8", put32(bad + OFF_MIG_STATE, 8));
	MUTATE("message id", put32(bad + OFF_MSG_ID, 0x10000));
	MUTATE("xfer 0", put32(bad + OFF_XFER_MAX, 0));
	MUTATE("xfer too big", put32(bad + OFF_XFER_MAX, 0xffffffff));
	MUTATE("max maps", put32(bad + OFF_MAX_MAPS, MAX_MAPS + 1));
	MUTATE("max maps below the regions", put32(bad + OFF_MAX_MAPS, 3));
	MUTATE("files", put32(bad + OFF_NR_FILES, 100000));
	MUTATE("regions", put32(bad + OFF_NR_REGIONS, 5));
	MUTATE("region size 0", put64(r0 + R_SIZE, 0));
	MUTATE("region wraps", put64(r0 + R_IOVA, ~0ull - 100));
	MUTATE("offset wraps", put64(r0 + R_OFFSET, ~0ull - 100));
	MUTATE("offset past the file", put64(r1 + R_OFFSET, RAM_SIZE));
	MUTATE("prot", put32(r0 + R_PROT, 4));
	MUTATE("file out of range", put32(r0 + R_FILE, 7));
	MUTATE("file -2", put32(r0 + R_FILE, (uint32_t)-2));
	MUTATE("regions out of order", put64(r1 + R_IOVA, IOVA_A));
	MUTATE("regions overlap", put64(r1 + R_IOVA, IOVA_A + 4096));
	MUTATE("log page size", put64(bad + log_off, 4095));
	MUTATE("log ranges", put32(bad + log_off + 8, 300));
	MUTATE("log words", put64(bad + log_off + 12, 2));
	MUTATE("irq indexes", put32(bad + irq_off, VFU_PCI_NUM_IRQS + 1));
	MUTATE("irq count", put32(bad + irq_off + 4 +
				  VFU_PCI_MSIX_IRQ_INDEX * 4 + 1, NR_MSIX + 1));
	/* nr, counts of indexes 0..2 and INTx's flag, then MSI-X's flags:
	 * vector 3's. */
	MUTATE("irq flag 2", bad[irq_off + 4 + 3 * 4 + 1 + 3] = 2);
	MUTATE("intx flag", put32(bad + f->len - 4, 4 | 3));
	/* Version 1 has no INTx word: a version 2 blob without it is short,
	 * a version 1 blob with it is long. */
	MUTATE("version 1 with the INTx word", put16(bad + OFF_VERSION, 1));
	memcpy(bad, f->blob, f->len);
	expect_refused(f, bad, f->len - 4, NULL, "version 2 without INTx");
	memcpy(bad, f->blob, f->len);
	bad[f->len] = 0;
	expect_refused(f, bad, f->len + 1, NULL, "trailing byte");
#undef MUTATE
	free(bad);
}

static void test_missing_fd(void **state)
{
	static const char *const names[] = {
		"listen", "client", "dma.0", "dma.1", "irq.2.0", "irq.2.2",
		"irq.0.0", "intx.resample",
	};
	struct fx *f = *state;

	for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
		struct cpr_fds *r = received(f);
		int fd = cpr_fds_take(r, names[i]);

		assert_true(fd >= 0);
		close(fd);
		expect_refused(f, f->blob, f->len, r, names[i]);
	}
}

/* The saved registry with one name on an fd of the wrong kind (guest
 * RAM's memfd), as received by a new process. */
static struct cpr_fds *received_swapped(struct fx *f, const char *swap)
{
	static const char *const names[] = {
		"listen", "client", "dma.0", "dma.1", "irq.2.0", "irq.2.1",
		"irq.2.2", "irq.0.0", "intx.resample",
	};
	struct cpr_fds *b, *r = NULL;
	char err[128];
	int sv[2];

	assert_int_equal(cpr_fds_new(&b), 0);
	for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
		int fd = cpr_fds_peek(f->saved, names[i]);

		assert_true(fd >= 0);
		assert_int_equal(cpr_fds_add(b, names[i], strcmp(names[i],
					swap) ? fd : f->ram_fd), 0);
	}
	assert_int_equal(cpr_fds_count(b), cpr_fds_count(f->saved));
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0,
				    sv), 0);
	assert_int_equal(cpr_fds_send(b, sv[0], TIMEOUT_MS), 0);
	assert_int_equal(cpr_fds_recv(sv[1], TIMEOUT_MS, &r, err,
				      sizeof(err)), 0);
	close(sv[0]);
	close(sv[1]);
	cpr_fds_free(b);
	return r;
}

/* Sockets and eventfds are checked for what they are before anything
 * is taken: a memfd in their place is refused. */
static void test_wrong_kind_fd(void **state)
{
	static const char *const names[] = {
		"listen", "client", "irq.2.0", "irq.0.0", "intx.resample",
	};
	struct fx *f = *state;

	for (size_t i = 0; i < ARRAY_SIZE(names); i++)
		expect_refused(f, f->blob, f->len,
			       received_swapped(f, names[i]), names[i]);
	/* The control: the same registry, nothing swapped, restores. */
	{
		struct vfu_server *b = server_new();
		struct cpr_fds *r = received_swapped(f, "");
		char err[256] = "";

		assert_non_null(b);
		assert_int_equal(vfu_server_restore(b, r, f->blob, f->len, NULL,
						    err, sizeof(err)), 0);
		vfu_server_destroy(b);
		cpr_fds_free(r);
	}
}

/* A version 1 session (before the INTx word) still loads: INTx comes
 * unmasked and without a resample fd, as a version 1 server kept it. */
static void test_version1(void **state)
{
	struct fx *f = *state;
	struct vfu_server *b = server_new();
	struct cpr_fds *r = received(f);
	uint8_t *v1 = malloc(f->len);
	char err[256];
	int fd;

	assert_non_null(b);
	assert_non_null(v1);
	memcpy(v1, f->blob, f->len - 4);
	put16(v1 + OFF_VERSION, 1);
	assert_int_equal(vfu_server_restore(b, r, v1, f->len - 4, NULL, err,
					    sizeof(err)), 0);
	/* Not masked: B delivers (to the same eventfd). */
	assert_int_equal(vfu_server_irq_trigger(b, VFU_PCI_INTX_IRQ_INDEX, 0),
			 1);
	assert_int_equal(cpr_fds_untaken(r), 1);
	fd = cpr_fds_take(r, "intx.resample");
	assert_true(fd >= 0);
	close(fd);
	cpr_fds_free(r);
	vfu_server_destroy(b);
	free(v1);
}

/* The intact session: B serves the same client on, A leaves quietly. */
static void test_takeover(void **state)
{
	struct fx *f = *state;
	struct vfu_server *b = server_new();
	struct cpr_fds *r = received(f);
	uint64_t bitmap = 0, ev = 0;
	pthread_t thread_b;
	uint8_t yz[2] = { 'y', 'z' }, m = 'm', buf[4];
	char err[256];

	assert_non_null(b);
	assert_int_equal(vfu_server_restore(b, r, f->blob, f->len, NULL, err,
					    sizeof(err)), 0);
	assert_int_equal(cpr_fds_untaken(r), 0);
	cpr_fds_free(r);
	/* A: gone without touching the session. */
	vfu_server_handover(f->a);
	pthread_join(f->thread_a, NULL);
	vfu_server_destroy(f->a);
	f->a = NULL;
	assert_int_equal(pthread_create(&thread_b, NULL, run_thread, b), 0);

	/* The client never reconnected, never negotiated again. */
	assert_int_equal(vfu_client_region_read(f->c, VFU_PCI_BAR0_REGION_INDEX,
						0, buf, 4), 0);
	assert_int_equal(buf[0], 0x5a);
	/* B's DMA reaches the same files, and the client by message. */
	assert_int_equal(vfu_server_dma_write(b, IOVA_B + 8, yz, 2), 0);
	assert_memory_equal(f->ram + 16384 + 8, yz, 2);
	assert_int_equal(vfu_server_dma_write(b, IOVA_MSG + 5, &m, 1), 0);
	assert_int_equal(f->msg[5], 'm');
	assert_int_equal(vfu_server_dma_read(b, IOVA_C, buf, 4), 0);
	assert_int_equal(vfu_server_dma_write(b, IOVA_C, buf, 4), -EACCES);
	/* The eventfds. */
	assert_int_equal(vfu_server_irq_trigger(b, VFU_PCI_MSIX_IRQ_INDEX, 1),
			 1);
	assert_int_equal(vfu_server_irq_trigger(b, VFU_PCI_MSIX_IRQ_INDEX, 3),
			 0);
	assert_int_equal(read(f->efd[1], &ev, sizeof(ev)), sizeof(ev));
	assert_int_equal(ev, 1);
	/* INTx came masked; B watches the resample fd and unmasks. */
	assert_int_equal(vfu_server_irq_trigger(b, VFU_PCI_INTX_IRQ_INDEX, 0),
			 0);
	ev = 1;
	assert_int_equal(write(f->resample_fd, &ev, sizeof(ev)), sizeof(ev));
	for (int i = 0; i < 2000 && vfu_server_irq_trigger(
			b, VFU_PCI_INTX_IRQ_INDEX, 0) != 1; i++)
		usleep(1000);
	assert_int_equal(read(f->intx_fd, &ev, sizeof(ev)), sizeof(ev));
	assert_int_equal(ev, 2);	/* A's delivery, then B's */
	/* The log, with A's bit and B's. */
	assert_int_equal(vfu_client_dma_log_report(f->c, IOVA_A, 4096, 4096,
						   &bitmap), 0);
	assert_int_equal(bitmap, 1);
	assert_int_equal(vfu_client_dma_log_report(f->c, IOVA_B, 4096, 4096,
						   &bitmap), 0);
	assert_int_equal(bitmap, 1);

	vfu_client_close(f->c);
	f->c = NULL;
	vfu_server_stop(b);
	pthread_join(thread_b, NULL);
	vfu_server_destroy(b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_truncated, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_fields, setup, teardown),
		cmocka_unit_test_setup_teardown(test_wrong_kind_fd, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_missing_fd, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_version1, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_takeover, setup,
						teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
