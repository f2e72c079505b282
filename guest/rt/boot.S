/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Multiboot v1 entry. The loader enters in 32-bit protected mode with
 * paging off (EAX = 0x2BADB002, EBX = info). Everything here runs
 * emulated on kvm_pvm, so it does the minimum: zero .bss, identity-map
 * 0..4 GiB with 2 MiB pages (RAM below 3 GiB plus the PCI/LAPIC MMIO
 * window, user-accessible because the workload runs in ring 3), switch
 * to long mode and call kmain() in C.
 *
 * Application processors come here too, later: INIT-SIPI-SIPI starts
 * them in real mode at ap_trampoline (copied below 1 MiB by smp.c);
 * it enters 32-bit protected mode and jumps to ap_start32, which takes
 * the BSP's road into long mode with the BSP's page tables and calls
 * ap_kmain() on the CPU's own kernel stack.
 */

#include "boot_asm.h"

#define MB_MAGIC	0x1badb002
#define MB_FLAGS	0x00000003	/* page-align modules, memory info */

#define PTE_P		0x001
#define PTE_RW		0x002
#define PTE_US		0x004
#define PTE_PS		0x080
#define PDE_2M		(PTE_P | PTE_RW | PTE_US | PTE_PS)
#define PTE_TABLE	(PTE_P | PTE_RW | PTE_US)

#define CR0_PE		0x00000001
#define CR0_MP		0x00000002
#define CR0_EM		0x00000004
#define CR0_ET		0x00000010
#define CR0_PG		0x80000000
#define CR4_PAE		0x00000020
#define CR4_OSFXSR	0x00000200
#define CR4_OSXMMEXCPT	0x00000400
#define MSR_EFER	0xc0000080
#define EFER_LME	0x00000100

#define LOW_PDS		4		/* 4 x 1 GiB */

	.section .multiboot, "a"
	.align 4
	.long MB_MAGIC
	.long MB_FLAGS
	.long -(MB_MAGIC + MB_FLAGS)

	.section .bss
	.align 4096
	.globl pml4, pdpt, pd_low
pml4:	.skip 4096
pdpt:	.skip 4096
pd_low:	.skip 4096 * LOW_PDS

	.section .data
	.align 16
gdt:
	.quad 0
	.quad 0x00af9a000000ffff	/* 0x08 kernel code, 64-bit */
	.quad 0x00cf92000000ffff	/* 0x10 kernel data */
	.quad 0x00cff2000000ffff	/* 0x18 user data, DPL 3 */
	.quad 0x00affa000000ffff	/* 0x20 user code, 64-bit, DPL 3 */
	.quad 0x00cf9a000000ffff	/* 0x28 kernel code, 32-bit (APs) */
	.globl gdt_tss
gdt_tss:
	.skip 16 * GUEST_MAX_CPUS	/* 0x30 + 16 * cpu: TSS, filled by
					 * tss_setup() */
gdt_end:
	.globl gdt_ptr
gdt_ptr:
	.word gdt_end - gdt - 1
	.quad gdt

boot_magic:	.long 0
boot_mbi:	.long 0

	.section .text.boot32, "ax"
	.code32
	.globl _start32
_start32:
	cli
	cld
	movl	%eax, %esi
	movl	%ebx, %ebp

	/* The loader should zero .bss; do it anyway, it holds page tables. */
	movl	$__bss_start, %edi
	movl	$__bss_end, %ecx
	subl	%edi, %ecx
	shrl	$2, %ecx
	xorl	%eax, %eax
	rep stosl

	movl	%esi, boot_magic
	movl	%ebp, boot_mbi

	movl	$pdpt + PTE_TABLE, pml4

	movl	$pd_low + PTE_TABLE, %eax
	movl	$pdpt, %edi
	movl	$LOW_PDS, %ecx
1:	movl	%eax, (%edi)
	addl	$4096, %eax
	addl	$8, %edi
	loop	1b

	movl	$PDE_2M, %eax
	movl	$pd_low, %edi
	movl	$512 * LOW_PDS, %ecx
2:	movl	%eax, (%edi)
	addl	$0x200000, %eax
	addl	$8, %edi
	loop	2b

	lgdt	gdt_ptr
	movl	$kstack_top, %esp	/* for long_mode_enter's lret */
	movl	$start64, %edi
	jmp	long_mode_enter

/*
 * Shared by the BSP and the APs: paging with pml4, long mode, then a far
 * jump to the 64-bit address in EDI. Paging and EFER are per CPU; the
 * tables are the BSP's, already built.
 */
long_mode_enter:
	movl	$CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT, %eax
	movl	%eax, %cr4
	movl	$pml4, %eax
	movl	%eax, %cr3
	movl	$MSR_EFER, %ecx
	rdmsr
	orl	$EFER_LME, %eax
	wrmsr
	movl	%cr0, %eax
	andl	$~CR0_EM, %eax
	orl	$CR0_PG | CR0_PE | CR0_MP, %eax
	movl	%eax, %cr0
	pushl	$0x08
	pushl	%edi
	lret

/* An AP, from ap_trampoline: protected mode, flat segments, no stack. */
	.globl ap_start32
ap_start32:
	movl	$0x10, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	/* lret needs a stack: borrow this AP's kernel stack, found
	 * from its initial APIC id like in ap_start64. */
	movl	$1, %eax
	cpuid
	shrl	$24, %ebx
	cmpl	$GUEST_MAX_CPUS, %ebx
	jae	4f
	incl	%ebx
	shll	$KSTACK_SHIFT, %ebx
	leal	kstacks(%ebx), %esp
	movl	$ap_start64, %edi
	jmp	long_mode_enter
4:	cli
	hlt
	jmp	4b

	.code64
start64:
	movq	$kstack_top, %rsp
	call	segs_load
	movl	boot_magic, %edi
	movl	boot_mbi, %esi
	call	kmain
3:	hlt
	jmp	3b

ap_start64:
	movl	%esp, %esp		/* zero-extends the 32-bit stack */
	call	segs_load
	movl	$1, %eax
	cpuid
	shrl	$24, %ebx
	movl	%ebx, %edi
	call	ap_kmain
5:	hlt
	jmp	5b

segs_load:
	movl	$0x10, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %ss
	movl	%eax, %fs
	movl	%eax, %gs
	ret

/*
 * The real-mode start of an AP, assembled here and copied to
 * AP_TRAMPOLINE_ADDR by smp.c: CS = AP_TRAMPOLINE_ADDR >> 4, IP = 0.
 * Load the GDT, set CR0.PE, far jump to 32-bit code. Addresses inside
 * the copy are relative to its start.
 */
	.section .rodata
	.code16
	.globl ap_trampoline, ap_trampoline_end
ap_trampoline:
	cli
	cld
	movw	%cs, %ax
	movw	%ax, %ds
	lgdtl	ap_tramp_gdtr - ap_trampoline
	movl	$CR0_PE | CR0_ET, %eax	/* and caches on: INIT set CD, NW */
	movl	%eax, %cr0
	ljmpl	$CODE32_SEL_ASM, $ap_start32
	.align 4
ap_tramp_gdtr:
	.word	gdt_end - gdt - 1
	.long	gdt
ap_trampoline_end:
	.code64
