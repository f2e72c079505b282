// SPDX-License-Identifier: BSD-3-Clause
/*
 * vCPUs: one thread each, CPUID, the boot register state, exit handling,
 * and the pause protocol.
 *
 * Pause protocol: a pauser raises pause_depth under run_lock, sets
 * immediate_exit in every kvm_run and sends each thread SIG_KICK.
 * immediate_exit covers the window between a thread's check of
 * pause_depth and its entry into KVM_RUN; the signal covers a thread
 * already inside. Each thread, back at the top of its loop, clears
 * immediate_exit under run_lock, sees pause_depth and parks; the pauser
 * returns once every thread is parked (or gone), so no vCPU is in
 * KVM_RUN and vCPU state may be read or the VM torn down.
 *
 * KVM finishes an I/O or MMIO exit (the data of an IN or an MMIO read,
 * RIP past an OUT) only in the next KVM_RUN, and that pending part is
 * not in any state userspace can save. So a thread paused right after
 * such an exit first re-enters KVM_RUN with immediate_exit set: KVM
 * completes the access and returns -EINTR without running the guest.
 * Otherwise a migrated guest would repeat the OUT or lose the IN.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ferry/log.h"
#include "ferry/trace.h"
#include "ferry/util.h"
#include "vmm.h"

#define SIG_KICK	SIGUSR1
#define VM_CPUID_MAX	256

/* Multiboot hands over with flat 4 GiB segments; the selectors are the
 * conventional ones and never loaded from a GDT before the guest sets
 * its own. */
#define BOOT_CS_SEL	0x10
#define BOOT_DS_SEL	0x18
#define X86_CR0_PE	0x1ull
#define X86_CR0_ET	0x10ull
#define X86_RFLAGS_RSVD	0x2ull

static void kick_handler(int sig)
{
	/* Only here to interrupt KVM_RUN with EINTR. */
}

static int cpuid_load(struct vm *vm)
{
	struct kvm_cpuid2 *c;

	c = calloc(1, sizeof(*c) +
		   VM_CPUID_MAX * sizeof(struct kvm_cpuid_entry2));
	if (!c)
		return -ENOMEM;
	c->nent = VM_CPUID_MAX;
	if (ioctl(vm->kvm_fd, KVM_GET_SUPPORTED_CPUID, c) < 0) {
		int ret = -errno;

		free(c);
		return ret;
	}
	vm->cpuid = c;
	return 0;
}

/* The supported CPUID with this vCPU's APIC id in leaves 1, 0xB, 0x1F. */
static int vcpu_set_cpuid(struct vcpu *vcpu)
{
	const struct kvm_cpuid2 *src = vcpu->vm->cpuid;
	size_t sz = sizeof(*src) + src->nent * sizeof(src->entries[0]);
	struct kvm_cpuid2 *c = malloc(sz);
	int ret = 0;

	if (!c)
		return -ENOMEM;
	memcpy(c, src, sz);
	for (uint32_t i = 0; i < c->nent; i++) {
		struct kvm_cpuid_entry2 *e = &c->entries[i];

		switch (e->function) {
		case 1:
			e->ebx = (e->ebx & 0x00ffffffu) | (vcpu->index << 24);
			break;
		case 0xb:
		case 0x1f:
			e->edx = vcpu->index;
			break;
		}
	}
	if (ioctl(vcpu->fd, KVM_SET_CPUID2, c) < 0)
		ret = -errno;
	free(c);
	return ret;
}

int vcpus_create(struct vm *vm)
{
	struct sigaction sa = { .sa_handler = kick_handler };
	int mmap_size, ret;

	/* No SA_RESTART: KVM_RUN must come back with EINTR. */
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIG_KICK, &sa, NULL) < 0)
		return -errno;
	ret = cpuid_load(vm);
	if (ret)
		return ret;
	mmap_size = ioctl(vm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (mmap_size < (int)sizeof(struct kvm_run))
		return mmap_size < 0 ? -errno : -EINVAL;
	vm->vcpus = calloc(vm->nr_cpus, sizeof(*vm->vcpus));
	if (!vm->vcpus)
		return -ENOMEM;
	for (unsigned i = 0; i < vm->nr_cpus; i++) {
		struct vcpu *v = &vm->vcpus[i];

		v->vm = vm;
		v->index = i;
		v->fd = -1;
	}
	for (unsigned i = 0; i < vm->nr_cpus; i++) {
		struct vcpu *v = &vm->vcpus[i];
		void *p;

		v->fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, (unsigned long)i);
		if (v->fd < 0)
			return -errno;
		p = mmap(NULL, (size_t)mmap_size, PROT_READ | PROT_WRITE,
			 MAP_SHARED, v->fd, 0);
		if (p == MAP_FAILED)
			return -errno;
		v->run = p;
		v->run_size = (size_t)mmap_size;
		ret = vcpu_set_cpuid(v);
		if (ret)
			return ret;
		if (i > 0) {
			/* APs wait for the guest's INIT-SIPI-SIPI. */
			struct kvm_mp_state mp = {
				.mp_state = KVM_MP_STATE_UNINITIALIZED,
			};

			if (ioctl(v->fd, KVM_SET_MP_STATE, &mp) < 0)
				return -errno;
		}
	}
	return 0;
}

void vcpus_destroy(struct vm *vm)
{
	if (!vm->vcpus)
		return;
	for (unsigned i = 0; i < vm->nr_cpus; i++) {
		struct vcpu *v = &vm->vcpus[i];

		if (v->run)
			munmap(v->run, v->run_size);
		close_safely(&v->fd);
	}
	free(vm->vcpus);
	vm->vcpus = NULL;
}

static void seg_flat(struct kvm_segment *s, uint16_t sel, uint8_t type)
{
	*s = (struct kvm_segment){
		.base = 0, .limit = 0xffffffffu, .selector = sel,
		.type = type, .present = 1, .dpl = 0, .db = 1, .s = 1,
		.l = 0, .g = 1,
	};
}

int vcpu_set_boot_state(struct vcpu *vcpu, uint32_t entry, uint32_t eax,
			uint32_t ebx)
{
	struct kvm_sregs sregs;
	struct kvm_regs regs = {
		.rip = entry, .rax = eax, .rbx = ebx,
		.rflags = X86_RFLAGS_RSVD,
	};
	struct kvm_fpu fpu = { .fcw = 0x37f, .mxcsr = 0x1f80 };

	if (ioctl(vcpu->fd, KVM_GET_SREGS, &sregs) < 0)
		return -errno;
	seg_flat(&sregs.cs, BOOT_CS_SEL, 0xb);	/* code, exec/read, accessed */
	seg_flat(&sregs.ds, BOOT_DS_SEL, 0x3);	/* data, read/write, accessed */
	sregs.es = sregs.fs = sregs.gs = sregs.ss = sregs.ds;
	sregs.cr0 = X86_CR0_PE | X86_CR0_ET;	/* paging off */
	sregs.cr4 = 0;
	sregs.efer = 0;
	if (ioctl(vcpu->fd, KVM_SET_SREGS, &sregs) < 0 ||
	    ioctl(vcpu->fd, KVM_SET_REGS, &regs) < 0 ||
	    ioctl(vcpu->fd, KVM_SET_FPU, &fpu) < 0)
		return -errno;
	return 0;
}

static void vcpu_dump(struct vcpu *vcpu)
{
	struct kvm_regs r;
	struct kvm_sregs s;

	if (ioctl(vcpu->fd, KVM_GET_REGS, &r) < 0 ||
	    ioctl(vcpu->fd, KVM_GET_SREGS, &s) < 0) {
		pr_err("vcpu%u: cannot read registers: %s", vcpu->index,
		       strerror(errno));
		return;
	}
	pr_err("vcpu%u: rip %016llx rsp %016llx rflags %08llx",
	       vcpu->index, r.rip, r.rsp, r.rflags);
	pr_err("vcpu%u: rax %016llx rbx %016llx rcx %016llx rdx %016llx",
	       vcpu->index, r.rax, r.rbx, r.rcx, r.rdx);
	pr_err("vcpu%u: rsi %016llx rdi %016llx rbp %016llx r8  %016llx",
	       vcpu->index, r.rsi, r.rdi, r.rbp, r.r8);
	pr_err("vcpu%u: cr0 %016llx cr2 %016llx cr3 %016llx cr4 %016llx efer %llx",
	       vcpu->index, s.cr0, s.cr2, s.cr3, s.cr4, s.efer);
	pr_err("vcpu%u: cs %04x base %llx limit %x l %u db %u dpl %u; ss %04x; ds %04x",
	       vcpu->index, s.cs.selector, s.cs.base, s.cs.limit, s.cs.l,
	       s.cs.db, s.cs.dpl, s.ss.selector, s.ds.selector);
	pr_err("vcpu%u: gdt %llx/%x idt %llx/%x tr %04x",
	       vcpu->index, s.gdt.base, s.gdt.limit, s.idt.base, s.idt.limit,
	       s.tr.selector);
}

/* false: the VM cannot go on. */
static bool vcpu_handle_exit(struct vcpu *vcpu)
{
	struct kvm_run *run = vcpu->run;
	struct vm *vm = vcpu->vm;

	switch (run->exit_reason) {
	case KVM_EXIT_IO: {
		uint8_t *data = (uint8_t *)run + run->io.data_offset;
		bool out = run->io.direction == KVM_EXIT_IO_OUT;

		/* String I/O arrives as count back-to-back elements. */
		for (uint32_t i = 0; i < run->io.count; i++)
			vm_handle_pio(vm, run->io.port, data + i * run->io.size,
				      run->io.size, out);
		return true;
	}
	case KVM_EXIT_MMIO:
		vm_handle_mmio(vm, run->mmio.phys_addr, run->mmio.data,
			       run->mmio.len, run->mmio.is_write);
		return true;
	case KVM_EXIT_INTR:
	case KVM_EXIT_HLT:	/* the in-kernel LAPIC waits for us */
		return true;
	case KVM_EXIT_SHUTDOWN:
		pr_err("vcpu%u: guest shutdown (triple fault)", vcpu->index);
		break;
	case KVM_EXIT_SYSTEM_EVENT:
		if (run->system_event.type == KVM_SYSTEM_EVENT_SHUTDOWN) {
			vm_request_exit(vm, 0, "guest-shutdown");
			return false;
		}
		pr_err("vcpu%u: guest system event %u", vcpu->index,
		       run->system_event.type);
		break;
	case KVM_EXIT_FAIL_ENTRY:
		pr_err("vcpu%u: KVM entry failed, hardware reason 0x%llx",
		       vcpu->index, (unsigned long long)
		       run->fail_entry.hardware_entry_failure_reason);
		break;
	case KVM_EXIT_INTERNAL_ERROR:
		pr_err("vcpu%u: KVM internal error, suberror %u", vcpu->index,
		       run->internal.suberror);
		break;
	default:
		pr_err("vcpu%u: unexpected KVM exit reason %u", vcpu->index,
		       run->exit_reason);
		break;
	}
	vcpu_dump(vcpu);
	vm_request_exit(vm, VM_EXIT_ERROR, "guest-panic");
	return false;
}

/* Wait at the top of the loop while paused; false when told to exit.
 * io_pending: the last exit was an access KVM completes on re-entry. */
static bool vcpu_wait_runnable(struct vcpu *vcpu, bool io_pending)
{
	struct vm *vm = vcpu->vm;
	bool go;

	pthread_mutex_lock(&vm->run_lock);
	if (io_pending && vm->pause_depth && !vm->stopping) {
		/* Complete it without running guest code, then park. */
		vcpu->run->immediate_exit = 1;
		pthread_mutex_unlock(&vm->run_lock);
		return true;
	}
	vcpu->run->immediate_exit = 0;
	while (vm->pause_depth && !vm->stopping) {
		if (!vcpu->parked) {
			vcpu->parked = true;
			pthread_cond_broadcast(&vm->run_cond);
		}
		pthread_cond_wait(&vm->run_cond, &vm->run_lock);
	}
	vcpu->parked = false;
	go = !vm->stopping;
	pthread_mutex_unlock(&vm->run_lock);
	return go;
}

static void *vcpu_thread(void *arg)
{
	struct vcpu *vcpu = arg;
	struct vm *vm = vcpu->vm;
	bool io_pending = false;
	sigset_t set;

	/* query-cpus-fast's thread-id, for whoever pins vCPU threads. */
	__atomic_store_n(&vcpu->tid, gettid(), __ATOMIC_RELAXED);
	sigemptyset(&set);
	sigaddset(&set, SIG_KICK);
	pthread_sigmask(SIG_UNBLOCK, &set, NULL);

	while (vcpu_wait_runnable(vcpu, io_pending)) {
		int ret = ioctl(vcpu->fd, KVM_RUN, 0);

		/* Any return from KVM_RUN has completed the previous exit. */
		io_pending = false;
		if (ret < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			pr_err("vcpu%u: KVM_RUN: %s", vcpu->index,
			       strerror(errno));
			vcpu_dump(vcpu);
			vm_request_exit(vm, VM_EXIT_ERROR, "guest-panic");
			break;
		}
		FERRY_TRACE(vcpu_exit, vcpu->index, vcpu->run->exit_reason);
		if (!vcpu_handle_exit(vcpu))
			break;
		io_pending = vcpu->run->exit_reason == KVM_EXIT_IO ||
			     vcpu->run->exit_reason == KVM_EXIT_MMIO;
	}
	/* A thread that left for good counts as parked. */
	pthread_mutex_lock(&vm->run_lock);
	vcpu->parked = true;
	pthread_cond_broadcast(&vm->run_cond);
	pthread_mutex_unlock(&vm->run_lock);
	return NULL;
}

int vcpus_start(struct vm *vm)
{
	int ret;

	pthread_mutex_lock(&vm->run_lock);
	vm->state = VM_STATE_RUNNING;
	pthread_mutex_unlock(&vm->run_lock);
	for (unsigned i = 0; i < vm->nr_cpus; i++) {
		struct vcpu *v = &vm->vcpus[i];
		char name[16];

		ret = pthread_create(&v->thread, NULL, vcpu_thread, v);
		if (ret)
			return -ret;
		v->thread_started = true;
		/* QEMU's name for a vCPU thread, so that top, perf and the
		 * benchmarks tell the guest's CPU time from the VMM's. */
		snprintf(name, sizeof(name), "CPU %u/KVM", v->index);
		pthread_setname_np(v->thread, name);
	}
	return 0;
}

/* Caller holds run_lock. */
static void vcpus_kick_locked(struct vm *vm)
{
	for (unsigned i = 0; i < vm->nr_cpus; i++) {
		struct vcpu *v = &vm->vcpus[i];

		if (!v->thread_started)
			continue;
		v->run->immediate_exit = 1;
		pthread_kill(v->thread, SIG_KICK);
	}
}

void vcpus_stop(struct vm *vm)
{
	if (!vm->vcpus)
		return;
	pthread_mutex_lock(&vm->run_lock);
	vm->stopping = true;
	vcpus_kick_locked(vm);
	pthread_cond_broadcast(&vm->run_cond);
	pthread_mutex_unlock(&vm->run_lock);
	for (unsigned i = 0; i < vm->nr_cpus; i++) {
		struct vcpu *v = &vm->vcpus[i];

		if (v->thread_started)
			pthread_join(v->thread, NULL);
		v->thread_started = false;
	}
}

void vm_pause(struct vm *vm)
{
	uint64_t t0 = clock_ns();
	bool all;

	pthread_mutex_lock(&vm->run_lock);
	vm->pause_depth++;
	vcpus_kick_locked(vm);
	for (;;) {
		all = true;
		for (unsigned i = 0; i < vm->nr_cpus; i++)
			if (vm->vcpus[i].thread_started &&
			    !vm->vcpus[i].parked)
				all = false;
		if (all)
			break;
		pthread_cond_wait(&vm->run_cond, &vm->run_lock);
	}
	/* Part of every switchover's downtime: query-status shows it and
	 * make bench measures it per vCPU count. */
	if (vm->pause_depth == 1)
		vm->pause_ns = clock_ns() - t0;
	pthread_mutex_unlock(&vm->run_lock);
}

uint64_t vm_pause_ns(struct vm *vm)
{
	uint64_t ns;

	pthread_mutex_lock(&vm->run_lock);
	ns = vm->pause_ns;
	pthread_mutex_unlock(&vm->run_lock);
	return ns;
}

void vm_resume(struct vm *vm)
{
	pthread_mutex_lock(&vm->run_lock);
	if (vm->pause_depth)
		vm->pause_depth--;
	pthread_cond_broadcast(&vm->run_cond);
	pthread_mutex_unlock(&vm->run_lock);
}

enum vm_run_state vm_run_state(struct vm *vm)
{
	enum vm_run_state s;

	pthread_mutex_lock(&vm->run_lock);
	s = vm->state;
	pthread_mutex_unlock(&vm->run_lock);
	return s;
}

static bool vm_set_state_if(struct vm *vm, enum vm_run_state from,
			    enum vm_run_state to)
{
	bool changed = false;

	pthread_mutex_lock(&vm->run_lock);
	if (vm->state == from) {
		vm->state = to;
		changed = true;
	}
	pthread_mutex_unlock(&vm->run_lock);
	return changed;
}

/* Before the guest exists (an incoming one), stop and cont only say how
 * it is to start, as QEMU's autostart: no event, nothing to pause. */
static bool vm_set_start_paused(struct vm *vm, bool paused)
{
	bool prelaunch;

	pthread_mutex_lock(&vm->run_lock);
	prelaunch = vm->state == VM_STATE_PRELAUNCH;
	if (prelaunch)
		vm->start_paused = paused;
	pthread_mutex_unlock(&vm->run_lock);
	return prelaunch;
}

bool vm_user_stop(struct vm *vm)
{
	if (vm_set_start_paused(vm, true))
		return false;
	if (!vm_set_state_if(vm, VM_STATE_RUNNING, VM_STATE_PAUSED))
		return false;
	vm_pause(vm);
	return true;
}

bool vm_user_cont(struct vm *vm)
{
	if (vm_set_start_paused(vm, false))
		return false;
	if (!vm_set_state_if(vm, VM_STATE_PAUSED, VM_STATE_RUNNING))
		return false;
	vm_resume(vm);
	return true;
}

void vm_request_exit(struct vm *vm, int status, const char *reason)
{
	uint64_t one = 1;

	if (atomic_exchange(&vm->exit_requested, true))
		return;
	pthread_mutex_lock(&vm->run_lock);
	vm->exit_status = status;
	vm->exit_reason = reason;
	vm->state = VM_STATE_SHUTDOWN;
	vm->stopping = true;
	if (vm->vcpus)
		vcpus_kick_locked(vm);
	pthread_cond_broadcast(&vm->run_cond);
	pthread_mutex_unlock(&vm->run_lock);
	if (write(vm->wake_fd, &one, sizeof(one)) < 0)
		pr_warn("cannot wake the main loop: %s", strerror(errno));
}

int vm_incoming_run(struct vm *vm, bool run)
{
	int ret;

	/* A guest that was paused on the source stays paused, and so does
	 * one a user stopped before it came: its threads park before their
	 * first KVM_RUN. */
	pthread_mutex_lock(&vm->run_lock);
	run = run && !vm->start_paused;
	if (!run)
		vm->pause_depth++;
	pthread_mutex_unlock(&vm->run_lock);
	ret = vcpus_start(vm);
	if (!ret && !run)
		vm_set_state_if(vm, VM_STATE_RUNNING, VM_STATE_PAUSED);
	return ret;
}
