/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * IDT entry points, the UD2 service gate and the drop to ring 3.
 *
 * Every vector has a 16-byte entry point at vec_entries + 16 * vector. Exceptions
 * 0..31 are fatal except the #UD raised by svc_call's UD2. Vectors 32..255
 * only count and EOI: ring-0 time is emulated on kvm_pvm, so an interrupt
 * must cost a handful of instructions.
 */
#include "boot_asm.h"

	.section .bss
	.align 64
	.globl irq_counts
irq_counts:
	.skip 256 * 8

	.section .data
	.align 8
	.globl lapic_eoi_reg
lapic_eoi_reg:
	.quad 0xfee000b0

	.section .stacks, "aw", @nobits
	.align 4096
	.skip KSTACK_SIZE
	.globl kstack_top
kstack_top:
	.skip USTACK_SIZE
	.globl ustack_top
ustack_top:

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

/* Count, EOI (not for the spurious vector), return. */
irq_common:
	pushq	%rax
	pushq	%rdx
	movq	16(%rsp), %rax
	lock incq irq_counts(,%rax,8)
	cmpl	$SPURIOUS_VECTOR_ASM, %eax
	je	3f
	movq	lapic_eoi_reg(%rip), %rdx
	movl	$0, (%rdx)
3:	popq	%rdx
	popq	%rax
	addq	$8, %rsp
	iretq

	.globl svc_call, svc_ud2
svc_call:
svc_ud2:
	ud2
	ret

/* enter_user(rip, rsp): IRETQ to ring 3 with interrupts enabled. */
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
	iretq
