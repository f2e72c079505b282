/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The PCI host bridge and the vfio-user proxy against a real vfio-user
 * server (libferry's, in a child process, hosting a small fake device)
 * and a recording stand-in for the VM core: config mechanism #1, BAR
 * placement/sizing/moving, trapped and direct BAR access, trap while
 * saving, MSI-X routing/masking/pending, DMA to guest RAM, an I/O BAR
 * reached through ports, the read-only expansion ROM, server death, and
 * creation failures. No KVM needed.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <json-c/json.h>

#include "ferry/util.h"
#include "ferry/vfu_server.h"

#include "pci.h"
#include "test_passthrough_fakevm.h"
#include "ferry/vdev.h"
#include "vfio_pci.h"

#define RAM_SIZE	(2u * 1024 * 1024)
#define BAR0_SIZE	0x4000u
#define BAR2_SIZE	0x10000u
#define TABLE_OFF	0x2000u
#define PBA_OFF		0x3000u
#define MSIX_CAP	0x40u
#define NR_VECTORS	2u
#define WAIT_MS		10000	/* generous bound for anything async */

/* Fake device registers in BAR0. */
#define REG_SCRATCH	0x58u
#define REG_DMA_IOVA	0x100u	/* where DMA_GO writes */
#define REG_DMA_GO	0x108u	/* write: DMA a 256-byte pattern */
#define REG_IRQ		0x10cu	/* write n: trigger MSI-X vector n */
#define REG_RESULT	0x110u	/* result of the last GO / IRQ */
#define REG_IRQ_MSI	0x114u	/* write n: trigger MSI vector n */
#define REG_IRQ_INTX	0x118u	/* write: trigger INTx */
#define REG_RESETS	0x11cu	/* DEVICE_RESETs so far (kept by reset) */
#define DMA_LEN		256u
#define DMA_BYTE	0xab

/* BAR4: 12 ports of registers (an I/O BAR of 16 to the guest); the
 * expansion ROM: 3000 bytes (a 4 KiB BAR), 0x55 0xaa then i & 0xff. */
#define IO_BAR		4u
#define IO_REGION_SIZE	12u
#define IO_BAR_SIZE	16u
#define ROM_SIZE	3000u
#define ROM_BAR_SIZE	4096u
/* PCI state version 3 added 1 + 24 + 4 bytes after version 2's 44. */
#define V3_EXTRA	29u
/* DEV_SHORT_FD hands out a BAR2 fd of one page for its 64 KiB (a guest
 * access past the end would wedge the vCPU); DEV_UNSEALED one the server
 * could still shrink. */
enum variant { DEV_GOOD, DEV_NOT_PCI, DEV_BAD_MSIX, DEV_SHORT_FD,
	       DEV_UNSEALED, DEV_MSI, DEV_INTX };
/* DEV_MSI: an MSI capability (64-bit, per-vector masking, 4 vectors)
 * instead of MSI-X, and INTA#; DEV_INTX: no capability, INTA# only. */
#define MSI_CAP		0x50u
#define MSI_VECTORS	4u
#define MSI_CTRL_RESET	0x0184u		/* PVM | 64-bit | MMC 2 */

/* ---- the fake device (child process) ---------------------------- */

static struct {
	struct vfu_server *srv;
	uint8_t bar0[BAR0_SIZE];
	uint8_t io[IO_REGION_SIZE];
	uint8_t rom[ROM_SIZE];
	uint8_t cfg[256];
	uint8_t *devmem;
} fd_dev;

static uint32_t reg_get(unsigned off)
{
	uint32_t v;

	memcpy(&v, fd_dev.bar0 + off, 4);
	return v;
}

static void reg_set(unsigned off, uint32_t v)
{
	memcpy(fd_dev.bar0 + off, &v, 4);
}

static ssize_t fdev_access(void *dev, uint32_t index, uint64_t offset,
			   void *buf, uint32_t count, bool is_write)
{
	uint8_t *mem;

	switch (index) {
	case 0:
		mem = fd_dev.bar0;
		break;
	case 2:
		mem = fd_dev.devmem;
		break;
	case IO_BAR:
		mem = fd_dev.io;
		break;
	case 6:
		if (is_write)
			return -EINVAL;	/* the proxy must never write it */
		mem = fd_dev.rom;
		break;
	case 7:
		mem = fd_dev.cfg;
		break;
	default:
		return -EINVAL;
	}
	if (!is_write) {
		memcpy(buf, mem + offset, count);
		return count;
	}
	memcpy(mem + offset, buf, count);
	if (index == 0 && offset == REG_DMA_GO) {
		uint8_t pat[DMA_LEN];

		memset(pat, DMA_BYTE, sizeof(pat));
		reg_set(REG_RESULT, vfu_server_dma_write(fd_dev.srv,
					reg_get(REG_DMA_IOVA), pat,
					sizeof(pat)));
	} else if (index == 0 && offset == REG_IRQ) {
		reg_set(REG_RESULT, vfu_server_irq_trigger(fd_dev.srv,
					VFU_PCI_MSIX_IRQ_INDEX,
					reg_get(REG_IRQ)));
	} else if (index == 0 && offset == REG_IRQ_MSI) {
		reg_set(REG_RESULT, vfu_server_irq_trigger(fd_dev.srv,
					VFU_PCI_MSI_IRQ_INDEX,
					reg_get(REG_IRQ_MSI)));
	} else if (index == 0 && offset == REG_IRQ_INTX) {
		reg_set(REG_RESULT, vfu_server_irq_trigger(fd_dev.srv,
					VFU_PCI_INTX_IRQ_INDEX, 0));
	}
	return count;
}

static int fdev_reset(void *dev)
{
	reg_set(REG_RESETS, reg_get(REG_RESETS) + 1);
	return 0;
}

static const struct vfu_device_ops fdev_ops = {
	.region_access = fdev_access,
	.reset = fdev_reset,
};

static void cfg_put16(unsigned off, uint16_t v)
{
	memcpy(fd_dev.cfg + off, &v, 2);
}

static void cfg_put32(unsigned off, uint32_t v)
{
	memcpy(fd_dev.cfg + off, &v, 4);
}

static void __attribute__((noreturn)) run_device(const char *path,
						 enum variant var, int ready)
{
	struct vfu_device_desc d = {
		.name = "fake",
		.device_flags = VFU_DEVICE_FLAGS_RESET | VFU_DEVICE_FLAGS_PCI,
		.ops = &fdev_ops,
	};
	int mfd;

	if (var == DEV_NOT_PCI)
		d.device_flags = VFU_DEVICE_FLAGS_RESET;
	cfg_put16(0x00, 0xfe44);
	cfg_put16(0x02, 0xd0a1);
	cfg_put16(0x06, 0x10);			/* capability list */
	cfg_put32(0x08, 0x08800001);
	cfg_put32(0x10, 0x0);			/* BAR0: 32-bit memory */
	cfg_put32(0x18, 0xc);			/* BAR2: 64-bit prefetch */
	cfg_put32(0x20, 0x1);			/* BAR4: I/O */
	fd_dev.rom[0] = 0x55;
	fd_dev.rom[1] = 0xaa;
	for (unsigned i = 2; i < ROM_SIZE; i++)
		fd_dev.rom[i] = i & 0xff;
	fd_dev.cfg[0x34] = MSIX_CAP;
	fd_dev.cfg[MSIX_CAP] = 0x11;
	cfg_put16(MSIX_CAP + 2, NR_VECTORS - 1);
	cfg_put32(MSIX_CAP + 4, var == DEV_BAD_MSIX ? 0x8000 : TABLE_OFF);
	cfg_put32(MSIX_CAP + 8, PBA_OFF);

	mfd = memfd_create("fake-devmem", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (mfd < 0 || ftruncate(mfd, BAR2_SIZE) < 0)
		_exit(3);
	if (var != DEV_UNSEALED &&
	    fcntl(mfd, F_ADD_SEALS, F_SEAL_SHRINK) < 0)
		_exit(3);
	fd_dev.devmem = mmap(NULL, BAR2_SIZE, PROT_READ | PROT_WRITE,
			     MAP_SHARED, mfd, 0);
	if (fd_dev.devmem == MAP_FAILED)
		_exit(3);

	d.regions[0] = (struct vfu_region_desc){
		.size = BAR0_SIZE,
		.flags = VFU_REGION_FLAG_READ | VFU_REGION_FLAG_WRITE,
		.fd = -1,
	};
	d.regions[2] = (struct vfu_region_desc){
		.size = BAR2_SIZE,
		.flags = VFU_REGION_FLAG_READ | VFU_REGION_FLAG_WRITE |
			 VFU_REGION_FLAG_MMAP,
		.fd = mfd,
		.trap_while_saving = { { .offset = 0, .size = BAR2_SIZE } },
		.nr_trap_while_saving = 1,
	};
	d.regions[7] = (struct vfu_region_desc){
		.size = sizeof(fd_dev.cfg),
		.flags = VFU_REGION_FLAG_READ | VFU_REGION_FLAG_WRITE,
		.fd = -1,
	};
	d.regions[IO_BAR] = (struct vfu_region_desc){
		.size = IO_REGION_SIZE,
		.flags = VFU_REGION_FLAG_READ | VFU_REGION_FLAG_WRITE,
		.fd = -1,
	};
	d.regions[6] = (struct vfu_region_desc){
		.size = ROM_SIZE, .flags = VFU_REGION_FLAG_READ, .fd = -1,
	};
	for (int i = 0; i < VFU_PCI_NUM_REGIONS; i++)
		if (i != 0 && i != 2 && i != 7 && i != IO_BAR && i != 6)
			d.regions[i].fd = -1;
	d.irq_count[VFU_PCI_MSIX_IRQ_INDEX] = NR_VECTORS;
	if (var == DEV_MSI || var == DEV_INTX) {
		memset(fd_dev.cfg + MSIX_CAP, 0, 12);
		fd_dev.cfg[0x3d] = 1;			/* INTA# */
		d.irq_count[VFU_PCI_MSIX_IRQ_INDEX] = 0;
		d.irq_count[VFU_PCI_INTX_IRQ_INDEX] = 1;
	}
	if (var == DEV_MSI) {
		fd_dev.cfg[0x34] = MSI_CAP;
		fd_dev.cfg[MSI_CAP] = 0x05;
		cfg_put16(MSI_CAP + 2, MSI_CTRL_RESET);
		d.irq_count[VFU_PCI_MSI_IRQ_INDEX] = MSI_VECTORS;
	}
	if (var == DEV_INTX) {
		fd_dev.cfg[0x34] = 0;
		cfg_put16(0x06, 0);			/* no capability list */
	}

	if (var == DEV_SHORT_FD) {
		/* Its own mapping stays valid: a second, short file. */
		int s = memfd_create("fake-short", MFD_CLOEXEC);

		if (s < 0 || ftruncate(s, 4096) < 0)
			_exit(3);
		d.regions[2].fd = s;
	}
	fd_dev.srv = vfu_server_create(&d, NULL);
	if (!fd_dev.srv || vfu_server_listen(fd_dev.srv, path, NULL) < 0)
		_exit(4);
	if (write(ready, "r", 1) != 1)
		_exit(5);
	close(ready);
	vfu_server_run(fd_dev.srv);
	_exit(0);
}

/* ---- parent side -------------------------------------------------- */

/* A fake device server in a temp dir and the proxy over it: t for the
 * "live" group (DEV_GOOD), r per test of the interrupt group. */
struct rig {
	char dir[64];
	char sock[128];
	pid_t child;
	struct pci_bus *bus;
	struct vfio_pci *dev;
	int fds_before;
};

static struct rig t = { .child = -1 }, r = { .child = -1 };

static int spawn_device(const char *path, enum variant var, pid_t *pid)
{
	struct pollfd pfd;
	int p[2];
	char c;

	if (pipe2(p, O_CLOEXEC) < 0)
		return -errno;
	*pid = fork();
	if (*pid < 0)
		return -errno;
	if (*pid == 0) {
		close(p[0]);
		run_device(path, var, p[1]);
	}
	close(p[1]);
	pfd = (struct pollfd){ .fd = p[0], .events = POLLIN };
	if (poll(&pfd, 1, WAIT_MS) != 1 || read(p[0], &c, 1) != 1) {
		close(p[0]);
		kill(*pid, SIGKILL);
		waitpid(*pid, NULL, 0);
		*pid = -1;
		return -ETIMEDOUT;
	}
	close(p[0]);
	return 0;
}

static void reap(pid_t *pid)
{
	if (*pid > 0) {
		kill(*pid, SIGKILL);
		waitpid(*pid, NULL, 0);
		*pid = -1;
	}
}

static uint32_t cfg_read(unsigned slot, unsigned reg, unsigned size)
{
	uint32_t addr = 0x80000000u | slot << 11 | (reg & 0xfc), v = 0;

	fake_vm_pio(0xcf8, &addr, 4, true);
	fake_vm_pio(0xcfc + (reg & 3), &v, size, false);
	return v;
}

static void cfg_write(unsigned slot, unsigned reg, uint32_t v,
		      unsigned size)
{
	uint32_t addr = 0x80000000u | slot << 11 | (reg & 0xfc);

	fake_vm_pio(0xcf8, &addr, 4, true);
	fake_vm_pio(0xcfc + (reg & 3), &v, size, true);
}

static uint32_t mmio_read32(uint64_t gpa)
{
	uint32_t v = 0;

	assert_true(fake_vm_mmio(gpa, &v, 4, false));
	return v;
}

static void mmio_write32(uint64_t gpa, uint32_t v)
{
	assert_true(fake_vm_mmio(gpa, &v, 4, true));
}

static uint64_t bar0(void)
{
	return cfg_read(1, 0x10, 4) & ~0xfull;
}

static uint64_t bar2(void)
{
	return (cfg_read(1, 0x18, 4) & ~0xfull) |
	       (uint64_t)cfg_read(1, 0x1c, 4) << 32;
}

/* A vfio-user device server at path, as ferry-vmm plugs one in. */
static int proxy_create(struct pci_bus *bus, const char *id, const char *path,
			struct vfio_pci **out, char *err, size_t errlen)
{
	struct vdev *vdev;
	int ret = vdev_vfio_user_open(id, path, &vdev, err, errlen);

	if (ret)
		return ret;
	return vfio_pci_create(fake_vm_ptr(), bus, vdev, out, err, errlen);
}

/* mkdtemp(3)'s template: the six X are the part it fills in. */
static int rig_open(struct rig *g, enum variant var, const char *id)
{
	char err[256] = "";

	g->fds_before = count_open_fds();
	strcpy(g->dir, "/tmp/ferry-pt-XXXXXX");
	if (!mkdtemp(g->dir))
		return -1;
	snprintf(g->sock, sizeof(g->sock), "%s/dev.sock", g->dir);
	fake_vm_init(RAM_SIZE);
	if (spawn_device(g->sock, var, &g->child) < 0)
		return -1;
	g->bus = pci_bus_create(fake_vm_ptr());
	if (!g->bus || proxy_create(g->bus, id, g->sock, &g->dev, err,
				   sizeof(err)) < 0) {
		fprintf(stderr, "create: %s\n", err);
		return -1;
	}
	return 0;
}

static void rig_close(struct rig *g)
{
	vfio_pci_destroy(g->dev);
	g->dev = NULL;
	pci_bus_destroy(g->bus);
	g->bus = NULL;
	reap(&g->child);
	fake_vm_fini();
	if (g->dir[0]) {
		unlink(g->sock);
		rmdir(g->dir);
		g->dir[0] = 0;
	}
}

static int group_setup(void **state)
{
	return rig_open(&t, DEV_GOOD, "fdma0");
}

static int group_teardown(void **state)
{
	rig_close(&t);
	return 0;
}

static void test_host_bridge(void **state)
{
	uint32_t addr, v;

	assert_int_equal(cfg_read(0, 0x00, 4), 0x29c08086);
	assert_int_equal(cfg_read(0, 0x08, 4) >> 8, 0x060000);
	assert_int_equal(cfg_read(0, 0x02, 2), 0x29c0);
	assert_int_equal(cfg_read(0, 0x03, 1), 0x29);
	/* empty slot and a non-zero function float high */
	assert_int_equal(cfg_read(7, 0x00, 4), 0xffffffff);
	addr = 0x80000000u | 1 << 11 | 1 << 8;
	fake_vm_pio(0xcf8, &addr, 4, true);
	fake_vm_pio(0xcfc, &v, 4, false);
	assert_int_equal(v, 0xffffffff);
	/* enable bit clear: no config cycle */
	addr = 0;
	fake_vm_pio(0xcf8, &addr, 4, true);
	fake_vm_pio(0xcfc, &v, 4, false);
	assert_int_equal(v, 0xffffffff);
	/* the latch reads back */
	addr = 0x80000810;
	fake_vm_pio(0xcf8, &addr, 4, true);
	v = 0;
	fake_vm_pio(0xcf8, &v, 4, false);
	assert_int_equal(v, 0x80000810);
}

static void test_identity_and_caps(void **state)
{
	assert_int_equal(cfg_read(1, 0x00, 4), 0xd0a1fe44);
	assert_int_equal(cfg_read(1, 0x34, 1), MSIX_CAP);
	assert_int_equal(cfg_read(1, MSIX_CAP, 1), 0x11);
	/* MSI-X starts disabled; table size read-only */
	assert_int_equal(cfg_read(1, MSIX_CAP + 2, 2), NR_VECTORS - 1);
	/* the VMM turned I/O and memory decode and bus mastering on */
	assert_int_equal(cfg_read(1, 0x04, 2) & 0x7, 0x7);
	/* the expansion ROM has a place, its decode off */
	assert_true(cfg_read(1, 0x30, 4) >= VM_PCI_MMIO_START);
	assert_int_equal(cfg_read(1, 0x30, 4) & 0x1, 0);
}

static uint32_t pio_read(uint16_t port, unsigned size)
{
	uint32_t v = 0;

	fake_vm_pio(port, &v, size, false);
	return v;
}

static void pio_write(uint16_t port, uint32_t v, unsigned size)
{
	fake_vm_pio(port, &v, size, true);
}

static void test_io_bar(void **state)
{
	uint32_t reg = cfg_read(1, 0x20, 4);
	uint16_t port = reg & ~0x3u, np = 0xd000;

	/* an I/O BAR in the ports firmware uses, naturally aligned */
	assert_int_equal(reg & 0x3, 0x1);
	assert_true(port >= 0xc000 && IS_ALIGNED(port, IO_BAR_SIZE));
	/* sizing: 16 ports, 16 address bits */
	cfg_write(1, 0x20, 0xffffffff, 4);
	assert_int_equal(cfg_read(1, 0x20, 4), (0xffffu & ~(IO_BAR_SIZE - 1)) | 1);
	cfg_write(1, 0x20, port, 4);
	assert_int_equal(cfg_read(1, 0x20, 4), port | 1u);

	/* ports reach the device's region as reads and writes */
	pio_write(port + 4, 0xa5c3e1f0, 4);
	assert_int_equal(pio_read(port + 4, 4), 0xa5c3e1f0);
	pio_write(port + 8, 0x7e, 1);
	assert_int_equal(pio_read(port + 8, 1), 0x7e);
	assert_int_equal(pio_read(port + 5, 2), 0xc3e1);
	/* the 4 ports past the device's 12 read all-ones, writes vanish */
	pio_write(port + 12, 0x12345678, 4);
	assert_int_equal(pio_read(port + 12, 4), 0xffffffff);

	/* moved: the old ports float, the new ones answer */
	cfg_write(1, 0x20, np, 4);
	assert_int_equal(pio_read(port + 4, 4), 0xffffffff);
	assert_int_equal(pio_read(np + 4, 4), 0xa5c3e1f0);
	/* I/O decode off: nothing; on again: back */
	cfg_write(1, 0x04, cfg_read(1, 0x04, 2) & ~0x1u, 2);
	assert_int_equal(pio_read(np + 4, 4), 0xffffffff);
	cfg_write(1, 0x04, cfg_read(1, 0x04, 2) | 0x1u, 2);
	assert_int_equal(pio_read(np + 4, 4), 0xa5c3e1f0);
	cfg_write(1, 0x20, port, 4);
	assert_int_equal(pio_read(port + 4, 4), 0xa5c3e1f0);
}

static void test_rom(void **state)
{
	uint32_t reg = cfg_read(1, 0x30, 4), v;
	uint64_t gpa = reg & ~0x7ffu;

	assert_true(IS_ALIGNED(gpa, ROM_BAR_SIZE));
	/* decode off: the ROM is not there */
	assert_false(fake_vm_mmio(gpa, &v, 4, false));
	/* sizing: a 4 KiB ROM; the enable bit is the only other one */
	cfg_write(1, 0x30, 0xfffffffe, 4);
	assert_int_equal(cfg_read(1, 0x30, 4), ~(ROM_BAR_SIZE - 1));
	cfg_write(1, 0x30, (uint32_t)gpa | 1, 4);
	assert_int_equal(cfg_read(1, 0x30, 4), (uint32_t)gpa | 1);

	/* on: the device's ROM, read-only, all-ones past its end */
	assert_int_equal(mmio_read32(gpa), 0x0302aa55);
	assert_int_equal(mmio_read32(gpa + 0x100), 0x03020100);
	mmio_write32(gpa, 0);
	assert_int_equal(mmio_read32(gpa), 0x0302aa55);
	assert_int_equal(mmio_read32(gpa + ROM_SIZE), 0xffffffff);
	/* memory decode off takes it away too */
	cfg_write(1, 0x04, cfg_read(1, 0x04, 2) & ~0x2u, 2);
	assert_false(fake_vm_mmio(gpa, &v, 4, false));
	cfg_write(1, 0x04, cfg_read(1, 0x04, 2) | 0x2u, 2);
	assert_int_equal(mmio_read32(gpa + 4), 0x07060504);
	cfg_write(1, 0x30, (uint32_t)gpa, 4);
	assert_false(fake_vm_mmio(gpa, &v, 4, false));
}

static void test_bar_placement_and_sizing(void **state)
{
	uint64_t b0 = bar0(), b2 = bar2();

	assert_true(b0 >= VM_PCI_MMIO_START && b0 < VM_PCI_MMIO_END);
	assert_true(IS_ALIGNED(b0, BAR0_SIZE));
	assert_true(IS_ALIGNED(b2, BAR2_SIZE));
	assert_false(ranges_overlap(b0, BAR0_SIZE, b2, BAR2_SIZE));
	assert_int_equal(cfg_read(1, 0x18, 4) & 0xf, 0xc);

	/* sizing */
	cfg_write(1, 0x10, 0xffffffff, 4);
	assert_int_equal(cfg_read(1, 0x10, 4), ~(BAR0_SIZE - 1));
	cfg_write(1, 0x10, (uint32_t)b0, 4);
	cfg_write(1, 0x18, 0xffffffff, 4);
	cfg_write(1, 0x1c, 0xffffffff, 4);
	assert_int_equal(cfg_read(1, 0x18, 4), ~(BAR2_SIZE - 1) | 0xc);
	assert_int_equal(cfg_read(1, 0x1c, 4), 0xffffffff);
	cfg_write(1, 0x18, (uint32_t)b2, 4);
	cfg_write(1, 0x1c, b2 >> 32, 4);
	assert_int_equal(bar0(), b0);
	assert_int_equal(bar2(), b2);
	/* absent BARs (the device has none there) read 0 and stay 0 */
	cfg_write(1, 0x14, 0xffffffff, 4);
	assert_int_equal(cfg_read(1, 0x14, 4), 0);

	/* after sizing both are back where they were */
	mmio_read32(b0 + REG_SCRATCH);
	assert_non_null(fake_vm_slot_at(b2));
}

static void test_trapped_access(void **state)
{
	uint64_t b0 = bar0();

	mmio_write32(b0 + REG_SCRATCH, 0x12345678);
	assert_int_equal(mmio_read32(b0 + REG_SCRATCH), 0x12345678);
	mmio_write32(b0 + REG_SCRATCH, 0xcafef00d);
	assert_int_equal(mmio_read32(b0 + REG_SCRATCH), 0xcafef00d);
	/* BAR0 has no mmap'able part: nothing direct */
	assert_null(fake_vm_slot_at(b0));
}

static void test_direct_bar_and_saving_traps(void **state)
{
	uint64_t b2 = bar2();
	const struct fake_slot *s = fake_vm_slot_at(b2);
	uint32_t v = 0x600dcafe;

	assert_non_null(s);
	assert_int_equal(s->gpa, b2);
	assert_int_equal(s->size, BAR2_SIZE);
	/* a "guest" store through the slot is the device's memory */
	memcpy((uint8_t *)s->hva + 0x100, &v, 4);
	assert_int_equal(mmio_read32(b2 + 0x100), 0x600dcafe);

	assert_int_equal(vfio_pci_set_saving_traps(t.dev, true), 0);
	assert_null(fake_vm_slot_at(b2));
	/* trapped now: writes reach the server */
	mmio_write32(b2 + 0x200, 0x5a5a5a5a);
	assert_int_equal(vfio_pci_set_saving_traps(t.dev, false), 0);
	s = fake_vm_slot_at(b2);
	assert_non_null(s);
	memcpy(&v, (uint8_t *)s->hva + 0x200, 4);
	assert_int_equal(v, 0x5a5a5a5a);
}

static void test_bar_move_and_decode(void **state)
{
	uint64_t b0 = bar0(), nb = 0xd0000000ull;
	uint32_t v;

	cfg_write(1, 0x10, (uint32_t)nb, 4);
	assert_int_equal(bar0(), nb);
	assert_false(fake_vm_mmio(b0 + REG_SCRATCH, &v, 4, false));
	assert_int_equal(mmio_read32(nb + REG_SCRATCH), 0xcafef00d);

	/* memory decode off: nothing answers; on: back */
	cfg_write(1, 0x04, 0x4, 2);
	assert_false(fake_vm_mmio(nb + REG_SCRATCH, &v, 4, false));
	assert_null(fake_vm_slot_at(bar2()));
	cfg_write(1, 0x04, 0x6, 2);
	assert_int_equal(mmio_read32(nb + REG_SCRATCH), 0xcafef00d);
	assert_non_null(fake_vm_slot_at(bar2()));

	/* a BAR over guest RAM is refused (left unmapped) */
	cfg_write(1, 0x10, 0x1000 * 4, 4);
	assert_false(fake_vm_mmio(0x4000 + REG_SCRATCH, &v, 4, false));
	cfg_write(1, 0x10, (uint32_t)b0, 4);
	assert_int_equal(mmio_read32(b0 + REG_SCRATCH), 0xcafef00d);
}

static void table_write(unsigned vec, unsigned off, uint32_t v)
{
	mmio_write32(bar0() + TABLE_OFF + vec * 16 + off, v);
}

static uint32_t pba_read(void)
{
	return mmio_read32(bar0() + PBA_OFF);
}

static int gsi_of_route(uint32_t data)
{
	for (int g = 0; g < FAKE_MAX_GSI; g++)
		if (fake_vm.route_data[g] == data &&
		    fake_vm.route_addr[g] == 0xfee00000)
			return g;
	return -1;
}

static void test_msix(void **state)
{
	uint64_t b0 = bar0(), cnt;
	int gsi, i;

	/* Negative control: before MSI-X is enabled the device holds no
	 * eventfd, so its trigger reports "nothing assigned". */
	mmio_write32(b0 + REG_IRQ, 0);
	assert_int_equal(mmio_read32(b0 + REG_RESULT), 0);

	/* table reset state: masked */
	assert_int_equal(mmio_read32(b0 + TABLE_OFF + 12), 1);
	table_write(0, 0, 0xfee00000);
	table_write(0, 4, 0);
	table_write(0, 8, 0x4041);
	table_write(0, 12, 0);
	table_write(1, 0, 0xfee00000);
	table_write(1, 8, 0x4042);	/* vector 1 stays masked */
	assert_int_equal(mmio_read32(b0 + TABLE_OFF + 8), 0x4041);

	cfg_write(1, MSIX_CAP + 2, 0x8000, 2);
	assert_int_equal(cfg_read(1, MSIX_CAP + 2, 2), 0x8000 | (NR_VECTORS - 1));
	assert_int_equal(fake_vm.nr_irqfds, 1);
	gsi = gsi_of_route(0x4041);
	assert_true(gsi >= 0);
	assert_true(fake_vm.irqfd_of_gsi[gsi] >= 0);

	/* the device now signals vector 0 into the routed eventfd */
	mmio_write32(b0 + REG_IRQ, 0);
	assert_int_equal(mmio_read32(b0 + REG_RESULT), 1);
	assert_int_equal(read(fake_vm.irqfd_of_gsi[gsi], &cnt, 8), 8);
	assert_int_equal(cnt, 1);

	/* masked vector 1: the signal becomes a pending bit */
	mmio_write32(b0 + REG_IRQ, 1);
	assert_int_equal(mmio_read32(b0 + REG_RESULT), 1);
	for (i = 0; i < WAIT_MS && !(pba_read() & 2); i++)
		usleep(1000);
	assert_int_equal(pba_read() & 3, 2);
	assert_int_equal(fake_vm.nr_signalled, 0);

	/* unmask: delivered once, bit cleared, irqfd attached */
	table_write(1, 12, 0);
	assert_int_equal(fake_vm.nr_signalled, 1);
	assert_int_equal(fake_vm.last_msi_data, 0x4042);
	assert_int_equal(pba_read() & 2, 0);
	assert_int_equal(fake_vm.nr_irqfds, 2);

	/* function mask detaches every vector, clearing it re-attaches */
	cfg_write(1, MSIX_CAP + 2, 0xc000, 2);
	assert_int_equal(fake_vm.nr_irqfds, 0);
	cfg_write(1, MSIX_CAP + 2, 0x8000, 2);
	assert_int_equal(fake_vm.nr_irqfds, 2);
	assert_int_equal(fake_vm.nr_signalled, 1);	/* nothing spurious */
}

static void test_dma_into_guest_ram(void **state)
{
	uint64_t b0 = bar0();
	uint8_t *ram = fake_vm.ram;
	int i;

	memset(ram + 0x3000, 0, DMA_LEN + 1);
	mmio_write32(b0 + REG_DMA_IOVA, 0x3000);
	mmio_write32(b0 + REG_DMA_GO, 1);
	assert_int_equal(mmio_read32(b0 + REG_RESULT), 0);
	for (i = 0; i < (int)DMA_LEN; i++)
		assert_int_equal(ram[0x3000 + i], DMA_BYTE);
	assert_int_equal(ram[0x3000 + DMA_LEN], 0);

	/* outside guest RAM: refused by the server */
	mmio_write32(b0 + REG_DMA_IOVA, RAM_SIZE - 16);
	mmio_write32(b0 + REG_DMA_GO, 1);
	assert_int_equal((int32_t)mmio_read32(b0 + REG_RESULT), -EFAULT);
}

/* The guest's ROM and I/O BAR registers travel in the PCI state (v2);
 * a v1 blob (from before ROMs) still loads, with the ROM off. */
static void test_state_rom_and_io(void **state)
{
	uint32_t rom = cfg_read(1, 0x30, 4) & ~0x7ffu, io = cfg_read(1, 0x20, 4);
	uint16_t port = io & ~0x3u;
	char err[128];
	uint8_t *v1;
	void *blob;
	size_t len;

	cfg_write(1, 0x30, rom | 1, 4);
	cfg_write(1, 0x20, 0xd000, 4);
	pio_write(0xd000, 0x11223344, 4);
	assert_int_equal(vfio_pci_save_state(t.dev, &blob, &len), 0);
	cfg_write(1, 0x30, rom, 4);
	cfg_write(1, 0x20, port, 4);
	assert_int_equal(vfio_pci_load_state(t.dev, blob, len, err,
					     sizeof(err)), 0);
	assert_int_equal(cfg_read(1, 0x30, 4), rom | 1);
	assert_int_equal(mmio_read32(rom), 0x0302aa55);
	assert_int_equal(cfg_read(1, 0x20, 4), 0xd001);
	assert_int_equal(pio_read(0xd000, 4), 0x11223344);
	assert_int_equal(pio_read(port, 4), 0xffffffff);

	/* version 1: the same without rom_reg at 40 and version 3's INTx
	 * line, MSI registers and length (V3_EXTRA bytes at 44) */
	v1 = malloc(len);
	assert_non_null(v1);
	memcpy(v1, blob, 40);
	memcpy(v1 + 40, (uint8_t *)blob + 44 + V3_EXTRA, len - 44 - V3_EXTRA);
	v1[4] = 1;
	assert_int_equal(vfio_pci_load_state(t.dev, v1, len - 4 - V3_EXTRA,
					     err, sizeof(err)), 0);
	assert_int_equal(cfg_read(1, 0x30, 4), 0);
	assert_int_equal(pio_read(0xd000, 4), 0x11223344);
	/* version 2: rom_reg back, no MSI: the ROM is on again */
	memcpy(v1, blob, 44);
	memcpy(v1 + 44, (uint8_t *)blob + 44 + V3_EXTRA, len - 44 - V3_EXTRA);
	v1[4] = 2;
	assert_int_equal(vfio_pci_load_state(t.dev, v1, len - V3_EXTRA, err,
					     sizeof(err)), 0);
	assert_int_equal(cfg_read(1, 0x30, 4), rom | 1);
	/* an unknown version, a short blob: refused with a reason */
	v1[4] = 4;
	assert_int_equal(vfio_pci_load_state(t.dev, v1, len - V3_EXTRA, err,
					     sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "version"));
	assert_int_equal(vfio_pci_load_state(t.dev, blob, len - 1, err,
					     sizeof(err)), -EBADMSG);
	free(v1);
	free(blob);
	/* back as the later tests expect */
	cfg_write(1, 0x20, port, 4);
	cfg_write(1, 0x30, rom, 4);
}

static void test_describe(void **state)
{
	struct json_object *o = vfio_pci_describe(t.dev), *v, *w;

	assert_non_null(o);
	assert_true(json_object_object_get_ex(o, "id", &v));
	assert_string_equal(json_object_get_string(v), "fdma0");
	assert_true(json_object_object_get_ex(o, "bars", &v));
	assert_int_equal(json_object_array_length(v), 3);
	for (size_t i = 0; i < 3; i++) {
		struct json_object *b = json_object_array_get_idx(v, i), *x;

		assert_true(json_object_object_get_ex(b, "index", &x));
		assert_true(json_object_object_get_ex(b, "type", &w));
		assert_string_equal(json_object_get_string(w),
				    json_object_get_int(x) == (int)IO_BAR ?
				    "io" : "memory");
	}
	assert_true(json_object_object_get_ex(o, "rom", &v));
	assert_true(json_object_object_get_ex(v, "size", &w));
	assert_int_equal(json_object_get_int64(w), ROM_BAR_SIZE);
	assert_true(json_object_object_get_ex(v, "enabled", &w));
	assert_false(json_object_get_boolean(w));
	assert_true(json_object_object_get_ex(o, "msix-vectors", &v));
	assert_int_equal(json_object_get_int(v), NR_VECTORS);
	assert_true(json_object_object_get_ex(o, "connected", &v));
	assert_true(json_object_get_boolean(v));
	json_object_put(o);
}

static void test_server_death(void **state)
{
	struct json_object *o, *v;
	uint64_t b0 = bar0();
	int i;

	reap(&t.child);
	for (i = 0; i < WAIT_MS && !fake_vm.nr_events; i++)
		usleep(1000);
	assert_int_equal(fake_vm.nr_events, 1);
	assert_string_equal(fake_vm.last_event, "VFIO_USER_DISCONNECTED");
	assert_int_equal(mmio_read32(b0 + REG_SCRATCH), 0xffffffff);
	assert_int_equal(cfg_read(1, 0x00, 4), 0xffffffff);
	cfg_write(1, 0x04, 0, 2);	/* must not hang or crash */

	o = vfio_pci_describe(t.dev);
	assert_non_null(o);
	assert_true(json_object_object_get_ex(o, "connected", &v));
	assert_false(json_object_get_boolean(v));
	json_object_put(o);
}

/* ---- creation failures (own server each) ------------------------- */

static pid_t fail_pid = -1;
static char fail_dir[] = "/tmp/ferry-pt-XXXXXX";

static void expect_create_error(const char *path, const char *needle)
{
	struct vfio_pci *dev = NULL;
	struct pci_bus *bus;
	char err[256] = "";
	int ret;

	fake_vm_init(RAM_SIZE);
	bus = pci_bus_create(fake_vm_ptr());
	assert_non_null(bus);
	ret = proxy_create(bus, "bad0", path, &dev, err, sizeof(err));
	assert_true(ret < 0);
	assert_null(dev);
	if (!strstr(err, needle))
		fail_msg("error \"%s\" lacks \"%s\"", err, needle);
	/* nothing left behind in the VM */
	assert_int_equal(fake_vm.nr_slots, 0);
	for (int i = 0; i < FAKE_MAX_MMIO; i++)
		assert_false(fake_vm.mmio[i].used);
	assert_int_equal(cfg_read(1, 0, 4), 0xffffffff);
	pci_bus_destroy(bus);
	fake_vm_fini();
}

static void expect_bar2_trapped(const char *path)
{
	struct json_object *o, *bars, *b, *v;
	struct vfio_pci *dev = NULL;
	struct pci_bus *bus;
	char err[256] = "";
	bool seen = false;

	fake_vm_init(RAM_SIZE);
	bus = pci_bus_create(fake_vm_ptr());
	assert_non_null(bus);
	if (proxy_create(bus, "us0", path, &dev, err, sizeof(err)))
		fail_msg("create: %s", err);
	o = vfio_pci_describe(dev);
	assert_true(json_object_object_get_ex(o, "bars", &bars));
	for (size_t i = 0; i < json_object_array_length(bars); i++) {
		b = json_object_array_get_idx(bars, i);
		assert_true(json_object_object_get_ex(b, "index", &v));
		if (json_object_get_int(v) != 2)
			continue;
		seen = true;
		assert_true(json_object_object_get_ex(b, "direct-slots", &v));
		assert_int_equal(json_object_get_int(v), 0);
	}
	assert_true(seen);
	assert_int_equal(fake_vm.nr_slots, 0);
	json_object_put(o);
	vfio_pci_destroy(dev);
	pci_bus_destroy(bus);
	fake_vm_fini();
}

static void test_create_failures(void **state)
{
	char *dir = fail_dir, path[128];
	pid_t *pid = &fail_pid;
	int before = count_open_fds();

	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/none.sock", dir);
	expect_create_error(path, "cannot connect");

	snprintf(path, sizeof(path), "%s/np.sock", dir);
	assert_int_equal(spawn_device(path, DEV_NOT_PCI, pid), 0);
	expect_create_error(path, "not a PCI device");
	reap(pid);
	unlink(path);

	snprintf(path, sizeof(path), "%s/bm.sock", dir);
	assert_int_equal(spawn_device(path, DEV_BAD_MSIX, pid), 0);
	expect_create_error(path, "MSI-X");
	reap(pid);
	unlink(path);

	/* A region fd the server could shrink: attached, BAR2 trapped
	 * rather than mapped into the guest. */
	snprintf(path, sizeof(path), "%s/us.sock", dir);
	assert_int_equal(spawn_device(path, DEV_UNSEALED, pid), 0);
	expect_bar2_trapped(path);
	reap(pid);
	unlink(path);

	/* A region fd too short for what it backs: the whole device is
	 * refused, not attached without that BAR. */
	snprintf(path, sizeof(path), "%s/sf.sock", dir);
	assert_int_equal(spawn_device(path, DEV_SHORT_FD, pid), 0);
	expect_create_error(path, "region 2 info: Protocol error");
	reap(pid);
	unlink(path);
	rmdir(dir);
	assert_int_equal(count_open_fds(), before);
}

static void test_no_fd_leak(void **state)
{
	group_teardown(state);
	assert_int_equal(count_open_fds(), t.fds_before);
}

static int failures_teardown(void **state)
{
	char path[128];

	reap(&fail_pid);
	fake_vm_fini();
	if (strcmp(fail_dir, "/tmp/ferry-pt-XXXXXX")) {
		snprintf(path, sizeof(path), "%s/np.sock", fail_dir);
		unlink(path);
		snprintf(path, sizeof(path), "%s/bm.sock", fail_dir);
		unlink(path);
		rmdir(fail_dir);
	}
	return 0;
}

/* ---- MSI and INTx (a device of their own per test) --------------- */

static int rig_msi_up(void **state)
{
	return rig_open(&r, DEV_MSI, "irq0");
}

static int rig_intx_up(void **state)
{
	return rig_open(&r, DEV_INTX, "irq0");
}

static int rig_down(void **state)
{
	rig_close(&r);
	/* Every eventfd, irqfd and connection of the device is gone. */
	return count_open_fds() == r.fds_before ? 0 : -1;
}

/* Write a device register and read back what the trigger returned. */
static uint32_t dev_trigger(unsigned reg, uint32_t v)
{
	mmio_write32(bar0() + reg, v);
	return mmio_read32(bar0() + REG_RESULT);
}

static int gsi_of_msi(uint64_t addr, uint32_t data)
{
	for (int g = 24; g < FAKE_MAX_GSI; g++)
		if (fake_vm.route_data[g] == data &&
		    fake_vm.route_addr[g] == addr && fake_vm.irqfd_of_gsi[g] >= 0)
			return g;
	return -1;
}

static uint64_t drain(int fd)
{
	uint64_t cnt = 0;

	if (fd < 0 || read(fd, &cnt, 8) != 8)
		return 0;
	return cnt;
}

/* The slot-1 device's INTA# goes to IOAPIC pin 16 + (1 + 0) % 8. */
#define INTX_GSI	17

static void test_msi(void **state)
{
	const uint64_t addr = 0xfee01000;
	struct json_object *o, *v;
	unsigned i;
	int g;

	/* reset: disabled, MME 0, the device's MMC/64-bit/PVM; INTx on */
	assert_int_equal(cfg_read(1, MSI_CAP + 2, 2), MSI_CTRL_RESET);
	assert_int_equal(cfg_read(1, 0x3d, 1), 1);
	assert_true(fake_vm.irqfd_of_gsi[INTX_GSI] >= 0);
	assert_true(fake_vm.resample_of_gsi[INTX_GSI] >= 0);
	assert_int_equal(dev_trigger(REG_IRQ_MSI, 0), 0);  /* no fd yet */

	cfg_write(1, MSI_CAP + 4, addr | 3, 4);		/* low bits RO */
	cfg_write(1, MSI_CAP + 8, 0, 4);
	cfg_write(1, MSI_CAP + 0xc, 0x4050, 2);
	cfg_write(1, MSI_CAP + 0x10, 0x2, 4);		/* mask vector 1 */
	assert_int_equal(cfg_read(1, MSI_CAP + 4, 4), addr);
	/* enable with 4 vectors: INTx goes off first */
	cfg_write(1, MSI_CAP + 2, 0x0021, 2);
	assert_int_equal(cfg_read(1, MSI_CAP + 2, 2), MSI_CTRL_RESET | 0x21);
	assert_int_equal(fake_vm.irqfd_of_gsi[INTX_GSI], -1);
	assert_int_equal(fake_vm.nr_irqfds, 3);		/* 0, 2, 3 */
	for (i = 0; i < MSI_VECTORS; i++)
		assert_true((gsi_of_msi(addr, 0x4050 | i) >= 0) == (i != 1));

	/* vector 2 reaches its irqfd with data | 2 */
	assert_int_equal(dev_trigger(REG_IRQ_MSI, 2), 1);
	assert_int_equal(drain(fake_vm.irqfd_of_gsi[gsi_of_msi(addr,
						   0x4052)]), 1);
	/* masked vector 1: a pending bit, then delivered once on unmask */
	assert_int_equal(dev_trigger(REG_IRQ_MSI, 1), 1);
	for (i = 0; i < WAIT_MS && !(cfg_read(1, MSI_CAP + 0x14, 4) & 2); i++)
		usleep(1000);
	assert_int_equal(cfg_read(1, MSI_CAP + 0x14, 4), 2);
	assert_int_equal(fake_vm.nr_signalled, 0);
	cfg_write(1, MSI_CAP + 0x10, 0, 4);
	assert_int_equal(fake_vm.nr_signalled, 1);
	assert_int_equal(fake_vm.last_msi_data, 0x4051);
	assert_int_equal(cfg_read(1, MSI_CAP + 0x14, 4), 0);

	/* one vector granted: all four share data 0x4050, 1..3 masked;
	 * more than asked for is clamped to MMC */
	cfg_write(1, MSI_CAP + 2, 0x0001, 2);
	assert_int_equal(fake_vm.nr_irqfds, 1);
	assert_true(gsi_of_msi(addr, 0x4050) >= 0);
	/* ...and the device is given the one vector granted, not the four
	 * it can take (kernel vfio-pci allocates what it is given) */
	assert_int_equal(dev_trigger(REG_IRQ_MSI, 1), 0);
	assert_int_equal(dev_trigger(REG_IRQ_MSI, 0), 1);
	assert_int_equal(drain(fake_vm.irqfd_of_gsi[gsi_of_msi(addr,
						   0x4050)]), 1);
	cfg_write(1, MSI_CAP + 2, 0x0071, 2);
	assert_int_equal(cfg_read(1, MSI_CAP + 2, 2) & 0x70, 0x20);

	o = vfio_pci_describe(r.dev);
	assert_true(json_object_object_get_ex(o, "msi-vectors", &v));
	assert_int_equal(json_object_get_int(v), MSI_VECTORS);
	assert_true(json_object_object_get_ex(o, "msi-enabled", &v));
	assert_true(json_object_get_boolean(v));
	json_object_put(o);

	/* disabled: every MSI irqfd gone, INTx back */
	cfg_write(1, MSI_CAP + 2, 0x0000, 2);
	assert_int_equal(fake_vm.nr_irqfds, 1);
	assert_true(fake_vm.irqfd_of_gsi[INTX_GSI] >= 0);
	assert_int_equal(dev_trigger(REG_IRQ_MSI, 0), 0);
	g = gsi_of_msi(addr, 0x4050);
	assert_int_equal(g, -1);
}

static void test_msi_state(void **state)
{
	const uint64_t addr = 0xfee02000;
	char err[128];
	size_t len;
	void *blob;

	cfg_write(1, MSI_CAP + 4, addr, 4);
	cfg_write(1, MSI_CAP + 0xc, 0x4060, 2);
	cfg_write(1, MSI_CAP + 2, 0x0011, 2);		/* 2 vectors */
	assert_int_equal(fake_vm.nr_irqfds, 2);
	assert_int_equal(vfio_pci_save_state(r.dev, &blob, &len), 0);

	/* reset-like: off, another address; the load brings all back */
	cfg_write(1, MSI_CAP + 2, 0, 2);
	cfg_write(1, MSI_CAP + 4, 0xfee0f000, 4);
	assert_true(fake_vm.irqfd_of_gsi[INTX_GSI] >= 0);
	assert_int_equal(vfio_pci_load_state(r.dev, blob, len, err,
					     sizeof(err)), 0);
	assert_int_equal(cfg_read(1, MSI_CAP + 2, 2), MSI_CTRL_RESET | 0x11);
	assert_int_equal(cfg_read(1, MSI_CAP + 4, 4), addr);
	assert_int_equal(fake_vm.irqfd_of_gsi[INTX_GSI], -1);
	assert_int_equal(fake_vm.nr_irqfds, 2);
	assert_int_equal(dev_trigger(REG_IRQ_MSI, 1), 1);
	assert_int_equal(drain(fake_vm.irqfd_of_gsi[gsi_of_msi(addr,
						   0x4061)]), 1);
	/* a blob for a device without MSI is refused with a reason */
	assert_int_equal(vfio_pci_load_state(r.dev, blob, len - 1, err,
					     sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "MSI"));
	free(blob);
}

static void test_intx(void **state)
{
	uint64_t one = 1;
	struct json_object *o, *x, *v;
	int trig, res, i;
	uint32_t cmd;

	/* Interrupt Line names the IOAPIC pin; the line is on at reset */
	assert_int_equal(cfg_read(1, 0x3d, 1), 1);
	assert_int_equal(cfg_read(1, 0x3c, 1), INTX_GSI);
	assert_int_equal(fake_vm.nr_irqfds, 1);
	trig = fake_vm.irqfd_of_gsi[INTX_GSI];
	res = fake_vm.resample_of_gsi[INTX_GSI];
	assert_true(trig >= 0 && res >= 0);

	/* level, automasked: one trigger until the EOI's resample */
	for (i = 0; i < WAIT_MS && dev_trigger(REG_IRQ_INTX, 0) != 1; i++)
		usleep(1000);	/* the attach kick's unmask may lag */
	assert_int_equal(drain(trig), 1);
	assert_int_equal(dev_trigger(REG_IRQ_INTX, 0), 0);
	assert_int_equal(drain(trig), 0);
	assert_int_equal(write(res, &one, 8), 8);	/* KVM on EOI */
	for (i = 0; i < WAIT_MS && dev_trigger(REG_IRQ_INTX, 0) != 1; i++)
		usleep(1000);
	assert_true(i < WAIT_MS);
	assert_int_equal(drain(trig), 1);

	/* INTx Disable: irqfd and device fds gone; cleared: back */
	cmd = cfg_read(1, 0x04, 2);
	cfg_write(1, 0x04, cmd | 0x400, 2);
	assert_int_equal(fake_vm.nr_irqfds, 0);
	assert_int_equal(fake_vm.irqfd_of_gsi[INTX_GSI], -1);
	assert_int_equal(dev_trigger(REG_IRQ_INTX, 0), 0);
	cfg_write(1, 0x04, cmd, 2);
	assert_int_equal(fake_vm.nr_irqfds, 1);
	for (i = 0; i < WAIT_MS && dev_trigger(REG_IRQ_INTX, 0) != 1; i++)
		usleep(1000);
	assert_int_equal(drain(fake_vm.irqfd_of_gsi[INTX_GSI]), 1);

	/* the guest's own note in Interrupt Line: kept, routing unchanged */
	cfg_write(1, 0x3c, 5, 1);
	assert_int_equal(cfg_read(1, 0x3c, 1), 5);
	assert_true(fake_vm.irqfd_of_gsi[INTX_GSI] >= 0);

	o = vfio_pci_describe(r.dev);
	assert_true(json_object_object_get_ex(o, "intx", &x));
	assert_true(json_object_object_get_ex(x, "pin", &v));
	assert_string_equal(json_object_get_string(v), "A");
	assert_true(json_object_object_get_ex(x, "gsi", &v));
	assert_int_equal(json_object_get_int(v), INTX_GSI);
	assert_true(json_object_object_get_ex(x, "trigger", &v));
	assert_string_equal(json_object_get_string(v), "level");
	assert_true(json_object_object_get_ex(x, "on", &v));
	assert_true(json_object_get_boolean(v));
	assert_false(json_object_object_get_ex(o, "msi-enabled", &v) &&
		     json_object_get_boolean(v));
	json_object_put(o);
}

/* system_reset's part: interrupts off and taken back, the device's own
 * reset (quiesce); then, after the irqchip would be reloaded, the
 * registers as placed at creation, INTx on again (restart). */
static void test_msi_reset(void **state)
{
	uint32_t bar = cfg_read(1, 0x10, 4), cmd = cfg_read(1, 0x04, 2);
	char err[160] = "";

	cfg_write(1, MSI_CAP + 4, 0xfee01000, 4);
	cfg_write(1, MSI_CAP + 0xc, 0x4070, 2);
	cfg_write(1, MSI_CAP + 2, 0x0011, 2);
	cfg_write(1, 0x3c, 3, 1);
	assert_int_equal(fake_vm.nr_irqfds, 2);
	assert_int_equal(fake_vm.irqfd_of_gsi[INTX_GSI], -1);
	cfg_write(1, 0x10, 0xd0000000, 4);		/* the guest moved BAR0 */

	assert_int_equal(vfio_pci_reset_quiesce(r.dev, err, sizeof(err)), 0);
	/* Nothing can raise an interrupt while the irqchip is reloaded. */
	assert_int_equal(fake_vm.nr_irqfds, 0);
	assert_int_equal(fake_vm.irqfd_of_gsi[INTX_GSI], -1);
	assert_int_equal(mmio_read32(bar0() + REG_RESETS), 1);
	assert_int_equal(vfio_pci_reset_restart(r.dev, err, sizeof(err)), 0);
	assert_int_equal(cfg_read(1, 0x10, 4), bar);
	assert_int_equal(cfg_read(1, 0x04, 2), cmd);
	assert_int_equal(cfg_read(1, MSI_CAP + 2, 2), MSI_CTRL_RESET);
	assert_int_equal(cfg_read(1, MSI_CAP + 4, 4), 0);
	assert_int_equal(cfg_read(1, 0x3c, 1), INTX_GSI);
	assert_int_equal(mmio_read32(bar0() + REG_RESETS), 1);
	/* only INTx's irqfd, and the device holds no MSI fd any more */
	assert_int_equal(fake_vm.nr_irqfds, 1);
	assert_true(fake_vm.irqfd_of_gsi[INTX_GSI] >= 0);
	assert_int_equal(dev_trigger(REG_IRQ_MSI, 0), 0);
}

static void test_intx_state(void **state)
{
	char err[128];
	size_t len;
	void *blob;

	/* saved with INTx disabled and line 9: loaded back so */
	uint32_t cmd = cfg_read(1, 0x04, 2);

	cfg_write(1, 0x3c, 9, 1);
	cfg_write(1, 0x04, cmd | 0x400, 2);
	assert_int_equal(vfio_pci_save_state(r.dev, &blob, &len), 0);
	cfg_write(1, 0x04, cmd, 2);
	cfg_write(1, 0x3c, INTX_GSI, 1);
	assert_int_equal(fake_vm.nr_irqfds, 1);
	assert_int_equal(vfio_pci_load_state(r.dev, blob, len, err,
					     sizeof(err)), 0);
	assert_int_equal(cfg_read(1, 0x3c, 1), 9);
	assert_int_equal(fake_vm.nr_irqfds, 0);
	free(blob);
}

int main(void)
{
	const struct CMUnitTest live[] = {
		cmocka_unit_test(test_host_bridge),
		cmocka_unit_test(test_identity_and_caps),
		cmocka_unit_test(test_bar_placement_and_sizing),
		cmocka_unit_test(test_io_bar),
		cmocka_unit_test(test_rom),
		cmocka_unit_test(test_state_rom_and_io),
		cmocka_unit_test(test_trapped_access),
		cmocka_unit_test(test_direct_bar_and_saving_traps),
		cmocka_unit_test(test_bar_move_and_decode),
		cmocka_unit_test(test_msix),
		cmocka_unit_test(test_dma_into_guest_ram),
		cmocka_unit_test(test_describe),
		cmocka_unit_test(test_server_death),
		cmocka_unit_test(test_no_fd_leak),
	};
	const struct CMUnitTest irqs[] = {
		cmocka_unit_test_setup_teardown(test_msi, rig_msi_up,
						rig_down),
		cmocka_unit_test_setup_teardown(test_msi_state, rig_msi_up,
						rig_down),
		cmocka_unit_test_setup_teardown(test_msi_reset, rig_msi_up,
						rig_down),
		cmocka_unit_test_setup_teardown(test_intx, rig_intx_up,
						rig_down),
		cmocka_unit_test_setup_teardown(test_intx_state, rig_intx_up,
						rig_down),
	};
	const struct CMUnitTest failures[] = {
		cmocka_unit_test(test_create_failures),
	};
	int ret;

	signal(SIGPIPE, SIG_IGN);
	ret = cmocka_run_group_tests(live, group_setup, group_teardown);
	ret |= cmocka_run_group_tests(irqs, NULL, NULL);
	ret |= cmocka_run_group_tests(failures, NULL, failures_teardown);
	return ret ? 1 : 0;
}
