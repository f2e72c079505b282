/* SPDX-License-Identifier: BSD-3-Clause */
/* Entry of the vm-suite test kernel: multiboot v1 header, a stack, kmain. */
#define MB_MAGIC	0x1badb002
#define MB_FLAGS	0x00000003	/* page-align, memory info */

	.section .multiboot, "a"
	.align 4
	.long MB_MAGIC
	.long MB_FLAGS
	.long -(MB_MAGIC + MB_FLAGS)

	.text
	.code32
	.globl _start
_start:
	movl $stack_top, %esp
	pushl %ebx		/* multiboot info */
	pushl %eax		/* bootloader magic */
	call kmain
1:	hlt
	jmp 1b

	.bss
	.align 16
	.space 16384
stack_top:
	.section .note.GNU-stack, "", @progbits
