/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * vfio-pci-like proxy: turns a passthrough device (struct vdev, any
 * backend: vfio-user today) into a PCI function on the VM's bus. Config
 * space is read from the device and virtualised where a VMM must (BARs,
 * command register, MSI-X and MSI capabilities, Interrupt Line/Pin),
 * trapped BAR accesses are forwarded as region reads/writes, mmap'able
 * areas are mapped into the guest as memory slots, the MSI-X table and
 * PBA and the MSI capability are emulated and the vectors routed to KVM
 * through irqfds on the eventfds handed to the device, INTx raises an
 * IOAPIC pin through a resampling irqfd, and guest RAM (memfd) is
 * DMA-mapped to the device. The proxy
 * calls the device only through its ops table (ferry/vdev.h).
 */
#ifndef FERRY_VMM_VFIO_PCI_H
#define FERRY_VMM_VFIO_PCI_H

#include <stdbool.h>
#include <stddef.h>

struct vm;
struct pci_bus;
struct vfio_pci;
struct vdev;
struct json_object;
struct cpr_fds;

/* Plug an open device into bus; the proxy owns vdev from here on (it is
 * closed on failure too). On failure returns -errno and writes a
 * human-readable reason to err (errlen bytes); the reason does not
 * repeat the id or location, the caller prints those. */
int vfio_pci_create(struct vm *vm, struct pci_bus *bus, struct vdev *vdev,
		    struct vfio_pci **out, char *err, size_t errlen);
/* Destroy; a device adopted and never taken over, or handed over, is
 * left as it is (not a word to it). */
void vfio_pci_destroy(struct vfio_pci *dev);
/* Describe the device for QMP (id, backend, socket, BARs, vectors). */
struct json_object *vfio_pci_describe(struct vfio_pci *dev);
/*
 * Switch the device's "trap while saving" areas (ferry extension
 * capability) between direct guest mappings (trap false) and trapped
 * region access (trap true). Synchronous: when it returns, every later
 * guest access to those areas reaches the device. Call with trap true
 * before entering a saving state (PRE_COPY) and with false when saving
 * ends. 0 or -errno.
 */
int vfio_pci_set_saving_traps(struct vfio_pci *dev, bool trap);

/*
 * system_reset, in two steps around the reset of guest RAM and of KVM's
 * irqchip (vmm/reset.c), so that no interrupt is raised into an IOAPIC
 * about to be overwritten:
 * - quiesce: interrupts off (INTx irqfd detached, MSI/MSI-X disabled),
 *   then the device's own reset;
 * - restart: the proxy's registers (BARs, command, ROM, Interrupt Line,
 *   MSI/MSI-X) as this process placed them at creation, INTx on, the
 *   command register forwarded.
 * Each returns 0, or -errno with a reason in err: an adopted device has
 * no boot state (-EOPNOTSUPP, and restart leaves it alone); a device
 * whose server is gone (-ENOTCONN) still gets the proxy's registers.
 */
int vfio_pci_reset_quiesce(struct vfio_pci *dev, char *err, size_t errlen);
int vfio_pci_reset_restart(struct vfio_pci *dev, char *err, size_t errlen);

/* Whether the device's DMA mapping pins guest RAM's pages (kernel
 * VFIO): RAM it maps must then be rewritten in place, not punched. */
bool vfio_pci_pins_ram(struct vfio_pci *dev);

/* Migration (vmm/mig_host.c). */
struct vdev *vfio_pci_vdev(struct vfio_pci *dev);
const char *vfio_pci_id(struct vfio_pci *dev);
/* What must be equal on source and destination: vendor/device ids, BAR
 * sizes, MSI-X vectors (the stream's CONFIG check compares it). */
struct json_object *vfio_pci_identity(struct vfio_pci *dev);
/* The guest-visible PCI state the VMM owns: command register, BAR
 * registers, ROM BAR, Interrupt Line, MSI-X control, table and PBA, the
 * MSI capability and its vectors' state (signals still sitting in an
 * unrouted vector's eventfd are folded into the pending bits first).
 * Load remaps the BARs, hands the vector eventfds to the (resumed)
 * device and turns INTx on or off to match. */
int vfio_pci_save_state(struct vfio_pci *dev, void **blob, size_t *len);
int vfio_pci_load_state(struct vfio_pci *dev, const void *blob, size_t len,
			char *err, size_t errlen);

/*
 * Live update (CPR). cpr_save() registers the device's fds (connection,
 * mmap'able regions, MSI-X and MSI eventfds, INTx trigger and resample)
 * under prefix and describes the rest
 * (what the device said at creation, its slot); vfio_pci_adopt() builds
 * the same proxy in the new process from them, without asking the
 * device anything or telling it anything: it keeps its DMA mappings,
 * eventfds and state. An adopted device stays silent (interrupts frozen
 * in their eventfds) until cpr_thaw(). freeze: vCPUs paused, interrupts
 * held in the eventfds (detach_irqfds false: left attached, the debug
 * negative control), no request in flight; thaw: the owner talks to the
 * device again -- the old process after a failed hand-over, or the new
 * one taking over. release: handed over for good (destroy is quiet).
 */
int vfio_pci_cpr_save(struct vfio_pci *dev, struct cpr_fds *reg,
		      const char *prefix, struct json_object **desc);
int vfio_pci_adopt(struct vm *vm, struct pci_bus *bus, struct vdev *vdev,
		   struct cpr_fds *reg, const char *prefix,
		   struct json_object *desc, struct vfio_pci **out, char *err,
		   size_t errlen);
int vfio_pci_cpr_freeze(struct vfio_pci *dev, bool detach_irqfds);
/* The device's connection only (interrupts still held); thaw does both. */
int vfio_pci_cpr_resume(struct vfio_pci *dev);
int vfio_pci_cpr_thaw(struct vfio_pci *dev);
void vfio_pci_cpr_release(struct vfio_pci *dev);

#endif /* FERRY_VMM_VFIO_PCI_H */
