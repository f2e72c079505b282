/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * MSI-X table and PBA emulation, routed to KVM.
 *
 * Each vector owns an eventfd for its whole life; the device (server)
 * signals it. While the vector is enabled and unmasked, the eventfd is a
 * KVM irqfd on a GSI routed to the vector's (address, data), so an
 * interrupt never leaves the kernel. While it is masked (or unprogrammed)
 * the irqfd is detached and a poll thread drains the eventfd into the
 * Pending Bit Array; unmasking a pending vector injects it once with
 * vm_signal_msi(). No interrupt is lost on either transition: a count left
 * in the eventfd is either consumed by KVM when the irqfd is attached or
 * seen by the poll thread after it is detached.
 *
 * All functions are thread-safe (vCPU threads access the table, the QMP
 * thread may describe). Errors: 0 or -errno.
 */
#ifndef FERRY_VMM_MSIX_H
#define FERRY_VMM_MSIX_H

#include <stdbool.h>
#include <stdint.h>

struct vm;
struct msix;

#define MSIX_MAX_VECTORS	2048	/* the table size field's limit */

/*
 * Hand the vector eventfds to the device (fds, n = all vectors) or take
 * them back (fds NULL). Called with the MSI-X enable bit's transitions.
 */
typedef int (*msix_set_irqs_fn)(void *opaque, const int *fds, unsigned n);

/* adopt_fds (live update: the device holds them already) are taken,
 * whatever happens, and the msix starts frozen; NULL makes new ones. */
int msix_create(struct vm *vm, const char *id, unsigned nr_vectors,
		msix_set_irqs_fn set_irqs, void *opaque, const int *adopt_fds,
		struct msix **out);
/* Detaches irqfds, frees routes, takes the fds back from the device if
 * enabled, stops the poll thread, closes the eventfds. */
void msix_destroy(struct msix *m);
/* The same without touching the device or KVM: after a hand-over (or a
 * failed adoption), only this process's fds close. */
void msix_abandon(struct msix *m);

/*
 * Live update. freeze: every irqfd detached (detach false: left attached
 * -- the debug negative control) and nobody drains the eventfds, so a
 * signal the device raises from now on stays counted in its eventfd.
 * thaw: routed again; attaching an irqfd injects what it counted, the
 * poll thread drains the masked ones into the PBA. Nothing is lost and
 * nothing delivered twice as long as only one process thaws.
 */
void msix_freeze(struct msix *m, bool detach);
void msix_thaw(struct msix *m);

/* Byte sizes of the table and PBA as the guest sees them. */
uint64_t msix_table_size(const struct msix *m);
uint64_t msix_pba_size(const struct msix *m);
unsigned msix_nr_vectors(const struct msix *m);
bool msix_enabled(struct msix *m);

/* Guest accesses, offset relative to the table/PBA start; any size. */
void msix_table_access(struct msix *m, uint64_t offset, void *data,
		       unsigned size, bool is_write);
void msix_pba_access(struct msix *m, uint64_t offset, void *data,
		     unsigned size, bool is_write);

/* system_reset: disabled (the device's fds taken back), every entry as
 * at reset, nothing pending, the eventfds drained. NULL: no-op. */
void msix_reset(struct msix *m);

/* The capability's Message Control bits changed (enable, function mask). */
int msix_set_control(struct msix *m, bool enable, bool func_mask);

/* Vector's eventfd (for state transfer); -1 if out of range. */
int msix_vector_fd(struct msix *m, unsigned vector);
/* Whether vector's pending bit is set (tests, describe). */
bool msix_vector_pending(struct msix *m, unsigned vector);

/*
 * Migration state: enable, function mask, the table and the PBA, as one
 * blob of msix_state_size() bytes. msix_state_get() first drains every
 * eventfd that is not attached to KVM into the PBA, so a signal still
 * in flight when the device stopped is carried as a pending bit (an
 * attached one was already delivered into the LAPIC, which migrates with
 * the vCPU). msix_state_set() loads a blob into a fresh msix of the same
 * size, hands the eventfds to the device if enabled (unless
 * device_has_fds: live update) and routes every vector (unless frozen);
 * an unmasked pending vector is then delivered once.
 */
size_t msix_state_size(const struct msix *m);
void msix_state_get(struct msix *m, void *buf);
int msix_state_set(struct msix *m, const void *buf, size_t len,
		   bool device_has_fds);

#endif /* FERRY_VMM_MSIX_H */
