/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * vfio-pci-like proxy for a vfio-user device: connects to the device
 * server, builds a PCI function whose config space is read from the
 * device and virtualised where a VMM must (BARs, command register, MSI-X
 * capability), forwards trapped BAR accesses as REGION_READ/WRITE, maps
 * mmap'able areas into the guest as memory slots, emulates the MSI-X
 * table and PBA and routes vectors to KVM through irqfds on the eventfds
 * handed to the device with SET_IRQS, and DMA-maps guest RAM (memfd) to
 * the device.
 */
#ifndef FERRY_VMM_VFIO_USER_PCI_H
#define FERRY_VMM_VFIO_USER_PCI_H

#include <stdbool.h>
#include <stddef.h>

struct vm;
struct pci_bus;
struct vfio_user_pci;
struct json_object;

/* Connect to socket_path and plug the device into bus. On failure returns
 * -errno and writes a human-readable reason to err (errlen bytes); the
 * reason does not repeat the id or socket, the caller prints those. */
int vfio_user_pci_create(struct vm *vm, struct pci_bus *bus,
			 const char *id, const char *socket_path,
			 struct vfio_user_pci **out, char *err, size_t errlen);
void vfio_user_pci_destroy(struct vfio_user_pci *dev);
/* Describe the device for QMP (id, socket, BARs, vectors, state). */
struct json_object *vfio_user_pci_describe(struct vfio_user_pci *dev);
/*
 * Switch the device's "trap while saving" areas (ferry extension
 * capability) between direct guest mappings (trap false) and trapped
 * REGION_READ/WRITE access (trap true). Synchronous: when it returns,
 * every later guest access to those areas reaches the device server.
 * Call with trap true before entering a saving state (PRE_COPY) and with
 * false when saving ends. 0 or -errno.
 */
int vfio_user_pci_set_saving_traps(struct vfio_user_pci *dev, bool trap);

/* Migration (vmm/migration.c, incoming.c). */
struct vfu_client;
struct vfu_client *vfio_user_pci_client(struct vfio_user_pci *dev);
const char *vfio_user_pci_id(struct vfio_user_pci *dev);
/* What must be equal on source and destination: vendor/device ids, BAR
 * sizes, MSI-X vectors (the stream's CONFIG check compares it). */
struct json_object *vfio_user_pci_identity(struct vfio_user_pci *dev);
/* The guest-visible PCI state the VMM owns: command register, BAR
 * registers, MSI-X control, table and PBA (signals still sitting in an
 * unrouted vector's eventfd are folded into the PBA first). Load remaps
 * the BARs and hands the vector eventfds to the (resumed) device. */
int vfio_user_pci_save_state(struct vfio_user_pci *dev, void **blob,
			     size_t *len);
int vfio_user_pci_load_state(struct vfio_user_pci *dev, const void *blob,
			     size_t len, char *err, size_t errlen);

#endif /* FERRY_VMM_VFIO_USER_PCI_H */
