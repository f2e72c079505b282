/* SPDX-License-Identifier: BSD-3-Clause */
/* Constants shared by the assembly files and C (plain numbers only). */
#ifndef GUEST_BOOT_ASM_H
#define GUEST_BOOT_ASM_H

#define KSTACK_SIZE		16384
#define USTACK_SIZE		65536
#define VEC_ENTRY_SIZE_ASM	16
#define SPURIOUS_VECTOR_ASM	0xff
#define USER_DS_ASM		0x1b
#define USER_CS_ASM		0x23

#endif /* GUEST_BOOT_ASM_H */
