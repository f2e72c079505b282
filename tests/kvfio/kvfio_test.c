// SPDX-License-Identifier: BSD-3-Clause
/*
 * kvfio-test: ferry's kernel VFIO backend (lib/vdev_vfio_kernel.c)
 * against the Linux kernel's own VFIO, inside a TCG-booted 6.12 kernel
 * (tests/kvfio/run.sh builds it and runs this program as the guest's
 * payload). Devices: two mtty mediated devices (migration v2, an I/O
 * BAR, INTx) and QEMU's edu PCI device bound to vfio-pci behind an
 * emulated VT-d (an mmap'able BAR, MSI, DMA through the IOMMU).
 *
 * Each case prints "ok - NAME" or "not ok - NAME: why"; the exit status
 * is 0 only when every case passed. The live-update case re-executes
 * this program as the new owner (--cpr-child FD), which receives the
 * fds over a socket as ferry-vmm's successor would.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <json-c/json.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ferry/cpr_fds.h"
#include "ferry/log.h"
#include "ferry/mig_devs.h"
#include "ferry/util.h"
#include "ferry/vdev.h"

/* mtty: a 16550 per port, port 0 in BAR0 (I/O, 8 bytes). */
#define UART_TX		0
#define UART_IER	1
#define UART_FCR	2
#define UART_LCR	3
#define UART_MCR	4
#define UART_SCR	7
#define UART_LCR_DLAB	0x80
#define UART_IER_RDI	0x01
#define MTTY_MIG_FLAGS	(VFU_MIGRATION_STOP_COPY | VFU_MIGRATION_P2P | \
			 VFU_MIGRATION_PRE_COPY)

/* edu (QEMU docs/specs/edu.rst), BAR0 */
#define EDU_ID		0x00
#define EDU_LIVENESS	0x04
#define EDU_FACT	0x08
#define EDU_IRQ_RAISE	0x60
#define EDU_IRQ_ACK	0x64
#define EDU_DMA_SRC	0x80
#define EDU_DMA_DST	0x88
#define EDU_DMA_CNT	0x90
#define EDU_DMA_CMD	0x98
#define EDU_DMA_START	0x01
#define EDU_DMA_TO_RAM	0x02
#define EDU_BUF		0x40000		/* its 4 KiB buffer, device side */
#define EDU_DMA_LEN	2048u		/* QEMU 7.2 refuses a whole 4 KiB */
#define EDU_IOVA	0x200000u	/* below its 28-bit DMA mask */
#define EDU_MEM		(2u << 20)
#define PCI_COMMAND	0x04
#define PCI_CMD_MEM_MASTER	0x06
#define CFG_REGION	7		/* VFIO_PCI_CONFIG_REGION_INDEX */
#define MSI_IRQ		1		/* VFIO_PCI_MSI_IRQ_INDEX */
#define INTX_IRQ	0

#define WAIT_MS		5000

struct opts {
	bool iommufd;
	const char *mdev[2];
	unsigned nr_mdev;
	const char *pci;
	int cpr_child;			/* socket fd, -1 unless the child */
	bool child_reopens;		/* negative control: no adopting */
};

static struct opts o = { .cpr_child = -1 };
static char why[512];
static unsigned nr_ok, nr_fail;

static int failf(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	return -1;
}

#define EXPECT(cond, ...) do { if (!(cond)) return failf(__VA_ARGS__); } while (0)

static void run_case(const char *name, int (*fn)(void))
{
	why[0] = '\0';
	if (fn() == 0) {
		printf("ok - %s\n", name);
		nr_ok++;
	} else {
		printf("not ok - %s: %s\n", name, why);
		nr_fail++;
	}
	fflush(stdout);
}

static struct vdev *open_dev(const char *id, const char *path,
			     bool dirty_all, char *err, size_t errlen)
{
	struct vdev_kernel_opts ko = {
		.iommu = o.iommufd ? VDEV_KERNEL_IOMMUFD : VDEV_KERNEL_CONTAINER,
		.dirty_all_mapped = dirty_all,
	};
	struct vdev *d = NULL;

	if (vdev_vfio_kernel_open(id, path, &ko, &d, err, errlen))
		return NULL;
	return d;
}

#define OPEN(d, id, path, all) do { \
	char e_[256]; \
	d = open_dev(id, path, all, e_, sizeof(e_)); \
	EXPECT(d, "opening %s: %s", path, e_); \
} while (0)

static int rd8(struct vdev *d, uint32_t bar, uint64_t off, uint8_t *v)
{
	return vdev_region_read(d, bar, off, v, 1);
}

static int wr8(struct vdev *d, uint32_t bar, uint64_t off, uint8_t v)
{
	return vdev_region_write(d, bar, off, &v, 1);
}

static int rd32(struct vdev *d, uint32_t bar, uint64_t off, uint32_t *v)
{
	return vdev_region_read(d, bar, off, v, 4);
}

static int wr32(struct vdev *d, uint32_t bar, uint64_t off, uint32_t v)
{
	return vdev_region_write(d, bar, off, &v, 4);
}

static bool wait_eventfd(int efd, int ms)
{
	struct pollfd p = { .fd = efd, .events = POLLIN };
	uint64_t n;

	if (poll(&p, 1, ms) != 1)
		return false;
	return read(efd, &n, sizeof(n)) == sizeof(n) && n;
}

/* Guest RAM stand-in: a memfd, mapped here. */
struct guest_mem {
	int fd;
	uint8_t *p;
};

static int mem_new(struct guest_mem *m)
{
	m->fd = memfd_create("kvfio-ram", MFD_CLOEXEC);
	if (m->fd < 0 || ftruncate(m->fd, EDU_MEM))
		return -errno;
	m->p = mmap(NULL, EDU_MEM, PROT_READ | PROT_WRITE, MAP_SHARED, m->fd,
		    0);
	return m->p == MAP_FAILED ? -errno : 0;
}

static void mem_free(struct guest_mem *m)
{
	if (m->p && m->p != MAP_FAILED)
		munmap(m->p, EDU_MEM);
	close_safely(&m->fd);
}

/* ---- mtty: the UART state a migration must carry ---- */

struct uart {
	uint8_t scr, lcr, ier, mcr, dll, dlm;
	uint8_t fifo[4];
	unsigned nr_fifo;
};

/* Program port 0: divisor, line control, scratch, bytes in the FIFO. */
static int uart_program(struct vdev *d, const struct uart *u)
{
	int ret = 0;

	/* FIFO on and emptied (a reset does not touch the UART). */
	ret |= wr8(d, 0, UART_FCR, 0x07);
	ret |= wr8(d, 0, UART_LCR, UART_LCR_DLAB);
	ret |= wr8(d, 0, UART_TX, u->dll);
	ret |= wr8(d, 0, UART_IER, u->dlm);
	ret |= wr8(d, 0, UART_LCR, u->lcr);
	ret |= wr8(d, 0, UART_IER, u->ier);
	ret |= wr8(d, 0, UART_MCR, u->mcr);
	ret |= wr8(d, 0, UART_SCR, u->scr);
	for (unsigned i = 0; i < u->nr_fifo; i++)
		ret |= wr8(d, 0, UART_TX, u->fifo[i]);
	return ret ? -EIO : 0;
}

/* Read it back (draining the FIFO) and compare. The divisor cannot be
 * read back: mtty clears it whenever DLAB is set. */
static int uart_check(struct vdev *d, const struct uart *u, const char *who)
{
	uint8_t scr, lcr, ier, mcr, b;

	EXPECT(!rd8(d, 0, UART_SCR, &scr) && !rd8(d, 0, UART_LCR, &lcr) &&
	       !rd8(d, 0, UART_IER, &ier) && !rd8(d, 0, UART_MCR, &mcr),
	       "%s: reading registers", who);
	EXPECT(mcr == u->mcr, "%s: MCR %#x, want %#x", who, mcr, u->mcr);
	EXPECT(scr == u->scr, "%s: scratch %#x, want %#x", who, scr, u->scr);
	EXPECT(lcr == u->lcr, "%s: LCR %#x, want %#x", who, lcr, u->lcr);
	EXPECT((ier & 0x0f) == u->ier, "%s: IER %#x, want %#x", who, ier,
	       u->ier);
	for (unsigned i = 0; i < u->nr_fifo; i++) {
		EXPECT(!rd8(d, 0, UART_TX, &b), "%s: reading the FIFO", who);
		EXPECT(b == u->fifo[i], "%s: FIFO byte %u is %#x, want %#x",
		       who, i, b, u->fifo[i]);
	}
	return 0;
}

/* ---- moving a device's state through two device sets ---- */

struct stream {
	uint8_t *buf;
	size_t len, cap;
	unsigned init_done;
};

static int stream_emit(void *opaque, unsigned idx, enum mig_dev_rec rec,
		       const void *buf, size_t len)
{
	struct stream *s = opaque;

	if (rec == MIG_DEV_REC_INIT_DONE)
		s->init_done++;
	if (rec != MIG_DEV_REC_DATA)
		return 0;
	if (s->cap - s->len < len) {
		size_t cap = s->cap * 2 + len;
		uint8_t *p = realloc(s->buf, cap);

		if (!p)
			return -ENOMEM;
		s->buf = p;
		s->cap = cap;
	}
	memcpy(s->buf + s->len, buf, len);
	s->len += len;
	return 0;
}

static void devs_error(void *opaque, const char *msg)
{
	failf("%s", msg);
}

static const struct mig_devs_ops devs_ops = { .error = devs_error };

/* The saving side: src's whole stream (through PRE_COPY if asked) into
 * s; src ends in STOP. */
static int save_device(struct vdev *src, bool precopy, struct stream *s,
		       uint64_t *precopy_bytes)
{
	struct mig_devs set;
	int ret = mig_devs_init(&set, &src, 1, &devs_ops, NULL);

	if (ret)
		return ret;
	if (precopy) {
		ret = mig_devs_precopy_start(&set);
		for (int i = 0; !ret && i < 3; i++)
			ret = mig_devs_precopy(&set, UINT64_MAX, stream_emit, s);
		*precopy_bytes = set.dev[0].bytes_precopy;
	}
	if (!ret)
		ret = mig_devs_stop_copy(&set);
	if (!ret)
		ret = mig_devs_drain(&set, stream_emit, s);
	if (!ret)
		ret = mig_devs_set_all(&set, VFU_MIG_STATE_STOP);
	else
		mig_devs_finish(&set, VFU_MIG_STATE_RUNNING);
	mig_devs_fini(&set);
	return ret;
}

/* The loading side: dst resumes s and runs, or is reset on failure. */
static int load_device(struct vdev *dst, const uint8_t *buf, size_t len)
{
	struct mig_devs set;
	int ret = mig_devs_init(&set, &dst, 1, &devs_ops, NULL);

	if (ret)
		return ret;
	ret = mig_devs_resume_prepare(&set);
	if (!ret)
		ret = mig_devs_set_all(&set, VFU_MIG_STATE_RESUMING);
	if (!ret)
		ret = mig_devs_load(&set, 0, buf, len);
	if (!ret)
		ret = mig_devs_set_all(&set, VFU_MIG_STATE_STOP);
	if (!ret)
		ret = mig_devs_set_all(&set, VFU_MIG_STATE_RUNNING);
	if (ret)
		mig_devs_abort_resume(&set);
	mig_devs_fini(&set);
	return ret;
}

/* ---- mtty cases ---- */

static int t_open_errors(void)
{
	struct vdev_kernel_opts ko = { .iommu = VDEV_KERNEL_CONTAINER };
	struct vdev *d = NULL;
	char err[256] = "";
	int ret;

	ret = vdev_vfio_kernel_open("x", "/sys/bus/mdev/devices/nonexistent",
				    &ko, &d, err, sizeof(err));
	EXPECT(ret == -ENOENT && strstr(err, "nonexistent"),
	       "missing device: %d '%s'", ret, err);
	/* A device no VFIO driver has (the PCI host bridge). */
	ret = vdev_vfio_kernel_open("x", "/sys/bus/pci/devices/0000:00:00.0",
				    &ko, &d, err, sizeof(err));
	EXPECT(ret < 0 && strstr(err, "bind it to vfio-pci"),
	       "host bridge: %d '%s'", ret, err);
	return 0;
}

static int t_mtty_info(void)
{
	struct vfu_device_info di;
	struct vfu_irq_info ii;
	struct vdev_region r;
	struct vdev *d;
	uint64_t flags = 0;
	int ret;

	OPEN(d, "mtty0", o.mdev[0], false);
	ret = vdev_device_info(d, &di);
	if (ret || di.num_regions < 9 || di.num_irqs < 2) {
		vdev_close(d);
		return failf("device info: %d, %u regions, %u irqs", ret,
			     di.num_regions, di.num_irqs);
	}
	ret = vdev_region_info(d, 0, &r);
	if (ret || r.size != 8 || r.fd >= 0 ||
	    (r.flags & VFU_REGION_FLAG_MMAP) ||
	    (r.flags & (VFU_REGION_FLAG_READ | VFU_REGION_FLAG_WRITE)) !=
	    (VFU_REGION_FLAG_READ | VFU_REGION_FLAG_WRITE)) {
		vdev_region_release(&r);
		vdev_close(d);
		return failf("BAR0: %d size %llu flags %#x fd %d", ret,
			     (unsigned long long)r.size, r.flags, r.fd);
	}
	ret = vdev_irq_info(d, INTX_IRQ, &ii);
	if (!ret)
		ret = d->ops->mig_flags(d, &flags);
	vdev_close(d);
	EXPECT(!ret && ii.count == 1, "INTx info: %d count %u", ret, ii.count);
	EXPECT(flags == MTTY_MIG_FLAGS, "migration flags %#llx, want %#x",
	       (unsigned long long)flags, MTTY_MIG_FLAGS);
	return 0;
}

/* One byte into an empty FIFO (trigger level 1): a receive interrupt. */
static int intx_byte(struct vdev *d)
{
	uint8_t b;

	for (int i = 0; i < 64; i++)		/* drain */
		if (rd8(d, 0, UART_TX, &b))
			return -EIO;
	return wr8(d, 0, UART_TX, 0x42);
}

/* INTx masks itself when it fires: a second interrupt waits for the
 * unmask, then comes. */
static int t_mtty_intx(void)
{
	struct vdev *d;
	int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), ret;
	bool first = false, masked = true, after = false;

	EXPECT(efd >= 0, "eventfd: %s", strerror(errno));
	OPEN(d, "mtty0", o.mdev[0], false);
	ret = vdev_set_irqs(d, INTX_IRQ, 0, 1, &efd);
	/* FIFO on, trigger level 1, receive interrupt on. */
	if (!ret)
		ret = wr8(d, 0, UART_LCR, 0x03) | wr8(d, 0, UART_FCR, 0x07) |
		      wr8(d, 0, UART_IER, UART_IER_RDI) | intx_byte(d);
	first = !ret && wait_eventfd(efd, WAIT_MS);
	if (first && !(ret = intx_byte(d)))
		masked = !wait_eventfd(efd, 200);
	if (first && masked && !ret && !(ret = vdev_irq_unmask(d, INTX_IRQ,
							      -1)) &&
	    !(ret = intx_byte(d)))
		after = wait_eventfd(efd, WAIT_MS);
	wr8(d, 0, UART_IER, 0);
	vdev_set_irqs(d, INTX_IRQ, 0, 1, NULL);
	vdev_close(d);
	close(efd);
	EXPECT(!ret, "INTx: %s", strerror(-ret));
	EXPECT(first, "no INTx on the eventfd within %d ms", WAIT_MS);
	EXPECT(masked, "a second INTx came before the unmask");
	EXPECT(after, "no INTx after the unmask within %d ms", WAIT_MS);
	return 0;
}

static const struct uart uart_a = {
	.scr = 0x5a, .lcr = 0x03, .ier = 0x00, .mcr = 0x03, .dll = 0x0c,
	.dlm = 0x01,
	.fifo = { 'f', 'e', 'r', 'y' }, .nr_fifo = 4,
};
static const struct uart uart_b = {
	.scr = 0xa5, .lcr = 0x1b, .ier = 0x00, .mcr = 0x08, .dll = 0x30,
	.dlm = 0x00,
	.fifo = { 0x01, 0x02, 0xfe }, .nr_fifo = 3,
};

/* A -> B with STOP_COPY, then B -> A with PRE_COPY. */
static int t_mtty_migrate(void)
{
	struct stream s = { 0 };
	struct vdev *a, *b = NULL;
	uint64_t pre = 0;
	int ret;

	OPEN(a, "mtty0", o.mdev[0], false);
	b = open_dev("mtty1", o.mdev[1], false, why, sizeof(why));
	if (!b) {
		vdev_close(a);
		return -1;
	}
	/* Whatever an earlier case left: both RUNNING, registers clear. */
	ret = a->ops->reset(a);
	if (!ret)
		ret = b->ops->reset(b);
	if (!ret)
		ret = uart_program(a, &uart_a);
	if (ret) {
		failf("programming A: %s", strerror(-ret));
		goto out;
	}
	ret = save_device(a, false, &s, &pre);
	if (!ret)
		ret = load_device(b, s.buf, s.len);
	if (ret) {
		if (!why[0])
			failf("A -> B: %s", strerror(-ret));
		goto out;
	}
	ret = uart_check(b, &uart_a, "B after A -> B");
	if (ret)
		goto out;
	ret = uart_program(b, &uart_b);
	s.len = 0;
	if (!ret)
		ret = save_device(b, true, &s, &pre);
	if (!ret)
		ret = load_device(a, s.buf, s.len);
	if (ret) {
		if (!why[0])
			failf("B -> A: %s", strerror(-ret));
		goto out;
	}
	ret = pre ? 0 : failf("B -> A: no pre-copy data read");
	if (!ret)
		ret = s.init_done ? 0 : failf("B -> A: no INIT_DONE");
	if (!ret)
		ret = uart_check(a, &uart_b, "A after B -> A");
out:
	free(s.buf);
	vdev_close(a);
	vdev_close(b);
	return ret ? -1 : 0;
}

/* A stream the device must refuse, whole or cut short: the load fails,
 * the device is reset to RUNNING and works. */
static int t_mtty_corrupt(void)
{
	struct stream s = { 0 };
	struct vdev *a, *b = NULL;
	enum vfu_mig_state st = VFU_MIG_STATE_ERROR;
	uint64_t pre;
	int ret;

	OPEN(a, "mtty0", o.mdev[0], false);
	b = open_dev("mtty1", o.mdev[1], false, why, sizeof(why));
	if (!b) {
		vdev_close(a);
		return -1;
	}
	ret = a->ops->reset(a);
	if (!ret)
		ret = uart_program(a, &uart_a);
	if (!ret)
		ret = save_device(a, false, &s, &pre);
	if (ret || s.len < 16) {
		ret = failf("saving A: %d, %zu bytes", ret, s.len);
		goto out;
	}
	s.buf[0] ^= 0xff;			/* the magic */
	ret = load_device(b, s.buf, s.len);
	if (ret == 0) {
		ret = failf("B accepted a stream with a corrupt header");
		goto out;
	}
	s.buf[0] ^= 0xff;
	ret = load_device(b, s.buf, s.len / 2);
	if (ret == 0) {
		ret = failf("B accepted half a stream");
		goto out;
	}
	why[0] = '\0';
	ret = b->ops->mig_get_state(b, &st);
	if (ret || st != VFU_MIG_STATE_RUNNING) {
		ret = failf("B after the refusals: %d, state %s", ret,
			    vfu_mig_state_name(st));
		goto out;
	}
	ret = uart_program(b, &uart_b);
	if (!ret)
		ret = uart_check(b, &uart_b, "B after reset");
	/* and the whole stream still loads */
	if (!ret)
		ret = load_device(b, s.buf, s.len) ? failf("B refused the "
			"intact stream") : uart_check(b, &uart_a, "B");
out:
	free(s.buf);
	vdev_close(a);
	vdev_close(b);
	return ret ? -1 : 0;
}

/*
 * mtty's DMA log starts but cannot be read on Debian's kernel (no
 * CONFIG_IOMMUFD_DRIVER): the backend falls back -- to type1's tracking,
 * which reports only pages an mdev pinned (none), or, with iommufd, to
 * nothing, and refuses.
 */
static int t_mtty_dirty(void)
{
	struct vfu_dma_log_range range = { EDU_IOVA, EDU_MEM };
	uint64_t bm[EDU_MEM / VDEV_PAGE_SIZE / 64], pgsize = VDEV_PAGE_SIZE;
	struct guest_mem m = { .fd = -1 };
	struct vdev *d;
	int ret;

	memset(bm, 0xa5, sizeof(bm));
	OPEN(d, "mtty1", o.mdev[1], false);
	ret = mem_new(&m);
	if (!ret)
		ret = vdev_dma_map(d, EDU_IOVA, EDU_MEM, m.fd, 0,
				   VFU_DMA_MAP_FLAGS_ALL, m.p);
	if (ret) {
		ret = failf("mapping: %s", strerror(-ret));
		goto out;
	}
	ret = d->ops->log_start(d, &pgsize, &range, 1);
	if (o.iommufd) {
		ret = ret == -ENOTSUP ? 0 : failf("iommufd: log_start gave %d, "
						  "want ENOTSUP", ret);
		goto out;
	}
	if (ret || strcmp(d->log_method, "container")) {
		ret = failf("log_start: %d, method %s", ret,
			    d->log_method ? d->log_method : "none");
		goto out;
	}
	ret = d->ops->log_report(d, EDU_IOVA, EDU_MEM, pgsize, bm);
	for (unsigned i = 0; !ret && i < ARRAY_SIZE(bm); i++)
		if (bm[i])
			ret = failf("type1 reported pages an mdev never pinned "
				    "(word %u: %#llx)", i,
				    (unsigned long long)bm[i]);
	if (!ret)
		ret = d->ops->log_stop(d);
	if (!ret)
		ret = vdev_dma_unmap(d, EDU_IOVA, EDU_MEM);
out:
	vdev_close(d);
	mem_free(&m);
	return ret ? -1 : 0;
}

/* What the kernel refuses among requests from cur to want (mtty has
 * every optional state). */
static bool arc_refused(enum vfu_mig_state cur, enum vfu_mig_state want)
{
	if (want == VFU_MIG_STATE_ERROR)
		return true;
	return cur == VFU_MIG_STATE_STOP_COPY &&
	       (want == VFU_MIG_STATE_PRE_COPY ||
		want == VFU_MIG_STATE_PRE_COPY_P2P);
}

/* Every request between the states a device can be put in, from
 * RUNNING after a reset; and RESUMING, whose way out needs a stream. */
static int t_mtty_fsm(void)
{
	unsigned ok = 0, refused = 0;
	enum vfu_mig_state st;
	struct vdev *d;
	int ret = 0;

	OPEN(d, "mtty1", o.mdev[1], false);
	for (unsigned c = VFU_MIG_STATE_STOP; c < VFU_MIG_STATE_NR && !ret;
	     c++) {
		if (c == VFU_MIG_STATE_RESUMING)
			continue;
		for (unsigned w = 0; w < VFU_MIG_STATE_NR && !ret; w++) {
			int r;

			ret = d->ops->reset(d);
			if (!ret)
				ret = d->ops->mig_set_state(d, c);
			if (ret) {
				ret = failf("RUNNING -> %s: %s",
					    vfu_mig_state_name(c),
					    strerror(-ret));
				break;
			}
			r = d->ops->mig_set_state(d, w);
			if (arc_refused(c, w)) {
				if (r == 0)
					ret = failf("%s -> %s accepted",
						    vfu_mig_state_name(c),
						    vfu_mig_state_name(w));
				refused++;
				continue;
			}
			if (r == 0)
				r = d->ops->mig_get_state(d, &st);
			if (r || st != w)
				ret = failf("%s -> %s: %s (now %s)",
					    vfu_mig_state_name(c),
					    vfu_mig_state_name(w),
					    strerror(-r), vfu_mig_state_name(st));
			ok++;
		}
	}
	if (!ret) {
		/* RESUMING with nothing written cannot become STOP. */
		ret = d->ops->reset(d);
		if (!ret)
			ret = d->ops->mig_set_state(d, VFU_MIG_STATE_RESUMING);
		if (!ret && !d->ops->mig_set_state(d, VFU_MIG_STATE_STOP))
			ret = failf("RESUMING -> STOP without a stream "
				    "accepted");
		if (!ret)
			ret = d->ops->reset(d);
		if (!ret && (d->ops->mig_get_state(d, &st) ||
			     st != VFU_MIG_STATE_RUNNING))
			ret = failf("reset did not bring RUNNING back");
	}
	vdev_close(d);
	if (!ret)
		printf("# %u arcs taken, %u refused as the kernel must\n", ok,
		       refused);
	return ret ? -1 : 0;
}

/* ---- edu ---- */

static int edu_enable(struct vdev *d)
{
	uint16_t cmd;
	int ret = vdev_region_read(d, CFG_REGION, PCI_COMMAND, &cmd, 2);

	if (ret)
		return ret;
	cmd |= PCI_CMD_MEM_MASTER;
	return vdev_region_write(d, CFG_REGION, PCI_COMMAND, &cmd, 2);
}

static int edu_dma(struct vdev *d, uint64_t src, uint64_t dst, bool to_ram)
{
	uint32_t cmd = EDU_DMA_START | (to_ram ? EDU_DMA_TO_RAM : 0);
	int ret = wr32(d, 0, EDU_DMA_SRC, (uint32_t)src) |
		  wr32(d, 0, EDU_DMA_DST, (uint32_t)dst) |
		  wr32(d, 0, EDU_DMA_CNT, EDU_DMA_LEN) |
		  wr32(d, 0, EDU_DMA_CMD, cmd);

	if (ret)
		return -EIO;
	for (int ms = 0; ms < WAIT_MS; ms++) {
		if (rd32(d, 0, EDU_DMA_CMD, &cmd))
			return -EIO;
		if (!(cmd & EDU_DMA_START))
			return 0;
		usleep(1000);
	}
	return -ETIMEDOUT;
}

/* A pattern at ram + src through the device's buffer to ram + dst. */
static int edu_roundtrip(struct vdev *d, uint8_t *ram, uint32_t src,
			 uint32_t dst, uint8_t seed)
{
	int ret;

	for (unsigned i = 0; i < EDU_DMA_LEN; i++)
		ram[src + i] = (uint8_t)(seed + i * 7);
	memset(ram + dst, 0, EDU_DMA_LEN);
	ret = edu_dma(d, EDU_IOVA + src, EDU_BUF, false);
	if (!ret)
		ret = edu_dma(d, EDU_BUF, EDU_IOVA + dst, true);
	if (ret)
		return failf("edu DMA: %s", strerror(-ret));
	EXPECT(!memcmp(ram + src, ram + dst, EDU_DMA_LEN),
	       "DMA'd data differ (IOVA %#x -> device -> %#x)",
	       EDU_IOVA + src, EDU_IOVA + dst);
	return 0;
}

static int t_edu_bar(void)
{
	struct vdev_region r;
	struct vdev *d;
	uint32_t id = 0, v = 0;
	volatile uint32_t *bar = MAP_FAILED;
	int ret;

	OPEN(d, "edu", o.pci, false);
	ret = vdev_region_info(d, 0, &r);
	if (ret || r.size != (1u << 20) || r.fd < 0 || r.nr_mmap < 1) {
		ret = failf("BAR0: %d size %llu fd %d areas %u", ret,
			    (unsigned long long)r.size, r.fd, r.nr_mmap);
		goto out;
	}
	bar = mmap(NULL, VDEV_PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
		   r.fd, (off_t)(r.fd_offset + r.mmap[0].offset));
	if (bar == MAP_FAILED) {
		ret = failf("mmap of BAR0: %s", strerror(errno));
		goto out;
	}
	ret = rd32(d, 0, EDU_ID, &id);
	if (ret || (id & 0xff) != 0xed || bar[EDU_ID / 4] != id) {
		ret = failf("identification %#x (mapped %#x)", id,
			    bar[EDU_ID / 4]);
		goto out;
	}
	ret = wr32(d, 0, EDU_LIVENESS, 0x12345678);
	v = bar[EDU_LIVENESS / 4];
	if (ret || v != ~0x12345678u)
		ret = failf("liveness %#x through the mapping, want %#x", v,
			    ~0x12345678u);
out:
	if (bar != MAP_FAILED)
		munmap((void *)bar, VDEV_PAGE_SIZE);
	vdev_region_release(&r);
	vdev_close(d);
	return ret ? -1 : 0;
}

static int t_edu_msi(void)
{
	struct vfu_irq_info ii = { 0 };
	struct vdev *d;
	int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK), ret;
	bool got = false;

	EXPECT(efd >= 0, "eventfd: %s", strerror(errno));
	OPEN(d, "edu", o.pci, false);
	ret = vdev_irq_info(d, MSI_IRQ, &ii);
	if (!ret && ii.count < 1)
		ret = -ENODEV;
	if (!ret)
		ret = edu_enable(d);
	if (!ret)
		ret = vdev_set_irqs(d, MSI_IRQ, 0, 1, &efd);
	if (!ret)
		ret = wr32(d, 0, EDU_IRQ_RAISE, 0x1);
	if (!ret)
		got = wait_eventfd(efd, WAIT_MS);
	wr32(d, 0, EDU_IRQ_ACK, 0x1);
	vdev_set_irqs(d, MSI_IRQ, 0, 1, NULL);
	vdev_close(d);
	close(efd);
	EXPECT(!ret, "MSI set-up: %s (count %u)", strerror(-ret), ii.count);
	EXPECT(got, "no MSI on the eventfd within %d ms", WAIT_MS);
	return 0;
}

/* DMA through ferry's mapping, and what the dirty tracking says of it. */
static int t_edu_dma(void)
{
	const uint64_t pages = EDU_MEM / VDEV_PAGE_SIZE;
	struct vfu_dma_log_range range = { EDU_IOVA, EDU_MEM };
	uint64_t bm[EDU_MEM / VDEV_PAGE_SIZE / 64] = { 0 }, pgsize = 4096;
	struct guest_mem m = { .fd = -1 };
	unsigned set = 0;
	struct vdev *d;
	int ret;

	OPEN(d, "edu", o.pci, false);
	ret = mem_new(&m);
	if (!ret)
		ret = vdev_dma_map(d, EDU_IOVA, EDU_MEM, m.fd, 0,
				   VFU_DMA_MAP_FLAGS_ALL, m.p);
	if (!ret)
		ret = edu_enable(d);
	if (ret) {
		ret = failf("mapping: %s", strerror(-ret));
		goto out;
	}
	ret = d->ops->log_start(d, &pgsize, &range, 1);
	if (o.iommufd) {
		/* Neither edu nor VT-d (QEMU 7.2) tracks: refused. */
		if (ret != -ENOTSUP) {
			ret = failf("iommufd: log_start gave %d, want "
				    "ENOTSUP", ret);
			goto out;
		}
	} else if (ret || !d->log_method ||
		   strcmp(d->log_method, "container")) {
		ret = failf("log_start: %d, method %s", ret,
			    d->log_method ? d->log_method : "none");
		goto out;
	}
	ret = edu_roundtrip(d, m.p, 0x1000, 0x10000, 3);
	if (ret)
		goto out;
	if (!o.iommufd) {
		ret = d->ops->log_report(d, EDU_IOVA, EDU_MEM, pgsize, bm);
		for (uint64_t i = 0; i < pages; i++)
			set += !!(bm[i / 64] & (1ull << (i % 64)));
		if (ret || !(bm[0] & (1ull << 0x10))) {
			ret = failf("dirty report: %d, the DMA-written page "
				    "%s (%u of %llu pages set)", ret,
				    ret ? "?" : "missing", set,
				    (unsigned long long)pages);
			goto out;
		}
		printf("# type1 reported %u of %llu mapped pages dirty\n", set,
		       (unsigned long long)pages);
		d->ops->log_stop(d);
	}
	ret = vdev_dma_unmap(d, EDU_IOVA, EDU_MEM);
	if (ret)
		failf("unmap: %s", strerror(-ret));
out:
	vdev_close(d);
	mem_free(&m);
	return ret ? -1 : 0;
}

/* iommufd has no tracking here: the opt-in counts every mapped page. */
static int t_edu_all_mapped(void)
{
	struct vfu_dma_log_range range = { EDU_IOVA, EDU_MEM };
	uint64_t bm[EDU_MEM / VDEV_PAGE_SIZE / 64] = { 0 }, pgsize = 4096;
	struct guest_mem m = { .fd = -1 };
	struct vdev *d;
	unsigned set = 0;
	int ret;

	OPEN(d, "edu", o.pci, true);
	ret = mem_new(&m);
	if (!ret)
		ret = vdev_dma_map(d, EDU_IOVA, EDU_MEM / 2, m.fd, 0,
				   VFU_DMA_MAP_FLAGS_ALL, m.p);
	if (!ret)
		ret = d->ops->log_start(d, &pgsize, &range, 1);
	if (!ret)
		ret = d->ops->log_report(d, EDU_IOVA, EDU_MEM, pgsize, bm);
	for (unsigned i = 0; i < EDU_MEM / VDEV_PAGE_SIZE; i++)
		set += !!(bm[i / 64] & (1ull << (i % 64)));
	if (!ret && (strcmp(d->log_method, "all-mapped") ||
		     set != EDU_MEM / 2 / VDEV_PAGE_SIZE || bm[0] != ~0ull ||
		     bm[3] != ~0ull || bm[4] || bm[7]))
		ret = failf("method %s, %u pages dirty, want the %u mapped",
			    d->log_method, set, EDU_MEM / 2 / VDEV_PAGE_SIZE);
	else if (ret)
		failf("all-mapped: %s", strerror(-ret));
	vdev_close(d);
	mem_free(&m);
	return ret ? -1 : 0;
}

/* ---- live update at device level ---- */

#define CPR_FACT_IN	10u
#define CPR_FACT_OUT	3628800u
#define CPR_TIMEOUT_MS	20000

/* A mediated device cannot be handed over: type1 withholds
 * VFIO_UPDATE_VADDR from its container (and 6.12's iommufd has no
 * CHANGE_PROCESS) -- refused, before anything is withdrawn. */
static int t_cpr_mdev_refused(void)
{
	struct json_object *st = NULL;
	struct cpr_fds *reg = NULL;
	struct vdev *mt;
	uint8_t scr = 0;
	int ret;

	OPEN(mt, "mtty0", o.mdev[0], false);
	ret = cpr_fds_new(&reg);
	if (!ret)
		ret = mt->ops->cpr_save(mt, reg, "mtty.", &st);
	if (ret == -ENOTSUP && cpr_fds_count(reg) == 0 &&
	    !wr8(mt, 0, UART_SCR, 0x3c) && !rd8(mt, 0, UART_SCR, &scr) &&
	    scr == 0x3c)
		ret = 0;
	else
		ret = failf("cpr_save of an mdev gave %d (%u fds registered), "
			    "scratch %#x", ret, reg ? cpr_fds_count(reg) : 0,
			    scr);
	json_object_put(st);
	cpr_fds_free(reg);
	vdev_close(mt);
	return ret;
}

/*
 * The old owner: edu open with DMA mapped, its factorial computed;
 * hands the device, group and container fds and the RAM memfd to a new
 * process (this program again) and drops its own. The new owner checks
 * nothing was reset and DMA goes on through the inherited mapping.
 */
static int cpr_hand_over(bool child_reopens)
{
	struct json_object *st = NULL;
	struct guest_mem m = { .fd = -1 };
	struct cpr_fds *reg = NULL;
	int sv[2] = { -1, -1 }, ret, status;
	int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	struct vdev *edu;
	uint32_t fact = 0;
	const char *js;
	pid_t pid;

	EXPECT(efd >= 0, "eventfd: %s", strerror(errno));
	edu = open_dev("edu", o.pci, false, why, sizeof(why));
	if (!edu) {
		close(efd);
		return -1;
	}
	ret = mem_new(&m);
	if (!ret)
		ret = vdev_dma_map(edu, EDU_IOVA, EDU_MEM, m.fd, 0,
				   VFU_DMA_MAP_FLAGS_ALL, m.p);
	if (!ret)
		ret = edu_enable(edu);
	/* The MSI goes to an eventfd the new owner inherits: a device
	 * that was released or reset on the way has it torn down. */
	if (!ret)
		ret = vdev_set_irqs(edu, MSI_IRQ, 0, 1, &efd);
	if (!ret)
		ret = wr32(edu, 0, EDU_FACT, CPR_FACT_IN);
	for (int i = 0; !ret && i < WAIT_MS && fact != CPR_FACT_OUT; i++) {
		ret = rd32(edu, 0, EDU_FACT, &fact);
		usleep(1000);
	}
	if (ret || fact != CPR_FACT_OUT) {
		ret = failf("setting up: %s, factorial %u", strerror(-ret),
			    fact);
		goto out;
	}
	ret = cpr_fds_new(&reg);
	if (!ret)
		ret = edu->ops->cpr_save(edu, reg, "edu.", &st);
	if (o.iommufd) {
		/* 6.12's iommufd cannot move pinned pages to a new
		 * process: refused. */
		ret = ret == -ENOTSUP ? 0 : failf("iommufd: cpr_save gave %d",
						  ret);
		goto out;
	}
	if (!ret)
		ret = cpr_fds_add(reg, "mem", m.fd);
	if (!ret)
		ret = cpr_fds_add(reg, "msi", efd);
	if (ret) {
		ret = failf("cpr_save: %s", strerror(-ret));
		goto out;
	}
	js = json_object_to_json_string(st);
	ret = cpr_fds_set_blob(reg, js, strlen(js) + 1);
	if (!ret)
		ret = edu->ops->cpr_suspend(edu, 1000);
	if (ret || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv)) {
		ret = failf("suspending: %s", strerror(ret ? -ret : errno));
		goto out;
	}
	pid = fork();
	if (pid == 0) {
		char fd[16], *argv[] = { "/proc/self/exe", "--cpr-child", fd,
			"--pci", (char *)o.pci, child_reopens ?
			"--x-cpr-child-reopens" : NULL, NULL };

		snprintf(fd, sizeof(fd), "%d", sv[1]);
		fcntl(sv[1], F_SETFD, 0);
		execv("/proc/self/exe", argv);
		_exit(127);
	}
	close_safely(&sv[1]);
	ret = pid < 0 ? -errno : cpr_fds_send(reg, sv[0], CPR_TIMEOUT_MS);
	if (ret) {
		/* Nothing handed over: this process keeps the device. */
		edu->ops->cpr_resume(edu);
		if (pid > 0)
			waitpid(pid, NULL, 0);
		ret = failf("handing over: %s", strerror(-ret));
		goto out;
	}
	/* The old owner goes away: its fds close, the device lives on. */
	edu->ops->cpr_abandon(edu);
	edu = NULL;
	mem_free(&m);
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status))
		ret = failf("the new owner died (status %#x)", status);
	else if (child_reopens != (WEXITSTATUS(status) != 0))
		ret = failf(child_reopens ? "a new owner that reopened the "
			    "device passed the checks" : "the new owner failed "
			    "(exit %d; its output above)", WEXITSTATUS(status));
out:
	close(efd);
	json_object_put(st);
	cpr_fds_free(reg);
	close_safely(&sv[0]);
	close_safely(&sv[1]);
	vdev_close(edu);
	mem_free(&m);
	return ret ? -1 : 0;
}

/* The new owner gives up: said on stdout, gone at once (what it holds
 * is the kernel's to clean up, as for a VMM that died). */
static int child_fail(const char *fmt, ...)
{
	va_list ap;

	printf("# cpr-child: ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
	_exit(1);
}

static int t_cpr(void)
{
	return cpr_hand_over(false);
}

/* Negative control: a new owner that lets the handed-over fds go and
 * opens the device afresh (what a VMM without live update does): the
 * kernel released the device in between, and the checks must see it. */
static int t_cpr_control(void)
{
	return cpr_hand_over(true);
}

/* The new owner. */
static int cpr_child(int sock)
{
	struct json_object *st;
	struct cpr_fds *reg = NULL;
	struct guest_mem m = { .fd = -1 };
	struct vdev *edu = NULL;
	char err[256];
	uint32_t fact = 0;
	uint16_t cmd = 0;
	int efd;
	const char *js;
	size_t len;
	int ret;

	ret = cpr_fds_recv(sock, CPR_TIMEOUT_MS, &reg, err, sizeof(err));
	if (ret)
		return child_fail("receiving: %s", err);
	js = cpr_fds_blob(reg, &len);
	st = js ? json_tokener_parse(js) : NULL;
	if (!st)
		return child_fail("no state");
	m.fd = cpr_fds_take(reg, "mem");
	efd = cpr_fds_take(reg, "msi");
	m.p = mmap(NULL, EDU_MEM, PROT_READ | PROT_WRITE, MAP_SHARED, m.fd, 0);
	if (m.p == MAP_FAILED)
		return child_fail("mapping RAM: %s", strerror(errno));
	if (o.child_reopens) {
		cpr_fds_free(reg);		/* closes the device's fds */
		reg = NULL;
		edu = open_dev("edu", o.pci, false, err, sizeof(err));
		if (!edu)
			return child_fail("reopening: %s", err);
		ret = vdev_dma_map(edu, EDU_IOVA, EDU_MEM, m.fd, 0,
				   VFU_DMA_MAP_FLAGS_ALL, m.p);
		if (ret || edu_enable(edu))
			return child_fail("remapping after reopening");
	} else {
		if (vdev_vfio_kernel_adopt("edu", o.pci, reg, "edu.", st, &edu,
					   err, sizeof(err)))
			return child_fail("adopting: %s", err);
		ret = edu->ops->dma_adopt(edu, EDU_IOVA, EDU_MEM,
					  VFU_DMA_MAP_FLAGS_ALL, m.p);
		if (!ret)
			ret = edu->ops->cpr_resume(edu);
		if (ret)
			return child_fail("re-supplying the DMA address: %s",
					  strerror(-ret));
	}
	/* The interrupt set up by the old owner still arrives. */
	if (wr32(edu, 0, EDU_IRQ_RAISE, 0x1) || !wait_eventfd(efd, WAIT_MS))
		return child_fail("no MSI on the inherited eventfd");
	wr32(edu, 0, EDU_IRQ_ACK, 0x1);
	close(efd);
	/* Nothing reset: edu's factorial and its command register (a
	 * reset clears bus mastering) as the old owner left them. */
	if (rd32(edu, 0, EDU_FACT, &fact) || fact != CPR_FACT_OUT)
		return child_fail("edu factorial %u, want %u", fact,
				  CPR_FACT_OUT);
	if (vdev_region_read(edu, CFG_REGION, PCI_COMMAND, &cmd, 2) ||
	    (cmd & PCI_CMD_MEM_MASTER) != PCI_CMD_MEM_MASTER)
		return child_fail("edu command register %#x: reset?", cmd);
	/* DMA through the inherited mapping, into this process's view. */
	if (edu_roundtrip(edu, m.p, 0x3000, 0x20000, 11))
		return child_fail("%s", why);
	ret = vdev_dma_unmap(edu, EDU_IOVA, EDU_MEM);
	if (ret)
		return child_fail("unmapping: %s", strerror(-ret));
	vdev_close(edu);
	mem_free(&m);
	json_object_put(st);
	cpr_fds_free(reg);
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f,
"usage: kvfio-test --iommufd on|off --mdev PATH --mdev PATH --pci PATH\n"
"\n"
"Exercise ferry's kernel VFIO backend against the kernel's VFIO: two\n"
"mtty mdevs (sysfs paths) and an edu PCI device bound to vfio-pci.\n"
"Prints 'ok - CASE' / 'not ok - CASE: why'; exit 0 when all passed.\n");
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "iommufd", required_argument, NULL, 'i' },
		{ "mdev", required_argument, NULL, 'm' },
		{ "pci", required_argument, NULL, 'p' },
		{ "cpr-child", required_argument, NULL, 'c' },
		{ "x-cpr-child-reopens", no_argument, NULL, 'r' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int opt;

	log_init("kvfio-test");
	while ((opt = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
		switch (opt) {
		case 'i':
			o.iommufd = !strcmp(optarg, "on");
			break;
		case 'm':
			if (o.nr_mdev < 2)
				o.mdev[o.nr_mdev++] = optarg;
			break;
		case 'p':
			o.pci = optarg;
			break;
		case 'c':
			o.cpr_child = atoi(optarg);
			break;
		case 'r':
			o.child_reopens = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (o.cpr_child >= 0)
		return o.pci ? cpr_child(o.cpr_child) : 2;
	if (o.nr_mdev != 2 || !o.pci) {
		usage(stderr);
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("# kernel VFIO through %s\n",
	       o.iommufd ? "iommufd + device cdev" : "the legacy container");
	run_case("open-errors", t_open_errors);
	run_case("mtty-info", t_mtty_info);
	run_case("mtty-intx", t_mtty_intx);
	run_case("mtty-migrate", t_mtty_migrate);
	run_case("mtty-corrupt-stream", t_mtty_corrupt);
	run_case("mtty-fsm", t_mtty_fsm);
	run_case("mtty-dirty-tracking", t_mtty_dirty);
	run_case("edu-bar", t_edu_bar);
	run_case("edu-msi", t_edu_msi);
	run_case("edu-dma", t_edu_dma);
	if (o.iommufd)
		run_case("edu-dirty-all-mapped", t_edu_all_mapped);
	run_case("cpr-mdev-refused", t_cpr_mdev_refused);
	run_case("cpr", t_cpr);
	if (!o.iommufd)
		run_case("cpr-control-reopen-detected", t_cpr_control);
	printf("# %u passed, %u failed\n", nr_ok, nr_fail);
	return nr_fail ? 1 : 0;
}
