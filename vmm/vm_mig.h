/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * A VM's migration state, shared by ferry-vmm's migration files:
 * migration.c (QMP face, engine events) creates it, incoming.c (the
 * listener) and mig_host.c (the host ops the engine calls) work on it.
 * One per VM, at vm->mig.
 */
#ifndef FERRY_VMM_VM_MIG_H
#define FERRY_VMM_VM_MIG_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include "ferry/mig_engine.h"
#include "vmm.h"

/* VMM state taken from the stream, applied when it is complete. */
struct vm_mig_loaded {
	void *vcpu[VM_MAX_CPUS];
	size_t vcpu_len[VM_MAX_CPUS];
	void *kstate, *serial;
	size_t kstate_len, serial_len;
	void *pci[VM_MAX_DEVICES];
	size_t pci_len[VM_MAX_DEVICES];
};

struct vm_mig {
	struct vm *vm;
	struct mig_engine *engine;
	bool return_path;		/* capability; always on for sockets */
	bool events;			/* capability: MIGRATION(_PASS) events
					 * (default on; QEMU's off) */

	/* incoming.c: armed by --incoming, listening once the URI is
	 * known (the engine owns the listener) */
	pthread_mutex_t inc_lock;
	bool inc_armed;
	bool inc_listening;

	struct vm_mig_loaded loaded;	/* mig_host.c */

	/* After an outgoing migration handed the guest over: QEMU's
	 * postmigrate (vCPUs and devices stopped, figures queryable) until
	 * quit -- or exit at once with --exit-after-migrate. */
	bool exit_after_migrate;
	atomic_bool postmigrate;

	/* live update (migration.c sets them, mig_host.c uses them) */
	char **cpr_exec_argv;		/* cpr-exec-command, NULL-ended */
	bool cpr_keep_irqfds;		/* debug: the negative control */
	bool skip_ap_lapic;		/* debug: vCPU 1's LAPIC not loaded */
	unsigned cpr_gap_ms;		/* debug: a longer freeze */
};

/* mig_host.c: the engine's view of the VM (host = struct vm_mig *). */
extern const struct mig_host_ops vm_mig_host_ops;

#endif /* FERRY_VMM_VM_MIG_H */
