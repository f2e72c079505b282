/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Application processors, from ring 3. smp_start() wakes APs 1..n-1 with
 * INIT-SIPI-SIPI through the LAPIC's ICR (the LAPIC page is mapped
 * user-accessible); each comes up through boot.S's trampoline into ring
 * 3 on its own stacks and runs the workload's guest_ap_main(cpu). CPU
 * numbers are APIC ids: ferry and QEMU number vCPUs from 0.
 *
 * Interrupts are counted per CPU (entry.S); smp_ipi() sends a fixed
 * vector to one CPU, for workloads that check none is lost.
 */
#ifndef GUEST_SMP_H
#define GUEST_SMP_H

#include <stdint.h>

#include "boot_asm.h"

/* Start APs 1..n-1 and wait until each runs in ring 3. 0, or -1 after
 * saying FAIL with the CPU that did not come up. */
int smp_start(unsigned int n);
/* Online CPUs, the BSP included (1 before smp_start()). */
unsigned int smp_cpus(void);
/* A fixed vector to CPU cpu; 0, or -1 if the LAPIC never accepted it. */
int smp_ipi(unsigned int cpu, unsigned int vector);
/* Interrupts of this vector taken by CPU cpu. */
uint64_t irq_count_cpu(unsigned int cpu, unsigned int vector);
/* Wait for an interrupt (ring-0 HLT): an idle AP must not spin. */
void smp_idle(void);

/* The APs wait in smp_wait_go() (halted) until the BSP's smp_go(),
 * which wakes each with an IPI of SMP_WAKE_VECTOR. */
#define SMP_WAKE_VECTOR		0x30
void smp_go(void);
void smp_wait_go(void);

/* Provided by a workload that uses APs; the runtime's default returns
 * at once. The AP idles after it returns (its exit code is ignored:
 * the workload reports through its own shared state). */
int guest_ap_main(unsigned int cpu);

#endif /* GUEST_SMP_H */
