/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The I/O APIC at its default base (0xfec00000), driven by MMIO from
 * ring 3 like the LAPIC: boot.S's identity map of 0..4 GiB covers its
 * page with the same user-accessible 2 MiB mapping (no cache attributes
 * in either: on a VMM both are emulated, every access traps). Indirect
 * access: the register index goes to IOREGSEL, the value through IOWIN;
 * the pair is not atomic, so one CPU programs it (the guests do it from
 * the BSP during set-up).
 */
#ifndef GUEST_IOAPIC_H
#define GUEST_IOAPIC_H

#include <stdbool.h>
#include <stdint.h>

#define IOAPIC_BASE		0xfec00000ull
#define IOAPIC_REGSEL		0x00
#define IOAPIC_WIN		0x10
#define IOAPIC_REG_VER		0x01	/* bits 23:16: highest entry */
#define IOAPIC_REG_RTE_LO(pin)	(0x10 + 2 * (pin))
#define IOAPIC_REG_RTE_HI(pin)	(0x11 + 2 * (pin))

/* Redirection entry, low half (delivery mode 000 fixed, destination mode
 * 0 physical, polarity 0 active-high when the bits are clear). */
#define IOAPIC_RTE_VECTOR	0x000000ffu
#define IOAPIC_RTE_DELMODE	0x00000700u
#define IOAPIC_RTE_LOGICAL	0x00000800u
#define IOAPIC_RTE_ACTIVE_LOW	0x00002000u
#define IOAPIC_RTE_LEVEL	0x00008000u
#define IOAPIC_RTE_MASKED	0x00010000u
#define IOAPIC_RTE_DEST_SHIFT	24	/* high half: APIC id */

uint32_t ioapic_read(unsigned int reg);
void ioapic_write(unsigned int reg, uint32_t val);
/* Redirection entries (pins); 0 if no I/O APIC answers there. */
unsigned int ioapic_pins(void);
/*
 * Route pin to vector on APIC id dest: fixed delivery, physical
 * destination, active-high, level- or edge-triggered, unmasked. The entry
 * is masked while its destination changes. Returns the low half read
 * back (the caller checks it took).
 */
uint32_t ioapic_route(unsigned int pin, unsigned int vector, unsigned int dest,
		      bool level);

#endif /* GUEST_IOAPIC_H */
