/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Events leave the VM core through one sink the VMM installs (main.c:
 * the QMP socket), so that device emulation and migration report what
 * happens without knowing who listens.
 */
#include "vmm.h"

void vm_event(struct vm *vm, const char *name, struct json_object *data)
{
	if (vm->event_fn)
		vm->event_fn(vm->event_opaque, name, data);
}
