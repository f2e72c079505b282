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

#include <stddef.h>

struct vm;
struct pci_bus;
struct vfio_user_pci;
struct json_object;

/* Connect to socket_path and plug the device into bus. On failure returns
 * -errno and writes a human-readable reason to err (errlen bytes). */
int vfio_user_pci_create(struct vm *vm, struct pci_bus *bus,
			 const char *id, const char *socket_path,
			 struct vfio_user_pci **out, char *err, size_t errlen);
void vfio_user_pci_destroy(struct vfio_user_pci *dev);
/* Describe the device for QMP (id, socket, BARs, vectors, state). */
struct json_object *vfio_user_pci_describe(struct vfio_user_pci *dev);

#endif /* FERRY_VMM_VFIO_USER_PCI_H */
