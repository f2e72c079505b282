/* SPDX-License-Identifier: BSD-3-Clause */
#include <errno.h>
#include <linux/kvm.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>

#include "cpu_state.h"
#include "ferry/log.h"
#include "ferry/util.h"

enum cpu_state_tag {
	CS_REGS = 1,
	CS_SREGS,
	CS_FPU,
	CS_XSAVE,
	CS_XCRS,
	CS_MSRS,
	CS_LAPIC,
	CS_EVENTS,
	CS_MP_STATE,
	CS_DEBUGREGS,
	CS_TSC,		/* struct cs_tsc */
	CS_PIC_MASTER = 32,
	CS_PIC_SLAVE,
	CS_IOAPIC,
	CS_PIT,
	CS_CLOCK,	/* struct cs_clock */
};

#define MSR_IA32_TSC	0x10

struct cs_tsc {
	uint64_t tsc;
	uint64_t tsc_khz;
	uint64_t realtime_ns;	/* source CLOCK_REALTIME at save */
};

struct cs_clock {
	uint64_t clock;		/* kvmclock ns */
	uint64_t realtime_ns;
};

struct cs_tlv {
	uint32_t tag;
	uint32_t len;
};

struct cs_buf {
	uint8_t *p;
	size_t len, cap;
	int err;
};

static void cs_put(struct cs_buf *b, uint32_t tag, const void *data,
		   size_t len)
{
	struct cs_tlv t = { .tag = tag, .len = (uint32_t)len };
	size_t need = sizeof(t) + len;

	if (b->err)
		return;
	if (b->len + need > b->cap) {
		size_t cap = MAX(b->cap * 2, b->len + need + 4096);
		uint8_t *p = realloc(b->p, cap);

		if (!p) {
			b->err = -ENOMEM;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, &t, sizeof(t));
	memcpy(b->p + b->len + sizeof(t), data, len);
	b->len += need;
}

static uint64_t realtime_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Get fn(fd, req, buf); record it under tag. */
#define CS_SAVE(b, fd, req, tag, type) do {				\
	type v_;							\
	memset(&v_, 0, sizeof(v_));					\
	if (ioctl(fd, req, &v_) < 0) {					\
		if (!(b)->err)						\
			(b)->err = -errno;				\
	} else {							\
		cs_put(b, tag, &v_, sizeof(v_));			\
	}								\
} while (0)

/* MSRs the kernel wants saved, read one batch at a time; an MSR the
 * kernel lists but cannot read is skipped (KVM_GET_MSRS stops at it). */
static int cs_save_msrs(int kvm_fd, int vcpu_fd, struct cs_buf *b,
			uint64_t *tsc)
{
	struct kvm_msr_list *list;
	struct kvm_msrs *msrs, *one;
	struct kvm_msr_list probe = { .nmsrs = 0 };
	uint32_t n, out = 0;
	int ret = 0;

	if (ioctl(kvm_fd, KVM_GET_MSR_INDEX_LIST, &probe) < 0 &&
	    errno != E2BIG)
		return -errno;
	n = MIN(probe.nmsrs, (uint32_t)CPU_STATE_MAX_MSRS * 4);
	list = calloc(1, sizeof(*list) + n * sizeof(uint32_t));
	msrs = calloc(1, sizeof(*msrs) +
		      CPU_STATE_MAX_MSRS * sizeof(struct kvm_msr_entry));
	one = calloc(1, sizeof(*one) + sizeof(struct kvm_msr_entry));
	if (!list || !msrs || !one) {
		ret = -ENOMEM;
		goto out_free;
	}
	list->nmsrs = n;
	if (ioctl(kvm_fd, KVM_GET_MSR_INDEX_LIST, list) < 0) {
		ret = -errno;
		goto out_free;
	}
	/* One MSR per call: KVM_GET_MSRS stops at the first MSR it cannot
	 * read, and such an MSR is simply not kept. */
	for (uint32_t i = 0; i < list->nmsrs && out < CPU_STATE_MAX_MSRS; i++) {
		one->nmsrs = 1;
		one->entries[0].index = list->indices[i];
		if (ioctl(vcpu_fd, KVM_GET_MSRS, one) != 1)
			continue;
		if (one->entries[0].index == MSR_IA32_TSC) {
			*tsc = one->entries[0].data;
			continue;	/* carried with its time, see CS_TSC */
		}
		msrs->entries[out++] = one->entries[0];
	}
	msrs->nmsrs = out;
	cs_put(b, CS_MSRS, msrs, sizeof(*msrs) + out * sizeof(msrs->entries[0]));
out_free:
	free(list);
	free(msrs);
	free(one);
	return ret;
}

int vcpu_state_save(int kvm_fd, int vcpu_fd, void **blob, size_t *len)
{
	struct cs_buf b = { 0 };
	struct cs_tsc t = { 0 };
	int ret, khz;

	CS_SAVE(&b, vcpu_fd, KVM_GET_REGS, CS_REGS, struct kvm_regs);
	CS_SAVE(&b, vcpu_fd, KVM_GET_SREGS, CS_SREGS, struct kvm_sregs);
	if (ioctl(kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE) > 0) {
		CS_SAVE(&b, vcpu_fd, KVM_GET_XSAVE, CS_XSAVE, struct kvm_xsave);
	} else {
		CS_SAVE(&b, vcpu_fd, KVM_GET_FPU, CS_FPU, struct kvm_fpu);
	}
	if (ioctl(kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XCRS) > 0)
		CS_SAVE(&b, vcpu_fd, KVM_GET_XCRS, CS_XCRS, struct kvm_xcrs);
	ret = cs_save_msrs(kvm_fd, vcpu_fd, &b, &t.tsc);
	if (ret && !b.err)
		b.err = ret;
	khz = ioctl(vcpu_fd, KVM_GET_TSC_KHZ, 0);
	t.tsc_khz = khz > 0 ? (uint64_t)khz : 0;
	t.realtime_ns = realtime_ns();
	cs_put(&b, CS_TSC, &t, sizeof(t));
	CS_SAVE(&b, vcpu_fd, KVM_GET_LAPIC, CS_LAPIC, struct kvm_lapic_state);
	CS_SAVE(&b, vcpu_fd, KVM_GET_VCPU_EVENTS, CS_EVENTS,
		struct kvm_vcpu_events);
	CS_SAVE(&b, vcpu_fd, KVM_GET_MP_STATE, CS_MP_STATE, struct kvm_mp_state);
	CS_SAVE(&b, vcpu_fd, KVM_GET_DEBUGREGS, CS_DEBUGREGS,
		struct kvm_debugregs);
	if (b.err) {
		free(b.p);
		return b.err;
	}
	*blob = b.p;
	*len = b.len;
	return 0;
}

struct cs_iter {
	const uint8_t *p;
	size_t left;
};

/* Next record; 1 found, 0 end, -EBADMSG malformed. */
static int cs_next(struct cs_iter *it, uint32_t *tag, const void **data,
		   uint32_t *len)
{
	struct cs_tlv t;

	if (!it->left)
		return 0;
	if (it->left < sizeof(t))
		return -EBADMSG;
	memcpy(&t, it->p, sizeof(t));
	if (t.len > it->left - sizeof(t))
		return -EBADMSG;
	*tag = t.tag;
	*len = t.len;
	*data = it->p + sizeof(t);
	it->p += sizeof(t) + t.len;
	it->left -= sizeof(t) + t.len;
	return 1;
}

/* Copy a fixed-size record after checking its length. */
#define CS_TAKE(dst, data, len, what) do {				\
	if ((len) != sizeof(dst)) {					\
		snprintf(err, errlen, "%s record is %u bytes, want %zu", \
			 what, len, sizeof(dst));			\
		return -EBADMSG;					\
	}								\
	memcpy(&(dst), data, sizeof(dst));				\
} while (0)

#define CS_SET(fd, req, v, what) do {					\
	if (ioctl(fd, req, &(v)) < 0) {					\
		int e_ = errno;						\
		snprintf(err, errlen, "%s: %s", what, strerror(e_));	\
		return -e_;						\
	}								\
} while (0)

int vcpu_state_load(int vcpu_fd, const void *blob, size_t len,
		    unsigned flags, char *err, size_t errlen)
{
	struct cs_iter it = { .p = blob, .left = len };
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	struct kvm_xsave xsave;
	struct kvm_fpu fpu;
	struct kvm_xcrs xcrs;
	struct kvm_lapic_state lapic;
	struct kvm_vcpu_events events;
	struct kvm_mp_state mp;
	struct kvm_debugregs dbg;
	struct cs_tsc tsc;
	const struct kvm_msrs *msrs = NULL;
	uint32_t seen = 0, tag, rlen, nmsrs = 0;
	const void *data;
	int r;

	while ((r = cs_next(&it, &tag, &data, &rlen)) > 0) {
		switch (tag) {
		case CS_REGS: CS_TAKE(regs, data, rlen, "regs"); break;
		case CS_SREGS: CS_TAKE(sregs, data, rlen, "sregs"); break;
		case CS_XSAVE: CS_TAKE(xsave, data, rlen, "xsave"); break;
		case CS_FPU: CS_TAKE(fpu, data, rlen, "fpu"); break;
		case CS_XCRS: CS_TAKE(xcrs, data, rlen, "xcrs"); break;
		case CS_LAPIC: CS_TAKE(lapic, data, rlen, "lapic"); break;
		case CS_EVENTS: CS_TAKE(events, data, rlen, "events"); break;
		case CS_MP_STATE: CS_TAKE(mp, data, rlen, "mp_state"); break;
		case CS_DEBUGREGS: CS_TAKE(dbg, data, rlen, "debugregs"); break;
		case CS_TSC: CS_TAKE(tsc, data, rlen, "tsc"); break;
		case CS_MSRS: {
			uint32_t n;

			if (rlen < sizeof(struct kvm_msrs)) {
				snprintf(err, errlen, "short MSR record");
				return -EBADMSG;
			}
			memcpy(&n, data, sizeof(n));
			if (n > CPU_STATE_MAX_MSRS ||
			    rlen != sizeof(struct kvm_msrs) +
				    n * sizeof(struct kvm_msr_entry)) {
				snprintf(err, errlen, "MSR record with %u "
					 "entries in %u bytes", n, rlen);
				return -EBADMSG;
			}
			/* data may be unaligned: keep n, copy the rest */
			msrs = data;
			nmsrs = n;
			break;
		}
		default:
			snprintf(err, errlen, "unknown vCPU state record %u", tag);
			return -EBADMSG;
		}
		if (tag < 32)
			seen |= 1u << tag;
	}
	if (r < 0) {
		snprintf(err, errlen, "malformed vCPU state");
		return r;
	}
#define CS_NEED(t) ((seen & (1u << (t))) != 0)
	if (!CS_NEED(CS_REGS) || !CS_NEED(CS_SREGS) || !CS_NEED(CS_LAPIC) ||
	    !CS_NEED(CS_MP_STATE) || !CS_NEED(CS_EVENTS) || !CS_NEED(CS_MSRS) ||
	    !CS_NEED(CS_TSC) || (!CS_NEED(CS_XSAVE) && !CS_NEED(CS_FPU))) {
		snprintf(err, errlen, "vCPU state incomplete (records 0x%x)",
			 seen);
		return -EBADMSG;
	}
	/* Order matters: sregs (APIC base, EFER) before MSRs and LAPIC,
	 * events after the LAPIC they may refer to. */
	CS_SET(vcpu_fd, KVM_SET_SREGS, sregs, "KVM_SET_SREGS");
	CS_SET(vcpu_fd, KVM_SET_REGS, regs, "KVM_SET_REGS");
	if (CS_NEED(CS_XSAVE))
		CS_SET(vcpu_fd, KVM_SET_XSAVE, xsave, "KVM_SET_XSAVE");
	else
		CS_SET(vcpu_fd, KVM_SET_FPU, fpu, "KVM_SET_FPU");
	if (CS_NEED(CS_XCRS))
		CS_SET(vcpu_fd, KVM_SET_XCRS, xcrs, "KVM_SET_XCRS");
	{
		uint32_t n = nmsrs;
		size_t sz = sizeof(*msrs) + (n + 1) * sizeof(msrs->entries[0]);
		struct kvm_msrs *m = malloc(sz);
		uint64_t now = realtime_ns(), tsc_now = tsc.tsc;
		int set;

		if (!m) {
			snprintf(err, errlen, "the MSR list: %s",
				 strerror(ENOMEM));
			return -ENOMEM;
		}
		memcpy(m, msrs, sz - sizeof(msrs->entries[0]));
		if (tsc.tsc_khz && now > tsc.realtime_ns)
			tsc_now += (now - tsc.realtime_ns) / 1000 *
				   tsc.tsc_khz / 1000;
		m->entries[n].index = MSR_IA32_TSC;
		m->entries[n].data = tsc_now;
		m->entries[n].reserved = 0;
		m->nmsrs = n + 1;
		set = ioctl(vcpu_fd, KVM_SET_MSRS, m);
		free(m);
		if (set != (int)(n + 1)) {
			snprintf(err, errlen, "KVM_SET_MSRS set %d of %u MSRs",
				 set, n + 1);
			return -EINVAL;
		}
	}
	if (!(flags & VCPU_LOAD_SKIP_LAPIC))
		CS_SET(vcpu_fd, KVM_SET_LAPIC, lapic, "KVM_SET_LAPIC");
	CS_SET(vcpu_fd, KVM_SET_VCPU_EVENTS, events, "KVM_SET_VCPU_EVENTS");
	CS_SET(vcpu_fd, KVM_SET_MP_STATE, mp, "KVM_SET_MP_STATE");
	if (CS_NEED(CS_DEBUGREGS))
		CS_SET(vcpu_fd, KVM_SET_DEBUGREGS, dbg, "KVM_SET_DEBUGREGS");
#undef CS_NEED
	return 0;
}

static void cs_save_chip(int vm_fd, struct cs_buf *b, uint32_t chip_id,
			 uint32_t tag)
{
	struct kvm_irqchip chip;

	memset(&chip, 0, sizeof(chip));
	chip.chip_id = chip_id;
	if (ioctl(vm_fd, KVM_GET_IRQCHIP, &chip) < 0) {
		if (!b->err)
			b->err = -errno;
		return;
	}
	cs_put(b, tag, &chip, sizeof(chip));
}

int vm_kstate_save(int vm_fd, void **blob, size_t *len)
{
	struct cs_buf b = { 0 };
	struct kvm_clock_data kc;
	struct cs_clock c;

	cs_save_chip(vm_fd, &b, KVM_IRQCHIP_PIC_MASTER, CS_PIC_MASTER);
	cs_save_chip(vm_fd, &b, KVM_IRQCHIP_PIC_SLAVE, CS_PIC_SLAVE);
	cs_save_chip(vm_fd, &b, KVM_IRQCHIP_IOAPIC, CS_IOAPIC);
	CS_SAVE(&b, vm_fd, KVM_GET_PIT2, CS_PIT, struct kvm_pit_state2);
	memset(&kc, 0, sizeof(kc));
	if (ioctl(vm_fd, KVM_GET_CLOCK, &kc) == 0) {
		c.clock = kc.clock;
		c.realtime_ns = realtime_ns();
		cs_put(&b, CS_CLOCK, &c, sizeof(c));
	}
	if (b.err) {
		free(b.p);
		return b.err;
	}
	*blob = b.p;
	*len = b.len;
	return 0;
}

int vm_kstate_load(int vm_fd, const void *blob, size_t len,
		   char *err, size_t errlen)
{
	struct cs_iter it = { .p = blob, .left = len };
	struct kvm_irqchip chip;
	struct kvm_pit_state2 pit;
	struct cs_clock c;
	uint32_t tag, rlen, seen = 0;
	const void *data;
	int r;

	while ((r = cs_next(&it, &tag, &data, &rlen)) > 0) {
		switch (tag) {
		case CS_PIC_MASTER:
		case CS_PIC_SLAVE:
		case CS_IOAPIC:
			CS_TAKE(chip, data, rlen, "irqchip");
			if (chip.chip_id != tag - CS_PIC_MASTER) {
				snprintf(err, errlen, "irqchip record %u has "
					 "chip id %u", tag, chip.chip_id);
				return -EBADMSG;
			}
			CS_SET(vm_fd, KVM_SET_IRQCHIP, chip, "KVM_SET_IRQCHIP");
			break;
		case CS_PIT:
			CS_TAKE(pit, data, rlen, "pit");
			CS_SET(vm_fd, KVM_SET_PIT2, pit, "KVM_SET_PIT2");
			break;
		case CS_CLOCK: {
			struct kvm_clock_data kc;
			uint64_t now = realtime_ns();

			CS_TAKE(c, data, rlen, "clock");
			memset(&kc, 0, sizeof(kc));
			kc.clock = c.clock + (now > c.realtime_ns ?
					      now - c.realtime_ns : 0);
			CS_SET(vm_fd, KVM_SET_CLOCK, kc, "KVM_SET_CLOCK");
			break;
		}
		default:
			snprintf(err, errlen, "unknown VM state record %u", tag);
			return -EBADMSG;
		}
		seen |= 1u << (tag - CS_PIC_MASTER);
	}
	if (r < 0) {
		snprintf(err, errlen, "malformed VM state");
		return r;
	}
	if ((seen & 0xf) != 0xf) {
		snprintf(err, errlen, "VM state incomplete (records 0x%x)", seen);
		return -EBADMSG;
	}
	return 0;
}
