/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * A passthrough device's INTx line, routed to KVM's in-kernel IOAPIC.
 *
 * INTx is a level. The device (server) writes the trigger eventfd when
 * its level goes up and masks itself (VFIO's automask); a KVM irqfd with
 * a resampler raises the IOAPIC pin. When the guest EOIs the interrupt,
 * KVM lowers the pin and signals the resample eventfd, which the device
 * watches: it unmasks and, if its level is still up, writes the trigger
 * again. So nothing is delivered twice and a level still up is never
 * lost, without the VMM on the path.
 *
 * The line is either on (the device holds both eventfds, the irqfd is
 * attached) or off (neither: the guest enabled MSI or MSI-X, or set
 * INTx Disable in the command register). While the irqfd is detached
 * (frozen for live update) a trigger waits in its eventfd; attaching
 * again also signals the resample eventfd once, so a level that went up
 * or stayed up meanwhile is asserted again by the device itself.
 *
 * All functions are thread-safe. Errors: 0 or -errno.
 */
#ifndef FERRY_VMM_INTX_H
#define FERRY_VMM_INTX_H

#include <stdbool.h>

struct vm;
struct intx;

/* The device's side: hand it the trigger and (level) resample eventfds
 * and unmask (enable), or take them back (disable). */
struct intx_ops {
	int (*enable)(void *opaque, int trigger_fd, int resample_fd);
	int (*disable)(void *opaque);
};

/*
 * gsi: an IOAPIC pin (< 24). level: the device automasks and unmasks on
 * the resample eventfd (VFIO's AUTOMASKED, as kernel vfio-pci and
 * ferry's server); without it (libvfio-user's edge INTx) each trigger
 * is a pulse on the pin and there is no resampler. adopt_fds (live update: {trigger,
 * resample}, the device holds them already with the line in the state
 * the saved PCI state says) are taken whatever happens, and the line
 * starts adopted and frozen: intx_set() then records the state without
 * a word to the device until intx_thaw(). NULL makes new eventfds; the
 * line starts off.
 */
int intx_create(struct vm *vm, const char *id, unsigned gsi, bool level,
		const struct intx_ops *ops, void *opaque,
		const int *adopt_fds, struct intx **out);
/* Off (device told unless quiet: handed over, or never taken over),
 * irqfd detached, eventfds closed. NULL is a no-op. */
void intx_destroy(struct intx *x, bool quiet);

/* Turn the line on or off; a failure leaves it off and is logged. */
int intx_set(struct intx *x, bool on);
bool intx_is_on(struct intx *x);
unsigned intx_gsi(const struct intx *x);
bool intx_is_level(const struct intx *x);
/* The eventfds (live update hands them over): 0 trigger, 1 resample. */
int intx_fd(const struct intx *x, unsigned which);

/* Live update: see msix_freeze()/msix_thaw(); detach false leaves the
 * irqfd attached (the debug negative control). */
void intx_freeze(struct intx *x, bool detach);
void intx_thaw(struct intx *x);

#endif /* FERRY_VMM_INTX_H */
