// SPDX-License-Identifier: BSD-3-Clause
/*
 * The ring-0 side of svc_call(): runs on the kernel stack with
 * interrupts off, entered from entry.S's #UD path. Kept to port I/O and
 * the few things ring 3 cannot do; each call costs an emulated round trip
 * on kvm_pvm, so loops that would need many calls (console output, the
 * PIT calibration wait) run here in one call.
 */
#include <stdint.h>

#include "boot.h"
#include "io.h"
#include "svc.h"

#define PCI_CFG_ADDR	0xcf8
#define PCI_CFG_DATA	0xcfc
#define PCI_CFG_ENABLE	0x80000000u

#define PIT_HZ		1193182u
#define PIT_CH2_DATA	0x42
#define PIT_CMD		0x43
#define PIT_CH2_ONESHOT	0xb0	/* channel 2, lo/hi byte, mode 0, binary */
#define SPEAKER_PORT	0x61
#define SPK_GATE	0x01
#define SPK_DATA	0x02
#define SPK_OUT2	0x20
#define PIT_SPIN_MAX	20000000u
#define PIT_TSC_MAX	(1ull << 35)	/* several seconds at any clock */

static inline uint64_t rdtsc_r0(void)
{
	uint32_t lo, hi;

	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((uint64_t)hi << 32) | lo;
}

/*
 * Run PIT channel 2 as a one-shot of ms milliseconds (gate on via port
 * 0x61) and spin until OUT2 (bit 5) rises. The caller reads the TSC in
 * ring 3 around the call: ring-0 RDTSC goes through kvm_pvm's emulator
 * and measured 1-2% off, and every overhead here only lengthens the
 * interval, so the caller's shortest run is the best estimate. SVC_ERR
 * if the PIT does not behave (OUT2 not low after loading, or no rise
 * within the bounds).
 */
static uint64_t pit_wait(uint64_t ms)
{
	uint32_t count;
	uint64_t t0;
	uint8_t v;

	if (ms == 0 || ms > SVC_PIT_MAX_MS)
		return SVC_ERR;
	count = PIT_HZ * ms / 1000;
	v = inb(SPEAKER_PORT);
	outb(SPEAKER_PORT, (v & ~SPK_DATA) | SPK_GATE);
	outb(PIT_CMD, PIT_CH2_ONESHOT);
	outb(PIT_CH2_DATA, count & 0xff);
	outb(PIT_CH2_DATA, count >> 8);	/* counting starts here */
	if (inb(SPEAKER_PORT) & SPK_OUT2)
		return SVC_ERR;		/* mode 0 starts low: no working PIT */
	t0 = rdtsc_r0();
	for (unsigned int spin = 0; spin < PIT_SPIN_MAX; spin++) {
		if (inb(SPEAKER_PORT) & SPK_OUT2)
			return 0;
		if (rdtsc_r0() - t0 > PIT_TSC_MAX)
			break;
	}
	return SVC_ERR;
}

static uint64_t pci_read(uint64_t addr, uint64_t size)
{
	uint16_t port = PCI_CFG_DATA + (addr & 3);

	outl(PCI_CFG_ADDR, PCI_CFG_ENABLE | (addr & 0x00fffffc));
	switch (size) {
	case 1:
		return inb(port);
	case 2:
		return inw(port);
	case 4:
		return inl(PCI_CFG_DATA);
	}
	return SVC_ERR;
}

static uint64_t pci_write(uint64_t addr, uint64_t size, uint64_t val)
{
	uint16_t port = PCI_CFG_DATA + (addr & 3);

	outl(PCI_CFG_ADDR, PCI_CFG_ENABLE | (addr & 0x00fffffc));
	switch (size) {
	case 1:
		outb(port, val);
		return 0;
	case 2:
		outw(port, val);
		return 0;
	case 4:
		outl(PCI_CFG_DATA, val);
		return 0;
	}
	return SVC_ERR;
}

uint64_t svc_dispatch(uint64_t nr, uint64_t a0, uint64_t a1, uint64_t a2)
{
	switch (nr) {
	case SVC_INB:
		return inb(a0);
	case SVC_INW:
		return inw(a0);
	case SVC_INL:
		return inl(a0);
	case SVC_OUTB:
		outb(a0, a1);
		return 0;
	case SVC_OUTW:
		outw(a0, a1);
		return 0;
	case SVC_OUTL:
		outl(a0, a1);
		return 0;
	case SVC_CONSOLE_WRITE:
		if (a1 > SVC_CONSOLE_MAX)
			a1 = SVC_CONSOLE_MAX;
		serial_write_r0((const char *)a0, a1);
		return 0;
	case SVC_EXIT:
		r0_exit(a0);
	case SVC_PIT_WAIT:
		return pit_wait(a0);
	case SVC_PCI_READ:
		return pci_read(a0, a1);
	case SVC_PCI_WRITE:
		return pci_write(a0, a1, a2);
	case SVC_MAP:
		if (a0 + a1 < a0)
			return SVC_ERR;
		return identity_map(a0, a0 + a1) ? SVC_ERR : 0;
	case SVC_IDLE:
		/* STI's one-instruction shadow covers HLT: no wake-up lost. */
		__asm__ volatile("sti; hlt; cli" ::: "memory");
		return 0;
	}
	return SVC_ERR;
}
