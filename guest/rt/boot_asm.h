/* SPDX-License-Identifier: BSD-3-Clause */
/* Constants shared by the assembly files and C (plain numbers only). */
#ifndef GUEST_BOOT_ASM_H
#define GUEST_BOOT_ASM_H

#define KSTACK_SHIFT		14
#define KSTACK_SIZE		(1 << KSTACK_SHIFT)
#define USTACK_SIZE		65536
#define DFSTACK_SIZE		4096
#define VEC_ENTRY_SIZE_ASM	16
#define SPURIOUS_VECTOR_ASM	0xff
#define USER_DS_ASM		0x1b
#define USER_CS_ASM		0x23
#define CODE32_SEL_ASM		0x28	/* flat 32-bit code, for AP start-up */
#define TSS_SEL_ASM		0x30	/* CPU i's TSS: TSS_SEL_ASM + 16 * i */

/* CPUs the guests bring up; APIC ids 0..GUEST_MAX_CPUS-1. */
#define GUEST_MAX_CPUS		16
/* Where an AP starts after INIT-SIPI-SIPI: real mode, CS = vector << 8. */
#define AP_TRAMPOLINE_ADDR	0x8000
#define AP_SIPI_VECTOR		(AP_TRAMPOLINE_ADDR >> 12)

#endif /* GUEST_BOOT_ASM_H */
