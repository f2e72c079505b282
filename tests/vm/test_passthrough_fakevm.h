/* SPDX-License-Identifier: BSD-3-Clause */
/* A recording vm.h implementation for the passthrough unit test. */
#ifndef FERRY_TEST_PASSTHROUGH_FAKEVM_H
#define FERRY_TEST_PASSTHROUGH_FAKEVM_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "vm.h"

#define FAKE_MAX_MMIO	16
#define FAKE_MAX_SLOTS	32
#define FAKE_MAX_GSI	64

struct fake_mmio {
	bool used;
	uint64_t base, len;
	vm_io_fn fn;
	void *opaque;
};

struct fake_slot {
	bool used;
	uint64_t gpa, size;
	void *hva;
};

struct fake_vm {
	bool live;		/* between init and fini */
	pthread_mutex_t lock;
	int ram_fd;
	void *ram;
	struct vm_ram_range range;

	struct fake_mmio pio[FAKE_MAX_MMIO];	/* the same kind of window */
	struct fake_mmio mmio[FAKE_MAX_MMIO];
	struct fake_slot slots[FAKE_MAX_SLOTS];
	unsigned nr_slots;

	int next_gsi;
	int nr_routes;
	uint64_t route_addr[FAKE_MAX_GSI];
	uint32_t route_data[FAKE_MAX_GSI];
	int irqfd_of_gsi[FAKE_MAX_GSI];
	int resample_of_gsi[FAKE_MAX_GSI];	/* level (INTx) irqfds */
	int nr_irqfds;
	unsigned nr_signalled;
	uint64_t last_msi_addr;
	uint32_t last_msi_data;
	uint64_t dirty_bytes;
	char *last_event;
	unsigned nr_events;
};

extern struct fake_vm fake_vm;

void fake_vm_init(uint64_t ram_size);
void fake_vm_fini(void);
struct vm *fake_vm_ptr(void);
/* Dispatch an access like a vCPU exit would; false if nothing is there. */
bool fake_vm_mmio(uint64_t gpa, void *data, unsigned size, bool is_write);
void fake_vm_pio(uint16_t port, void *data, unsigned size, bool is_write);
const struct fake_slot *fake_vm_slot_at(uint64_t gpa);

#endif /* FERRY_TEST_PASSTHROUGH_FAKEVM_H */
