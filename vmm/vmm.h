/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * ferry-vmm private core: the struct vm that kvm.c, memory.c, dirty.c,
 * io.c, vcpu.c and main.c share. Device emulation sees only vm.h.
 *
 * Locking: slot_lock guards the memory slot table and the dirty state,
 * irq_lock the GSI routing table, io_lock the PIO/MMIO handler tables,
 * run_lock the vCPU run/pause protocol (see vcpu.c).
 */
#ifndef FERRY_VMM_VMM_H
#define FERRY_VMM_VMM_H

#include <linux/kvm.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "ferry/util.h"
#include "vm.h"

#define VM_PAGE_SIZE		4096ull
#define VM_MAX_CPUS		64
#define VM_MAX_SLOTS		64
#define VM_MAX_PIO		32
#define VM_MAX_MMIO		64
/* GSIs 0..23 are the IOAPIC pins (0..15 also the PIC); MSIs above. */
#define VM_IOAPIC_PINS		24
#define VM_FIRST_MSI_GSI	VM_IOAPIC_PINS
#define VM_MAX_GSI		1024
#define VM_MAX_ROUTES		(VM_MAX_GSI + 16)

/* Addresses KVM needs for its own structures; inside the hole below
 * 4 GiB, clear of the PCI window, the IOAPIC and the LAPIC. */
#define VM_TSS_ADDR		0xfffbd000ull
#define VM_IDENTITY_MAP_ADDR	0xfffbc000ull

/* Exit status for a VM that died (triple fault, KVM error, fatal device
 * error); usage errors exit 2. Guest-chosen statuses come from 0xf4. */
#define VM_EXIT_ERROR		1
#define VM_NAME_MAX		255
#define VM_UUID_LEN		36	/* 8-4-4-4-12 hex digits */

enum vm_run_state {
	VM_STATE_PRELAUNCH,
	VM_STATE_RUNNING,
	VM_STATE_PAUSED,
	VM_STATE_SHUTDOWN,
};

struct vm_slot {
	bool used;
	bool is_ram;
	uint64_t gpa;
	uint64_t size;
	void *hva;
	unsigned flags;		/* VM_MEM_* */
};

struct vm_io_handler {
	uint64_t base;
	uint64_t len;
	vm_io_fn fn;
	void *opaque;
};

struct vcpu {
	struct vm *vm;
	unsigned index;
	int fd;
	struct kvm_run *run;
	size_t run_size;
	pthread_t thread;
	bool thread_started;
	bool parked;		/* under run_lock: out of KVM_RUN on request */
	pid_t tid;		/* the thread's, once it runs (atomic) */
};

struct qmp;
struct vfio_pci;
struct pci_bus;
struct vm_mig;
struct vm_boot;
struct json_object;

typedef void (*vm_event_fn)(void *opaque, const char *name,
			    struct json_object *data);

#define VM_MAX_DEVICES		8

/* Something the main loop polls; epoll data.ptr points here. */
struct vm_poll_src {
	void (*fn)(struct vm_poll_src *src, uint32_t events);
};

struct vm {
	bool initialised;	/* vm_create() set up fds and locks */
	int kvm_fd;
	int vm_fd;
	int wake_fd;		/* eventfd: main loop has work (exit) */

	/* Guest RAM: one memfd mapped once, split into guest ranges. */
	int ram_fd;
	uint64_t ram_size;
	void *ram_hva;
	struct vm_ram_range ram[2];
	unsigned nr_ram;

	pthread_mutex_t slot_lock;
	struct vm_slot slots[VM_MAX_SLOTS];
	bool dirty_logging;
	/* KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: GET_DIRTY_LOG leaves pages
	 * dirty and write-enabled until vm_dirty_log_clear() (kvm.c). */
	bool dirty_manual;
	_Atomic uint64_t *dirty_marks;	/* vm_mark_dirty() bits */
	uint64_t dirty_words;

	pthread_mutex_t irq_lock;
	struct kvm_irq_routing *routing;	/* VM_MAX_ROUTES entries */
	uint8_t gsi_used[VM_MAX_GSI / 8];

	pthread_rwlock_t io_lock;
	struct vm_io_handler pio[VM_MAX_PIO];
	unsigned nr_pio;
	struct vm_io_handler mmio[VM_MAX_MMIO];
	unsigned nr_mmio;
	uint8_t pio_warned[65536 / 8];
	atomic_uint mmio_warned;

	unsigned nr_cpus;
	struct vcpu *vcpus;
	struct kvm_cpuid2 *cpuid;

	pthread_mutex_t run_lock;
	pthread_cond_t run_cond;
	unsigned pause_depth;	/* > 0: vCPUs must stay out of KVM_RUN */
	/* Under run_lock: `stop` before an incoming guest arrived (QEMU's
	 * autostart off): it arrives paused, whatever the source did. */
	bool start_paused;
	uint64_t pause_ns;	/* the last pause: kick to all parked */
	bool stopping;		/* vCPU threads must exit */
	enum vm_run_state state;

	/* Exit request: the first status wins. */
	atomic_bool exit_requested;
	int exit_status;
	const char *exit_reason;	/* QMP SHUTDOWN reason */

	struct qmp *qmp;
	struct serial *serial;
	struct pci_bus *pci;
	struct vfio_pci *devs[VM_MAX_DEVICES];
	unsigned nr_devs;
	struct vm_mig *mig;		/* migration.c */
	struct vm_boot *boot;		/* reset.c: NULL if not booted here */
	struct sock_access sock_access;	/* who may use our sockets */
	/* --name and --uuid, for query-name and query-uuid ("": none). */
	char name[VM_NAME_MAX + 1];
	char uuid[VM_UUID_LEN + 1];

	/* vm_event() goes here; set before any thread may emit. */
	vm_event_fn event_fn;
	void *event_opaque;
};

/* machine.c: the whole VM, KVM and guest RAM; destroy is safe on a
 * partly created one. ram_fd >= 0: guest RAM handed over by a live
 * update (taken, whatever happens). */
int vm_create(struct vm *vm, uint64_t ram_size, unsigned nr_cpus,
	      int ram_fd, char *err, size_t errlen);
void vm_destroy(struct vm *vm);

/* kvm.c */
int kvm_vm_create(struct vm *vm, unsigned nr_cpus, char *err,
		  size_t errlen);
void kvm_vm_destroy(struct vm *vm);
int vm_irq_init(struct vm *vm);
int vm_add_ram_slot(struct vm *vm, uint64_t gpa, uint64_t size, void *hva,
		    int *slot);

/* memory.c: adopt_fd >= 0 is the guest RAM to use (taken). */
int vm_ram_init(struct vm *vm, uint64_t size, int adopt_fd);
void vm_ram_fini(struct vm *vm);
int vm_slot_update_flags(struct vm *vm, int slot);

/* dirty.c: see vm.h for the public part */
void vm_dirty_fini(struct vm *vm);

/* io.c */
void vm_handle_pio(struct vm *vm, uint16_t port, void *data, unsigned size,
		   bool is_write);
void vm_handle_mmio(struct vm *vm, uint64_t gpa, void *data, unsigned size,
		    bool is_write);

/* vcpu.c */
int vcpus_create(struct vm *vm);
int vcpus_start(struct vm *vm);
void vcpus_stop(struct vm *vm);		/* join every thread */
void vcpus_destroy(struct vm *vm);
int vcpu_set_boot_state(struct vcpu *vcpu, uint32_t entry, uint32_t eax,
			uint32_t ebx);
/* Pause (nestable) / resume all vCPUs; return when none is in KVM_RUN. */
void vm_pause(struct vm *vm);
/* How long the last vm_pause() from the running state took, from the
 * kick to every vCPU thread parked (ns; 0 before the first). */
uint64_t vm_pause_ns(struct vm *vm);
void vm_resume(struct vm *vm);
/* QMP stop/cont: true if the run state changed. */
bool vm_user_stop(struct vm *vm);
bool vm_user_cont(struct vm *vm);
enum vm_run_state vm_run_state(struct vm *vm);
/* Ask the main loop to stop the VM and exit with status; vCPUs leave
 * KVM_RUN at once. reason is a QMP SHUTDOWN reason ("guest-shutdown"). */
void vm_request_exit(struct vm *vm, int status, const char *reason);
/* Destination: start the vCPUs of a VM whose state was just loaded
 * (run false: leave it paused, as the source was). */
int vm_incoming_run(struct vm *vm, bool run);

#endif /* FERRY_VMM_VMM_H */
