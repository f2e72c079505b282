/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Save and restore the KVM-held state of a VM for migration: every vCPU
 * (registers, special registers, FPU/XSAVE, XCRs, MSRs, LAPIC, pending
 * events, MP state, debug registers) and the VM-wide in-kernel devices
 * (PIC, IOAPIC, PIT, KVM clock).
 *
 * Blobs are TLV records { u32 tag; u32 len; u8 data[len] }. A loader
 * checks each record's length against the kernel struct it carries (or,
 * for MSRs, a bounded count) before using it; an unknown tag or a short
 * record rejects the blob. The kernel structs are the same on both ends
 * because source and destination run the same ferry on the same kind of
 * host; the stream's CONFIG check refuses anything else.
 *
 * Time: the guest TSC and KVM clock are carried with the source's
 * CLOCK_REALTIME; the loader adds the time that passed, so the guest's
 * clocks keep running across the move and a guest can measure the
 * downtime it really saw.
 *
 * Callers must have every vCPU out of KVM_RUN (vm_pause()).
 */
#ifndef FERRY_VMM_CPU_STATE_H
#define FERRY_VMM_CPU_STATE_H

#include <stddef.h>
#include <stdint.h>

#define CPU_STATE_MAX_MSRS	256

int vcpu_state_save(int kvm_fd, int vcpu_fd, void **blob, size_t *len);
/* VCPU_LOAD_SKIP_LAPIC: debug, the negative control of the multi-vCPU
 * tests -- leave the LAPIC as KVM_CREATE_VCPU made it (software-disabled,
 * nothing pending), as a VMM that forgot an AP's LAPIC would. */
#define VCPU_LOAD_SKIP_LAPIC	0x1u

int vcpu_state_load(int vcpu_fd, const void *blob, size_t len,
		    unsigned flags, char *err, size_t errlen);

int vm_kstate_save(int vm_fd, void **blob, size_t *len);
int vm_kstate_load(int vm_fd, const void *blob, size_t len,
		   char *err, size_t errlen);

#endif /* FERRY_VMM_CPU_STATE_H */
