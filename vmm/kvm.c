// SPDX-License-Identifier: BSD-3-Clause
/*
 * The KVM VM: /dev/kvm, the VM fd, in-kernel irqchip and PIT, memory
 * slots, and the GSI routing table behind vm_msi_route_set/free. The
 * lowest layer of the VMM: guest RAM (memory.c) and its dirty log
 * (dirty.c) are built on its slots, and machine.c puts them together.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "ferry/log.h"
#include "ferry/util.h"
#include "vmm.h"

static int kvm_check_caps(struct vm *vm, char *err, size_t errlen)
{
	static const struct {
		int cap;
		const char *name;
	} required[] = {
		{ KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP" },
		{ KVM_CAP_PIT2, "KVM_CAP_PIT2" },
		{ KVM_CAP_IRQ_ROUTING, "KVM_CAP_IRQ_ROUTING" },
		{ KVM_CAP_IRQFD, "KVM_CAP_IRQFD" },
		{ KVM_CAP_SIGNAL_MSI, "KVM_CAP_SIGNAL_MSI" },
		{ KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT" },
		{ KVM_CAP_MP_STATE, "KVM_CAP_MP_STATE" },
		{ KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY" },
		{ KVM_CAP_SET_TSS_ADDR, "KVM_CAP_SET_TSS_ADDR" },
		{ KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID" },
	};
	unsigned i;

	for (i = 0; i < ARRAY_SIZE(required); i++) {
		if (ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, required[i].cap) <= 0) {
			snprintf(err, errlen, "/dev/kvm lacks %s",
				 required[i].name);
			return -ENOTSUP;
		}
	}
	return 0;
}

/*
 * Manual dirty-log protection, where KVM has it: GET_DIRTY_LOG then
 * leaves pages dirty and writable until the migration clears them, chunk
 * by chunk, right before it reads them (vm_dirty_log_clear()); with
 * INITIALLY_SET, turning logging on write-protects nothing at all. Under
 * shadow paging every re-protected page costs the guest a trap on its
 * next write, so this is protection only where it matters. Without it,
 * GET_DIRTY_LOG clears and re-protects everything at each sync.
 */
static void kvm_enable_manual_dirty_log(struct vm *vm)
{
	int caps = ioctl(vm->vm_fd, KVM_CHECK_EXTENSION,
			 KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2);
	struct kvm_enable_cap cap = {
		.cap = KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
	};

	if (caps <= 0 || !(caps & KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE))
		return;
	cap.args[0] = (uint64_t)caps & (KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE |
					KVM_DIRTY_LOG_INITIALLY_SET);
	if (ioctl(vm->vm_fd, KVM_ENABLE_CAP, &cap) == 0)
		vm->dirty_manual = true;
}

int kvm_vm_create(struct vm *vm, unsigned nr_cpus, char *err, size_t errlen)
{
	struct kvm_pit_config pit = { .flags = KVM_PIT_SPEAKER_DUMMY };
	uint64_t idmap = VM_IDENTITY_MAP_ADDR;
	int ret, api;

	vm->kvm_fd = vm->vm_fd = vm->wake_fd = -1;
	pthread_mutex_init(&vm->slot_lock, NULL);
	pthread_mutex_init(&vm->irq_lock, NULL);
	pthread_mutex_init(&vm->run_lock, NULL);
	pthread_cond_init(&vm->run_cond, NULL);
	pthread_rwlock_init(&vm->io_lock, NULL);
	vm->initialised = true;
	vm->nr_cpus = nr_cpus;
	vm->state = VM_STATE_PRELAUNCH;

	vm->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (vm->kvm_fd < 0) {
		ret = -errno;
		snprintf(err, errlen, "cannot open /dev/kvm: %s",
			 strerror(errno));
		return ret;
	}
	api = ioctl(vm->kvm_fd, KVM_GET_API_VERSION, 0);
	if (api != KVM_API_VERSION) {
		snprintf(err, errlen, "/dev/kvm has API version %d, need %d",
			 api, KVM_API_VERSION);
		return -ENOTSUP;
	}
	ret = kvm_check_caps(vm, err, errlen);
	if (ret)
		return ret;
	if ((int)nr_cpus > ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION,
				 KVM_CAP_MAX_VCPUS)) {
		snprintf(err, errlen, "KVM supports fewer than %u vCPUs",
			 nr_cpus);
		return -EINVAL;
	}

	vm->vm_fd = ioctl(vm->kvm_fd, KVM_CREATE_VM, 0);
	if (vm->vm_fd < 0) {
		ret = -errno;
		snprintf(err, errlen, "KVM_CREATE_VM: %s", strerror(errno));
		return ret;
	}
	kvm_enable_manual_dirty_log(vm);
	vm->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (vm->wake_fd < 0) {
		ret = -errno;
		snprintf(err, errlen, "eventfd: %s", strerror(errno));
		return ret;
	}
	/* Only needed by VMX, harmless elsewhere; must precede vCPUs. */
	if (ioctl(vm->vm_fd, KVM_SET_TSS_ADDR, (unsigned long)VM_TSS_ADDR) < 0 ||
	    ioctl(vm->vm_fd, KVM_SET_IDENTITY_MAP_ADDR, &idmap) < 0) {
		ret = -errno;
		snprintf(err, errlen, "KVM_SET_TSS_ADDR: %s", strerror(errno));
		return ret;
	}
	if (ioctl(vm->vm_fd, KVM_CREATE_IRQCHIP, 0) < 0) {
		ret = -errno;
		snprintf(err, errlen, "KVM_CREATE_IRQCHIP: %s", strerror(errno));
		return ret;
	}
	if (ioctl(vm->vm_fd, KVM_CREATE_PIT2, &pit) < 0) {
		ret = -errno;
		snprintf(err, errlen, "KVM_CREATE_PIT2: %s", strerror(errno));
		return ret;
	}
	ret = vm_irq_init(vm);
	if (ret) {
		snprintf(err, errlen, "GSI routing: %s", strerror(-ret));
		return ret;
	}
	return 0;
}

/* Safe on a partially created VM (every fd starts at -1). */
void kvm_vm_destroy(struct vm *vm)
{
	close_safely(&vm->vm_fd);	/* drops every slot and irqfd */
	close_safely(&vm->kvm_fd);
	close_safely(&vm->wake_fd);
	free(vm->routing);
	vm->routing = NULL;
	free(vm->cpuid);
	vm->cpuid = NULL;
	pthread_rwlock_destroy(&vm->io_lock);
	pthread_cond_destroy(&vm->run_cond);
	pthread_mutex_destroy(&vm->run_lock);
	pthread_mutex_destroy(&vm->irq_lock);
	pthread_mutex_destroy(&vm->slot_lock);
}

/* ---- memory slots ---- */

static int slot_commit(struct vm *vm, int id)
{
	const struct vm_slot *s = &vm->slots[id];
	struct kvm_userspace_memory_region r = {
		.slot = (uint32_t)id,
		.guest_phys_addr = s->gpa,
		.memory_size = s->used ? s->size : 0,
		.userspace_addr = (uintptr_t)s->hva,
	};

	if (s->used && (s->flags & VM_MEM_LOG_DIRTY))
		r.flags |= KVM_MEM_LOG_DIRTY_PAGES;
	if (s->used && (s->flags & VM_MEM_READONLY))
		r.flags |= KVM_MEM_READONLY;
	if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &r) < 0)
		return -errno;
	return 0;
}

/* Re-submit a slot after its flags changed (dirty logging). Caller holds
 * slot_lock. */
int vm_slot_update_flags(struct vm *vm, int slot)
{
	return slot_commit(vm, slot);
}

static int slot_add_locked(struct vm *vm, uint64_t gpa, uint64_t size,
			   void *hva, unsigned flags, bool is_ram, int *slot)
{
	uint64_t end;
	int i, id = -1, ret;

	if (!size || !IS_ALIGNED(gpa, VM_PAGE_SIZE) ||
	    !IS_ALIGNED(size, VM_PAGE_SIZE) ||
	    !IS_ALIGNED((uintptr_t)hva, VM_PAGE_SIZE) ||
	    check_add_overflow(gpa, size, &end) ||
	    (flags & ~(VM_MEM_LOG_DIRTY | VM_MEM_READONLY)))
		return -EINVAL;
	for (i = 0; i < VM_MAX_SLOTS; i++) {
		const struct vm_slot *s = &vm->slots[i];

		if (!s->used) {
			if (id < 0)
				id = i;
			continue;
		}
		if (ranges_overlap(gpa, size, s->gpa, s->size))
			return -EEXIST;
	}
	if (id < 0)
		return -ENOSPC;
	vm->slots[id] = (struct vm_slot){
		.used = true, .is_ram = is_ram, .gpa = gpa, .size = size,
		.hva = hva, .flags = flags,
	};
	ret = slot_commit(vm, id);
	if (ret) {
		vm->slots[id].used = false;
		return ret;
	}
	*slot = id;
	return 0;
}

int vm_add_mem_slot(struct vm *vm, uint64_t gpa, uint64_t size, void *hva,
		    unsigned flags, int *slot)
{
	int ret;

	pthread_mutex_lock(&vm->slot_lock);
	ret = slot_add_locked(vm, gpa, size, hva, flags, false, slot);
	pthread_mutex_unlock(&vm->slot_lock);
	return ret;
}

/* Guest RAM slots follow the VM-wide dirty logging switch. */
int vm_add_ram_slot(struct vm *vm, uint64_t gpa, uint64_t size, void *hva,
		    int *slot)
{
	int ret;

	pthread_mutex_lock(&vm->slot_lock);
	ret = slot_add_locked(vm, gpa, size, hva,
			      vm->dirty_logging ? VM_MEM_LOG_DIRTY : 0,
			      true, slot);
	pthread_mutex_unlock(&vm->slot_lock);
	return ret;
}

int vm_del_mem_slot(struct vm *vm, int slot)
{
	int ret;

	if (slot < 0 || slot >= VM_MAX_SLOTS)
		return -EINVAL;
	pthread_mutex_lock(&vm->slot_lock);
	if (!vm->slots[slot].used || vm->slots[slot].is_ram) {
		pthread_mutex_unlock(&vm->slot_lock);
		return -ENOENT;
	}
	vm->slots[slot].used = false;
	ret = slot_commit(vm, slot);
	if (ret)
		vm->slots[slot].used = true;
	pthread_mutex_unlock(&vm->slot_lock);
	return ret;
}

/* ---- interrupts ---- */

static void route_irqchip(struct kvm_irq_routing_entry *e, uint32_t gsi,
			  uint32_t chip, uint32_t pin)
{
	memset(e, 0, sizeof(*e));
	e->gsi = gsi;
	e->type = KVM_IRQ_ROUTING_IRQCHIP;
	e->u.irqchip.irqchip = chip;
	e->u.irqchip.pin = pin;
}

/*
 * KVM_SET_GSI_ROUTING replaces the whole table, so we keep our own copy
 * that starts as the default one KVM_CREATE_IRQCHIP installed: GSI n to
 * IOAPIC pin n for n < 24, and for n < 16 also to the master/slave PIC.
 */
int vm_irq_init(struct vm *vm)
{
	struct kvm_irq_routing *rt;
	uint32_t gsi;

	rt = calloc(1, sizeof(*rt) +
		    VM_MAX_ROUTES * sizeof(struct kvm_irq_routing_entry));
	if (!rt)
		return -ENOMEM;
	for (gsi = 0; gsi < VM_IOAPIC_PINS; gsi++) {
		route_irqchip(&rt->entries[rt->nr++], gsi,
			      KVM_IRQCHIP_IOAPIC, gsi);
		if (gsi < 16)
			route_irqchip(&rt->entries[rt->nr++], gsi,
				      gsi < 8 ? KVM_IRQCHIP_PIC_MASTER :
						KVM_IRQCHIP_PIC_SLAVE,
				      gsi % 8);
	}
	for (gsi = 0; gsi < VM_FIRST_MSI_GSI; gsi++)
		vm->gsi_used[gsi / 8] |= 1u << (gsi % 8);
	vm->routing = rt;
	return 0;
}

static bool gsi_is_used(const struct vm *vm, int gsi)
{
	return vm->gsi_used[gsi / 8] & (1u << (gsi % 8));
}

static struct kvm_irq_routing_entry *route_find_msi(struct vm *vm, int gsi)
{
	uint32_t i;

	for (i = 0; i < vm->routing->nr; i++) {
		struct kvm_irq_routing_entry *e = &vm->routing->entries[i];

		if (e->gsi == (uint32_t)gsi && e->type == KVM_IRQ_ROUTING_MSI)
			return e;
	}
	return NULL;
}

static int routing_commit(struct vm *vm)
{
	if (ioctl(vm->vm_fd, KVM_SET_GSI_ROUTING, vm->routing) < 0)
		return -errno;
	return 0;
}

int vm_msi_route_set(struct vm *vm, int *gsi, uint64_t addr, uint32_t data)
{
	struct kvm_irq_routing_entry *e, saved;
	bool fresh = false;
	int ret, g = *gsi;

	pthread_mutex_lock(&vm->irq_lock);
	if (g < 0) {
		for (g = VM_FIRST_MSI_GSI; g < VM_MAX_GSI; g++)
			if (!gsi_is_used(vm, g))
				break;
		if (g == VM_MAX_GSI) {
			ret = -ENOSPC;
			goto out_unlock;
		}
		e = &vm->routing->entries[vm->routing->nr++];
		memset(e, 0, sizeof(*e));
		e->gsi = (uint32_t)g;
		e->type = KVM_IRQ_ROUTING_MSI;
		fresh = true;
	} else {
		if (g < VM_FIRST_MSI_GSI || g >= VM_MAX_GSI ||
		    !(e = route_find_msi(vm, g))) {
			ret = -ENOENT;
			goto out_unlock;
		}
	}
	saved = *e;
	e->u.msi.address_lo = (uint32_t)addr;
	e->u.msi.address_hi = (uint32_t)(addr >> 32);
	e->u.msi.data = data;
	ret = routing_commit(vm);
	if (ret) {
		if (fresh)
			vm->routing->nr--;
		else
			*e = saved;
		goto out_unlock;
	}
	vm->gsi_used[g / 8] |= 1u << (g % 8);
	*gsi = g;
out_unlock:
	pthread_mutex_unlock(&vm->irq_lock);
	return ret;
}

int vm_msi_route_free(struct vm *vm, int gsi)
{
	struct kvm_irq_routing_entry *e;
	uint32_t idx;
	int ret;

	pthread_mutex_lock(&vm->irq_lock);
	if (gsi < VM_FIRST_MSI_GSI || gsi >= VM_MAX_GSI ||
	    !(e = route_find_msi(vm, gsi))) {
		ret = -ENOENT;
		goto out_unlock;
	}
	idx = (uint32_t)(e - vm->routing->entries);
	vm->routing->entries[idx] = vm->routing->entries[--vm->routing->nr];
	vm->gsi_used[gsi / 8] &= (uint8_t)~(1u << (gsi % 8));
	ret = routing_commit(vm);
out_unlock:
	pthread_mutex_unlock(&vm->irq_lock);
	return ret;
}

int vm_irqfd_assign(struct vm *vm, int eventfd, int gsi)
{
	struct kvm_irqfd irqfd = { .fd = (uint32_t)eventfd, .gsi = (uint32_t)gsi };

	if (eventfd < 0 || gsi < 0)
		return -EINVAL;
	if (ioctl(vm->vm_fd, KVM_IRQFD, &irqfd) < 0)
		return -errno;
	return 0;
}

int vm_irqfd_assign_resample(struct vm *vm, int eventfd, int resample_fd,
			     int gsi)
{
	struct kvm_irqfd irqfd = {
		.fd = (uint32_t)eventfd,
		.gsi = (uint32_t)gsi,
		.flags = KVM_IRQFD_FLAG_RESAMPLE,
		.resamplefd = (uint32_t)resample_fd,
	};

	if (eventfd < 0 || resample_fd < 0 || gsi < 0 ||
	    gsi >= VM_IOAPIC_PINS)
		return -EINVAL;
	if (ioctl(vm->vm_fd, KVM_IRQFD, &irqfd) < 0)
		return -errno;
	return 0;
}

int vm_irqfd_deassign(struct vm *vm, int eventfd, int gsi)
{
	struct kvm_irqfd irqfd = {
		.fd = (uint32_t)eventfd,
		.gsi = (uint32_t)gsi,
		.flags = KVM_IRQFD_FLAG_DEASSIGN,
	};

	if (eventfd < 0 || gsi < 0)
		return -EINVAL;
	if (ioctl(vm->vm_fd, KVM_IRQFD, &irqfd) < 0)
		return -errno;
	return 0;
}

int vm_signal_msi(struct vm *vm, uint64_t addr, uint32_t data)
{
	struct kvm_msi msi = {
		.address_lo = (uint32_t)addr,
		.address_hi = (uint32_t)(addr >> 32),
		.data = data,
	};

	/* 0 means the interrupt was blocked by the guest: not an error. */
	if (ioctl(vm->vm_fd, KVM_SIGNAL_MSI, &msi) < 0)
		return -errno;
	return 0;
}
