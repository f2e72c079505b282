/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * system_reset: the VM back to how it booted (see reset.c).
 *
 * vm_reset_snapshot() is called once, for a VM booted from --kernel,
 * after the loader and before any vCPU ran. vm_system_reset() returns:
 * 0, reset; 1, reset, but a device failed its own reset (err names it);
 * -errno with the reason in err and nothing done: no snapshot (an
 * incoming migration or a live update started this process: nothing to
 * boot), a migration in progress or done; or -errno after a failure
 * KVM or the memfd gave mid-way (the VM is shutting down then).
 */
#ifndef FERRY_VMM_RESET_H
#define FERRY_VMM_RESET_H

#include <stddef.h>

struct vm;

int vm_reset_snapshot(struct vm *vm, char *err, size_t errlen);
int vm_system_reset(struct vm *vm, char *err, size_t errlen);
void vm_reset_fini(struct vm *vm);

#endif /* FERRY_VMM_RESET_H */
