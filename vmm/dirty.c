// SPDX-License-Identifier: BSD-3-Clause
/*
 * Dirty page tracking of guest RAM: KVM's per-slot dirty log (pages the
 * vCPUs wrote) merged with vm_mark_dirty() marks (pages the VMM wrote for
 * a device), reported in one bitmap indexed by memfd page.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "ferry/log.h"
#include "ferry/util.h"
#include "vmm.h"

uint64_t vm_dirty_bitmap_words(struct vm *vm)
{
	return DIV_ROUND_UP(vm->ram_size / VM_PAGE_SIZE, 64);
}

static int dirty_set_logging(struct vm *vm, bool on)
{
	int i, ret = 0;

	for (i = 0; i < VM_MAX_SLOTS; i++) {
		struct vm_slot *s = &vm->slots[i];

		if (!s->used || !s->is_ram)
			continue;
		if (on)
			s->flags |= VM_MEM_LOG_DIRTY;
		else
			s->flags &= ~VM_MEM_LOG_DIRTY;
		ret = vm_slot_update_flags(vm, i);
		if (ret)
			break;
	}
	return ret;
}

int vm_dirty_log_start(struct vm *vm)
{
	int ret = 0;

	pthread_mutex_lock(&vm->slot_lock);
	if (vm->dirty_logging) {
		ret = -EBUSY;
		goto out_unlock;
	}
	if (!vm->dirty_marks) {
		vm->dirty_words = vm_dirty_bitmap_words(vm);
		vm->dirty_marks = calloc(vm->dirty_words, sizeof(uint64_t));
		if (!vm->dirty_marks) {
			ret = -ENOMEM;
			goto out_unlock;
		}
	} else {
		memset((void *)vm->dirty_marks, 0,
		       vm->dirty_words * sizeof(uint64_t));
	}
	ret = dirty_set_logging(vm, true);
	if (ret) {
		dirty_set_logging(vm, false);
		goto out_unlock;
	}
	__atomic_store_n(&vm->dirty_logging, true, __ATOMIC_RELEASE);
out_unlock:
	pthread_mutex_unlock(&vm->slot_lock);
	return ret;
}

int vm_dirty_log_stop(struct vm *vm)
{
	int ret;

	pthread_mutex_lock(&vm->slot_lock);
	if (!vm->dirty_logging) {
		pthread_mutex_unlock(&vm->slot_lock);
		return -EINVAL;
	}
	__atomic_store_n(&vm->dirty_logging, false, __ATOMIC_RELEASE);
	ret = dirty_set_logging(vm, false);
	pthread_mutex_unlock(&vm->slot_lock);
	return ret;
}

/* OR nbits of src into dst starting at bit dst_bit. */
static void bitmap_or_at(uint64_t *dst, uint64_t dst_bit, const uint64_t *src,
			 uint64_t nbits)
{
	uint64_t w, nwords = DIV_ROUND_UP(nbits, 64);

	for (w = 0; w < nwords; w++) {
		uint64_t v = src[w], b;

		if (!v)
			continue;
		if (w == nwords - 1 && nbits % 64)
			v &= (1ull << (nbits % 64)) - 1;
		while (v) {
			b = dst_bit + w * 64 + (uint64_t)__builtin_ctzll(v);
			dst[b / 64] |= 1ull << (b % 64);
			v &= v - 1;
		}
	}
}

int vm_dirty_log_sync(struct vm *vm, uint64_t *bitmap)
{
	uint64_t *buf = NULL;
	int i, ret = 0;

	pthread_mutex_lock(&vm->slot_lock);
	if (!vm->dirty_logging) {
		ret = -EINVAL;
		goto out_unlock;
	}
	for (i = 0; i < VM_MAX_SLOTS; i++) {
		const struct vm_slot *s = &vm->slots[i];
		struct kvm_dirty_log log = { .slot = (uint32_t)i };
		uint64_t pages = s->size / VM_PAGE_SIZE, first = 0;
		unsigned r;

		if (!s->used || !s->is_ram)
			continue;
		buf = calloc(DIV_ROUND_UP(pages, 64), sizeof(uint64_t));
		if (!buf) {
			ret = -ENOMEM;
			goto out_unlock;
		}
		log.dirty_bitmap = buf;
		if (ioctl(vm->vm_fd, KVM_GET_DIRTY_LOG, &log) < 0) {
			ret = -errno;
			goto out_free_buf;
		}
		for (r = 0; r < vm->nr_ram; r++)
			if (vm->ram[r].gpa == s->gpa)
				first = vm->ram[r].fd_offset / VM_PAGE_SIZE;
		bitmap_or_at(bitmap, first, buf, pages);
		free(buf);
		buf = NULL;
	}
	for (uint64_t w = 0; w < vm->dirty_words; w++)
		bitmap[w] |= atomic_exchange(&vm->dirty_marks[w], 0);
out_free_buf:
	free(buf);
out_unlock:
	pthread_mutex_unlock(&vm->slot_lock);
	return ret;
}

int vm_dirty_log_clear(struct vm *vm, uint64_t pfn, uint64_t npages,
		       const uint64_t *bits)
{
	int ret = 0;

	if (!vm->dirty_manual)
		return 0;
	pthread_mutex_lock(&vm->slot_lock);
	if (!vm->dirty_logging) {
		ret = -EINVAL;
		goto out_unlock;
	}
	for (int i = 0; i < VM_MAX_SLOTS && !ret; i++) {
		const struct vm_slot *s = &vm->slots[i];
		uint64_t first = 0, pages = s->size / VM_PAGE_SIZE, lo, hi;
		struct kvm_clear_dirty_log log = { .slot = (uint32_t)i };

		if (!s->used || !s->is_ram)
			continue;
		for (unsigned r = 0; r < vm->nr_ram; r++)
			if (vm->ram[r].gpa == s->gpa)
				first = vm->ram[r].fd_offset / VM_PAGE_SIZE;
		lo = MAX(pfn, first);
		hi = MIN(pfn + npages, first + pages);
		if (lo >= hi)
			continue;
		/* KVM wants 64-page granules; RAM slots start on one (their
		 * fd offsets are 0 and 3 GiB). */
		if ((lo - first) % 64 || (lo - pfn) % 64) {
			ret = -EINVAL;
			break;
		}
		log.first_page = lo - first;
		log.num_pages = (uint32_t)(hi - lo);
		log.dirty_bitmap = (void *)(bits + (lo - pfn) / 64);
		if (ioctl(vm->vm_fd, KVM_CLEAR_DIRTY_LOG, &log) < 0)
			ret = -errno;
	}
out_unlock:
	pthread_mutex_unlock(&vm->slot_lock);
	return ret;
}

void vm_mark_dirty(struct vm *vm, uint64_t gpa, uint64_t len)
{
	uint64_t end;

	if (!len || !__atomic_load_n(&vm->dirty_logging, __ATOMIC_ACQUIRE))
		return;
	if (check_add_overflow(gpa, len - 1, &end))
		return;
	for (unsigned i = 0; i < vm->nr_ram; i++) {
		const struct vm_ram_range *r = &vm->ram[i];
		uint64_t lo, hi, p;

		if (end < r->gpa || gpa >= r->gpa + r->size)
			continue;
		lo = (MAX(gpa, r->gpa) - r->gpa + r->fd_offset) / VM_PAGE_SIZE;
		hi = (MIN(end, r->gpa + r->size - 1) - r->gpa + r->fd_offset) /
		     VM_PAGE_SIZE;
		for (p = lo; p <= hi; p++)
			atomic_fetch_or(&vm->dirty_marks[p / 64],
					1ull << (p % 64));
	}
}

void vm_dirty_fini(struct vm *vm)
{
	free((void *)vm->dirty_marks);
	vm->dirty_marks = NULL;
	vm->dirty_logging = false;
}
