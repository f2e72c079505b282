/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Ring-3 -> ring-0 service calls. kvm_pvm gives ring 3 no working INT n,
 * SYSCALL or port I/O, but exceptions into the IDT and IRETQ back work:
 * svc_call() is a UD2 at a known address; the #UD entry recognises that
 * RIP, runs svc_dispatch() with the call's arguments still in registers
 * and returns past the UD2 with the result in RAX. Each call is an
 * emulated ring-0 round trip, so callers batch work per call.
 */
#ifndef GUEST_SVC_H
#define GUEST_SVC_H

#include <stdint.h>

enum svc_nr {
	SVC_INB = 1,		/* a0 = port */
	SVC_INW,
	SVC_INL,
	SVC_OUTB,		/* a0 = port, a1 = value */
	SVC_OUTW,
	SVC_OUTL,
	SVC_CONSOLE_WRITE,	/* a0 = buffer, a1 = length */
	SVC_EXIT,		/* a0 = code for the exit port; no return */
	SVC_PIT_WAIT,		/* a0 = ms (1..50): PIT one-shot, spin to end */
	SVC_PCI_READ,		/* a0 = cf8 address | offset, a1 = size */
	SVC_PCI_WRITE,		/* a0 = address, a1 = size, a2 = value */
	SVC_MAP,		/* a0 = phys, a1 = length: identity map */
	SVC_IDLE,		/* HLT until an interrupt has been taken */
};

#define SVC_CONSOLE_MAX	4096u
#define SVC_PIT_MAX_MS	50u
#define SVC_ERR		(~0ull)

uint64_t svc_call(uint64_t nr, uint64_t a0, uint64_t a1, uint64_t a2);
uint64_t svc_dispatch(uint64_t nr, uint64_t a0, uint64_t a1, uint64_t a2);

#endif /* GUEST_SVC_H */
