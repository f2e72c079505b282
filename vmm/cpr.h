/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Live update (CPR) in ferry-vmm: what the old process hands over and
 * how the new one builds the same VM from it (docs/cpr.md).
 *
 * The old process registers its fds -- guest RAM's memfd and, per
 * device, the vfio-user connection, the mmap'able regions' fds and the
 * MSI-X eventfds -- and a description (JSON: the machine's size and each
 * device as the device described itself when it was created, its slot)
 * in a ferry/cpr_fds.h registry. cpr-transfer sends the registry to the
 * new process's cpr channel; cpr-exec leaves the fds open across exec()
 * and names the registry's memfd in FERRY_CPR_EXEC_STATE.
 *
 * The new process takes the registry before it builds anything
 * (cpr_in_*), builds its KVM VM over the same memfd and adopts each
 * device without a message to it; the migration stream then brings the
 * VMM's state, and at COMMIT the devices are taken over (their
 * interrupts, held in the eventfds meanwhile, delivered).
 */
#ifndef FERRY_VMM_CPR_H
#define FERRY_VMM_CPR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/mig_engine.h"
#include "ferry/util.h"

#define CPR_EXEC_ENV		"FERRY_CPR_EXEC_STATE"
#define CPR_ID_LEN		32

struct vm;
struct cpr_fds;
struct vfio_pci;
struct pci_bus;
struct json_object;

/* The new process's side: what it was handed. */
struct cpr_in {
	struct cpr_fds *reg;
	struct json_object *desc;
	enum mig_mode mode;
	char id[CPR_ID_LEN + 1];
};

/* cpr-transfer: listen on path (a unix socket, acc's policy), take the
 * first old process's registry. Waits until it comes, or SIGTERM/SIGINT
 * (-EINTR). */
int cpr_in_receive(const char *path, const struct sock_access *acc,
		   struct cpr_in *in, char *err, size_t errlen);
/* cpr-exec: the registry named in the environment, if there is one
 * (*found false otherwise, and 0). */
int cpr_in_from_exec(struct cpr_in *in, bool *found, char *err,
		     size_t errlen);
/* The command line must build the old process's machine. */
int cpr_in_check(struct cpr_in *in, uint64_t memory, unsigned cpus,
		 unsigned nr_devs, char *err, size_t errlen);
/* Guest RAM's memfd (the caller's now). */
int cpr_in_take_ram(struct cpr_in *in);
/* Device i, adopted as the proxy the old process had. */
int cpr_in_adopt_device(struct vm *vm, struct pci_bus *bus,
			struct cpr_in *in, unsigned i, const char *id,
			const char *location, struct vfio_pci **out,
			char *err, size_t errlen);
/* Fds nobody took are closed (logged: the two sides disagree). */
void cpr_in_free(struct cpr_in *in);

/* The old process's side (the engine's host ops, mig_host.c). */
int vm_cpr_prepare(struct vm *vm, struct cpr_fds *reg, const char *id,
		   enum mig_mode mode, char *err, size_t errlen);
/* vCPUs paused: every device's interrupts held, no request in flight.
 * detach false: irqfds stay attached (the negative control); gap_ms: a
 * pause added to widen the window (debug). */
int vm_cpr_freeze(struct vm *vm, bool detach, unsigned gap_ms, char *err,
		  size_t errlen);
void vm_cpr_thaw(struct vm *vm);
void vm_cpr_release(struct vm *vm);
/* Replace this process with argv (execvp), reg's fds kept open for it;
 * returns only on failure, with every fd as before. */
int vm_cpr_exec(struct vm *vm, struct cpr_fds *reg, char *const *argv,
		char *err, size_t errlen);
/* The new process at COMMIT: take the devices over. */
int vm_cpr_activate(struct vm *vm, char *err, size_t errlen);

#endif /* FERRY_VMM_CPR_H */
