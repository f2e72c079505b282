/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * IDT entry points, the UD2 service gate and the drop to ring 3.
 *
 * Every vector has a 16-byte entry point at vec_entries + 16 * vector. Exceptions
 * 0..31 are fatal except the #UD raised by svc_call's UD2. Vectors 32..255
 * count and EOI: ring-0 time is emulated on kvm_pvm, so an interrupt
 * must cost a handful of instructions. A vector with a hook in
 * irq_hooks[] (a level-triggered line: the device's status must be
 * cleared before the EOI) also calls hook(vector, cpu) in C, between the
 * count and the EOI.
 */
#include "boot_asm.h"

	.section .bss
	.align 64
	.globl irq_counts, irq_counts_cpu, irq_hooks
irq_counts:
	.skip 256 * 8
irq_counts_cpu:				/* [cpu][vector] */
	.skip GUEST_MAX_CPUS * 256 * 8
irq_hooks:				/* [vector]: 0 or hook(vector, cpu) */
	.skip 256 * 8

	.section .data
	.align 8
	.globl lapic_eoi_reg
lapic_eoi_reg:
	.quad 0xfee000b0

/* CPU i's kernel stack ends at kstacks + (i + 1) * KSTACK_SIZE, its
 * user stack at ustacks + (i + 1) * USTACK_SIZE; the BSP is CPU 0. */
	.section .stacks, "aw", @nobits
	.align 4096
	.globl kstacks, kstack_top, ustacks, ustack_top
kstacks:
	.skip KSTACK_SIZE
kstack_top:
	.skip KSTACK_SIZE * (GUEST_MAX_CPUS - 1)
ustacks:
	.skip USTACK_SIZE
ustack_top:
	.skip USTACK_SIZE * (GUEST_MAX_CPUS - 1)
/* A double fault switches to CPU i's dfstacks + (i + 1) * DFSTACK_SIZE
 * (IST 1): a kernel stack gone bad still gets a FAIL line, not a
 * triple fault that resets the vCPU and says nothing. */
	.globl dfstacks
dfstacks:
	.skip DFSTACK_SIZE * GUEST_MAX_CPUS

	.text
	.code64

/*
 * One entry point per vector, 16 bytes apart. Vectors that push an error code:
 * 8, 10-14, 17, 21, 29, 30; the others push a zero so the frame is the
 * same for trap_fatal().
 */
	.align VEC_ENTRY_SIZE_ASM
	.globl vec_entries
vec_entries:
	.set vecno, 0
	.rept 256
	.align VEC_ENTRY_SIZE_ASM
	.if vecno == 6
	jmp	ud_entry
	.elseif vecno == 8 || (vecno >= 10 && vecno <= 14) || vecno == 17 || vecno == 21 || vecno == 29 || vecno == 30
	pushq	$vecno
	jmp	exc_common
	.elseif vecno < 32
	pushq	$0
	pushq	$vecno
	jmp	exc_common
	.else
	pushq	$vecno
	jmp	irq_common
	.endif
	.set vecno, vecno + 1
	.endr

/*
 * #UD: if it is svc_call's UD2, serve it. svc_call's arguments are still
 * in RDI, RSI, RDX, RCX, exactly svc_dispatch's; the caller treats every
 * caller-saved register as clobbered, so nothing needs saving. The CPU
 * aligned RSP to 16 before pushing the 40-byte frame.
 */
ud_entry:
	cmpq	$svc_ud2, (%rsp)
	jne	1f
	subq	$8, %rsp
	call	svc_dispatch
	addq	$8, %rsp
	addq	$2, (%rsp)
	iretq
1:	pushq	$0
	pushq	$6
	jmp	exc_common

exc_common:
	pushq	%rax
	pushq	%rbx
	pushq	%rcx
	pushq	%rdx
	pushq	%rsi
	pushq	%rdi
	pushq	%rbp
	pushq	%r8
	pushq	%r9
	pushq	%r10
	pushq	%r11
	pushq	%r12
	pushq	%r13
	pushq	%r14
	pushq	%r15
	movq	%rsp, %rdi
	andq	$-16, %rsp
	call	trap_fatal
2:	cli
	hlt
	jmp	2b

/* Count (in all and for this CPU), call the vector's hook if it has
 * one, EOI (not for the spurious vector), return. Interrupts arrive only
 * in ring 3 (or in the ring-0 idle HLT), so RSP is on this CPU's kernel
 * stack and says which CPU this is. */
irq_common:
	pushq	%rax
	pushq	%rdx
	movq	16(%rsp), %rax
	lock incq irq_counts(,%rax,8)
	movq	%rsp, %rdx
	subq	$kstacks, %rdx
	shrq	$KSTACK_SHIFT, %rdx
	shlq	$8, %rdx
	addq	%rax, %rdx
	incq	irq_counts_cpu(,%rdx,8)
	cmpq	$0, irq_hooks(,%rax,8)
	jne	4f
5:	cmpl	$SPURIOUS_VECTOR_ASM, %eax
	je	3f
	movq	lapic_eoi_reg(%rip), %rdx
	movl	$0, (%rdx)
3:	popq	%rdx
	popq	%rax
	addq	$8, %rsp
	iretq
/* hook(vector, cpu) with the other caller-saved registers kept; RDX is
 * cpu * 256 + vector. Seven pushes after the frame, vector, RAX and RDX
 * leave RSP 8 off a 16-byte boundary: one more slot aligns the call. */
4:	pushq	%rcx
	pushq	%rsi
	pushq	%rdi
	pushq	%r8
	pushq	%r9
	pushq	%r10
	pushq	%r11
	subq	$8, %rsp
	movq	%rax, %rdi
	movq	%rdx, %rsi
	shrq	$8, %rsi
	call	*irq_hooks(,%rax,8)
	addq	$8, %rsp
	popq	%r11
	popq	%r10
	popq	%r9
	popq	%r8
	popq	%rdi
	popq	%rsi
	popq	%rcx
	movq	16(%rsp), %rax		/* the vector again */
	jmp	5b

	.globl svc_call, svc_ud2
svc_call:
svc_ud2:
	ud2
	ret

/* enter_user(rip, rsp, arg): IRETQ to ring 3 with interrupts enabled,
 * arg in RDI. */
	.globl enter_user
enter_user:
	movl	$USER_DS_ASM, %eax
	movl	%eax, %ds
	movl	%eax, %es
	movl	%eax, %fs
	movl	%eax, %gs
	pushq	$USER_DS_ASM
	pushq	%rsi
	pushq	$0x202
	pushq	$USER_CS_ASM
	pushq	%rdi
	movq	%rdx, %rdi
	iretq
