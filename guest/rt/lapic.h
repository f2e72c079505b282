/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Local APIC in xAPIC mode at its default base, driven by MMIO from
 * ring 3 (the page is mapped user-accessible). The interrupt entry points in
 * entry.S count every vector in irq_counts[] and EOI; this file only
 * software-enables the APIC so MSIs are accepted, sends IPIs, and sets
 * the per-vector hooks of level-triggered lines.
 */
#ifndef GUEST_LAPIC_H
#define GUEST_LAPIC_H

#include <stdint.h>

#define LAPIC_BASE		0xfee00000ull
#define LAPIC_ID		0x020
#define LAPIC_TPR		0x080
#define LAPIC_EOI		0x0b0
#define LAPIC_SVR		0x0f0
#define LAPIC_ICR_LO		0x300
#define LAPIC_ICR_HI		0x310
#define LAPIC_ICR_PENDING	0x1000	/* delivery status: send pending */
#define LAPIC_SVR_ENABLE	0x100
#define SPURIOUS_VECTOR		0xff
#define MSI_ADDR_BASE		0xfee00000u
#define MSI_ADDR_DEST_SHIFT	12

void lapic_enable(void);
uint32_t lapic_id(void);
uint64_t irq_count(unsigned int vector);
/*
 * Run hook(vector, cpu) in ring 0 (interrupts off, emulated on kvm_pvm:
 * keep it to a few register accesses) for every interrupt of vector,
 * after it is counted and before the EOI: what a level-triggered line
 * needs, since the LAPIC's EOI of a level vector reaches the IOAPIC and
 * the line is sampled again. hook may be 0 (count and EOI only).
 */
void irq_set_hook(unsigned int vector, void (*hook)(unsigned int vector,
						    unsigned int cpu));
/* Send an IPI to APIC id dest (ICR high, then low); 0 once the LAPIC
 * reports it sent, -1 if it stays pending. */
int lapic_icr_send(uint32_t dest, uint32_t icr_lo);

#endif /* GUEST_LAPIC_H */
