/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Live migration, source side: setup, pre-copy iterations of RAM and
 * device data, convergence, switchover (stop-copy), confirmation, and
 * rollback on any failure. The destination side is in incoming.c; the
 * order of events is DESIGN.md "Migration, in order".
 */
#include <errno.h>
#include <json-c/json.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cpu_state.h"
#include "ferry/log.h"
#include "ferry/mig_channel.h"
#include "ferry/mig_converge.h"
#include "ferry/mig_ram.h"
#include "ferry/mig_stream.h"
#include "ferry/trace.h"
#include "ferry/util.h"
#include "ferry/vmig.h"
#include "migration_priv.h"
#include "vfio_user_pci.h"
#include "vmm.h"

/* Bound on one pass of RAM between looks at devices and the return path:
 * keeps device pre-copy data flowing while a large RAM is first sent. */
#define MIG_RAM_PASS_PAGES	(64ull << 20 >> MIG_PAGE_SHIFT)
/* Per iteration, at most this much pre-copy data per device. */
#define MIG_DEV_PASS_BYTES	(32ull << 20)
/* The destination must confirm within this after END. */
#define MIG_CONFIRM_TIMEOUT_MS	60000
#define MIG_IO_TIMEOUT_MS	10000

struct migration mig = {
	.lock = PTHREAD_MUTEX_INITIALIZER,
	.cond = PTHREAD_COND_INITIALIZER,
	.downtime_limit_ms = MIG_DEFAULT_DOWNTIME_MS,
};

static const char *const mig_status_names[MIG_STATUS_NR] = {
	[MIG_STATUS_NONE] = "none",
	[MIG_STATUS_SETUP] = "setup",
	[MIG_STATUS_ACTIVE] = "active",
	[MIG_STATUS_DEVICE] = "device",
	[MIG_STATUS_COMPLETED] = "completed",
	[MIG_STATUS_FAILED] = "failed",
	[MIG_STATUS_CANCELLING] = "cancelling",
	[MIG_STATUS_CANCELLED] = "cancelled",
};

const char *mig_status_name(enum mig_status s)
{
	return s < MIG_STATUS_NR ? mig_status_names[s] : "unknown";
}

void mig_set_status(struct vm *vm, enum mig_status s)
{
	struct json_object *data;

	pthread_mutex_lock(&mig.lock);
	/* Once cancelling, only the end (cancelled, or failed/completed if
	 * it was too late) may follow; and only a running migration can be
	 * cancelling (a cancel racing with the end must not turn a final
	 * status back into one that never ends). */
	if (mig.status == s ||
	    (mig.status == MIG_STATUS_CANCELLING &&
	     (s == MIG_STATUS_SETUP || s == MIG_STATUS_ACTIVE ||
	      s == MIG_STATUS_DEVICE)) ||
	    (s == MIG_STATUS_CANCELLING && mig.status != MIG_STATUS_SETUP &&
	     mig.status != MIG_STATUS_ACTIVE &&
	     mig.status != MIG_STATUS_DEVICE)) {
		pthread_mutex_unlock(&mig.lock);
		return;
	}
	mig.status = s;
	pthread_cond_broadcast(&mig.cond);
	pthread_mutex_unlock(&mig.lock);
	FERRY_TRACE(migration_status, (int)s);
	data = json_object_new_object();
	json_object_object_add(data, "status",
			       json_object_new_string(mig_status_name(s)));
	/* The source exits right after it completes: the final figures
	 * travel with the event (an extra member QMP clients ignore). */
	if (s == MIG_STATUS_COMPLETED || s == MIG_STATUS_FAILED ||
	    s == MIG_STATUS_CANCELLED)
		json_object_object_add(data, "x-info", migration_query(vm));
	vm_qmp_event(vm, "MIGRATION", data);
	json_object_put(data);
}

void mig_device_event(struct vm *vm, struct vmig_dev *d)
{
	struct json_object *data = json_object_new_object();

	/* QEMU's VFIO_MIGRATION event, with ferry's device ids. */
	json_object_object_add(data, "device-id", json_object_new_string(d->id));
	json_object_object_add(data, "device-state",
			       json_object_new_string(vfu_mig_state_name(d->state)));
	vm_qmp_event(vm, "VFIO_MIGRATION", data);
	json_object_put(data);
}

int mig_dev_set_state(struct vm *vm, struct vmig_dev *d,
		      enum vfu_mig_state st)
{
	int ret = vmig_set_state(d, st);

	mig_device_event(vm, d);
	return ret;
}

void mig_error(const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&mig.lock);
	/* The first error is the cause; later ones are consequences. */
	if (!mig.error[0]) {
		va_start(ap, fmt);
		vsnprintf(mig.error, sizeof(mig.error), fmt, ap);
		va_end(ap);
	}
	pthread_mutex_unlock(&mig.lock);
}

/* Describe RAM for the stream code: ranges in memfd order, so page
 * numbers equal memfd page indexes (vm_dirty_log_sync's bitmap). */
void mig_ram_describe(struct vm *vm, struct mig_ram *ram)
{
	const struct vm_ram_range *r;
	unsigned n = vm_ram_ranges(vm, &r);

	memset(ram, 0, sizeof(*ram));
	for (unsigned i = 0; i < n && i < MIG_RAM_MAX_RANGES; i++) {
		ram->r[i].gpa = r[i].gpa;
		ram->r[i].size = r[i].size;
		ram->r[i].hva = r[i].hva;
		ram->r[i].has_fd = true;
		ram->r[i].fd = vm_ram_fd(vm);
		ram->r[i].fd_offset = r[i].fd_offset;
		ram->pages += r[i].size >> MIG_PAGE_SHIFT;
		ram->nr++;
	}
}

struct json_object *mig_config_json(struct vm *vm)
{
	struct json_object *cfg = json_object_new_object();
	struct json_object *devs = json_object_new_array();

	json_object_object_add(cfg, "ram_size",
			       json_object_new_int64((int64_t)vm_ram_size(vm)));
	json_object_object_add(cfg, "vcpus", json_object_new_int(vm->nr_cpus));
	for (unsigned i = 0; i < vm->nr_devs; i++)
		json_object_array_add(devs, vfio_user_pci_identity(vm->devs[i]));
	json_object_object_add(cfg, "devices", devs);
	return cfg;
}

/* ---- return path --------------------------------------------------- */

static void *rp_thread_fn(void *arg)
{
	struct vm *vm = arg;

	for (;;) {
		struct mig_section sec;
		char err[256];
		void *p;
		int ret = mig_section_read(mig.ch, &sec, &p, err, sizeof(err));

		pthread_mutex_lock(&mig.lock);
		if (ret) {
			bool lost = !mig.resumed && !atomic_load(&mig.cancel);

			mig.rp_closed = true;
			pthread_cond_broadcast(&mig.cond);
			pthread_mutex_unlock(&mig.lock);
			if (lost)
				mig_error("destination connection lost: %s", err);
			return NULL;
		}
		switch (sec.type) {
		case MIG_RP_SWITCHOVER_ACK:
			mig.switchover_acked = true;
			break;
		case MIG_RP_RESUMED:
			mig.resumed = true;
			break;
		case MIG_RP_ERROR:
			pthread_mutex_unlock(&mig.lock);
			/* The payload is the destination's NUL-terminated
			 * reason; bound it by what arrived anyway. */
			mig_error("destination failed: %.*s",
				  (int)MIN(sec.length, (uint64_t)sizeof(mig.error)),
				  p ? (char *)p : "");
			pthread_mutex_lock(&mig.lock);
			mig.rp_error = true;
			break;
		default:
			pr_warn("migration: unexpected %s on the return path",
				mig_section_name(sec.type));
			break;
		}
		pthread_cond_broadcast(&mig.cond);
		pthread_mutex_unlock(&mig.lock);
		free(p);
		(void)vm;
	}
}

static bool mig_should_stop(void)
{
	bool stop;

	pthread_mutex_lock(&mig.lock);
	stop = mig.rp_error || mig.rp_closed || atomic_load(&mig.cancel);
	pthread_mutex_unlock(&mig.lock);
	return stop;
}

/*
 * Sleep ns to honour max-bandwidth, but wake on cancel or a return-path
 * event: at a low limit the wait can be hours, and cancel must not wait
 * for it (nor migration_fini, which joins this thread).
 */
static void mig_throttle_wait(uint64_t ns)
{
	struct timespec ts;
	int ret = 0;

	clock_gettime(CLOCK_REALTIME, &ts);
	ns += (uint64_t)ts.tv_nsec;
	ts.tv_sec += (time_t)(ns / 1000000000ull);
	ts.tv_nsec = (long)(ns % 1000000000ull);
	pthread_mutex_lock(&mig.lock);
	while (!mig.rp_error && !mig.rp_closed && !atomic_load(&mig.cancel) &&
	       ret != ETIMEDOUT)
		ret = pthread_cond_timedwait(&mig.cond, &mig.lock, &ts);
	pthread_mutex_unlock(&mig.lock);
}

/* ---- devices --------------------------------------------------------- */

static int mig_devs_init(struct vm *vm)
{
	mig.nr_devs = 0;
	for (unsigned i = 0; i < vm->nr_devs; i++) {
		struct vmig_dev *d = &mig.devs[mig.nr_devs];
		int ret = vmig_dev_init_vfio_user(d,
				vfio_user_pci_client(vm->devs[i]),
				vfio_user_pci_id(vm->devs[i]));

		if (ret) {
			mig_error("device %s cannot migrate: %s",
				  vfio_user_pci_id(vm->devs[i]),
				  ret == -ENOTSUP ? "no STOP_COPY support" :
				  strerror(-ret));
			return ret;
		}
		mig.nr_devs++;
	}
	return 0;
}

static int mig_devs_log_start(struct vm *vm)
{
	struct vfu_dma_log_range ranges[MIG_RAM_MAX_RANGES];
	uint32_t n = 0;

	if (mig.caps.no_device_dirty_log) {
		pr_warn("migration: device dirty logging is OFF (debug "
			"capability x-ignore-device-dirty-log): pages devices "
			"write during pre-copy will be stale on the destination");
		return 0;
	}
	for (unsigned i = 0; i < mig.ram.nr; i++) {
		ranges[n].iova = mig.ram.r[i].gpa;
		ranges[n].length = mig.ram.r[i].size;
		n++;
	}
	for (unsigned i = 0; i < mig.nr_devs; i++) {
		struct vmig_dev *d = &mig.devs[i];
		uint64_t pgsize = MIG_PAGE_SIZE;
		int ret = d->ops->log_start(d, &pgsize, ranges, n);

		if (ret) {
			mig_error("device %s: DMA dirty logging: %s", d->id,
				  strerror(-ret));
			return ret;
		}
		d->logging = true;
		d->log_pgsize = pgsize;
	}
	return 0;
}

static void mig_devs_log_stop(void)
{
	for (unsigned i = 0; i < mig.nr_devs; i++) {
		struct vmig_dev *d = &mig.devs[i];

		if (d->logging && d->ops->log_stop(d))
			pr_warn("device %s: DMA logging stop failed", d->id);
		d->logging = false;
	}
}

/* Merge every device's DMA write log into bm (read-and-clear). */
static int mig_devs_log_sync(uint64_t *bm)
{
	for (unsigned i = 0; i < mig.nr_devs; i++) {
		struct vmig_dev *d = &mig.devs[i];

		if (!d->logging)
			continue;
		for (unsigned r = 0; r < mig.ram.nr; r++) {
			const struct mig_ram_range *rr = &mig.ram.r[r];
			/* The device reports DIV_ROUND_UP(size, pgsize)
			 * bits: a range that is not a multiple of a large
			 * log page still has its tail page. */
			uint64_t pgs = DIV_ROUND_UP(rr->size, d->log_pgsize);
			uint64_t *dbm = calloc(bitmap_words(pgs), 8);
			int ret;

			if (!dbm)
				return -ENOMEM;
			ret = d->ops->log_report(d, rr->gpa, rr->size,
						 d->log_pgsize, dbm);
			if (ret) {
				free(dbm);
				mig_error("device %s: DMA dirty report: %s",
					  d->id, strerror(-ret));
				return ret;
			}
			for (uint64_t w = 0; w < bitmap_words(pgs); w++) {
				uint64_t bits = dbm[w];

				while (bits) {
					uint64_t b = w * 64 +
						(uint64_t)__builtin_ctzll(bits);

					uint64_t gpa = rr->gpa + b * d->log_pgsize;
					uint64_t pfn = mig_ram_pfn(&mig.ram, gpa);

					bits &= bits - 1;
					/* Pages only the device log knew about:
					 * what a VMM without it would lose. */
					if (pfn != UINT64_MAX && !bitmap_test(bm, pfn))
						mig.stats.dev_only_pages++;
					mig_ram_mark(&mig.ram, bm, gpa,
						     d->log_pgsize);
					mig.stats.dev_dirty_pages++;
				}
			}
			free(dbm);
		}
	}
	return 0;
}

static int mig_dev_send_chunk(struct vmig_dev *d, unsigned idx, void *buf,
			      size_t cap, uint64_t *sent)
{
	ssize_t n = d->ops->read_data(d, buf, cap);
	int ret;

	if (n < 0) {
		mig_error("device %s: reading migration data: %s", d->id,
			  strerror((int)-n));
		return (int)n;
	}
	if (n == 0)
		return 0;
	ret = mig_section_write(mig.ch, MIG_SEC_DEV_DATA, 0, idx, buf,
				(size_t)n, NULL, 0);
	if (ret) {
		mig_error("sending device %s data: %s", d->id, strerror(-ret));
		return ret;
	}
	*sent += (uint64_t)n;
	mig.stats.transferred += (uint64_t)n + MIG_SECTION_HDR_SIZE;
	return 1;
}

/* Pre-copy data of every device, bounded per pass. */
static int mig_devs_precopy(void)
{
	for (unsigned i = 0; i < mig.nr_devs; i++) {
		struct vmig_dev *d = &mig.devs[i];
		uint64_t sent = 0, initial = 0, dirty = 0;
		int ret;

		if (d->state != VFU_MIG_STATE_PRE_COPY)
			continue;
		do {
			ret = mig_dev_send_chunk(d, i, mig.buf, MIG_BUF_SIZE,
						 &d->bytes_precopy);
			if (ret < 0)
				return ret;
			sent += MIG_BUF_SIZE;
		} while (ret > 0 && sent < MIG_DEV_PASS_BYTES);
		/* Switchover-ack: tell the destination once all initial
		 * data of this device is on the wire. A device without
		 * PRECOPY_INFO is done when its first drain ran dry. */
		if (!d->init_done) {
			int r = d->ops->precopy_info(d, &initial, &dirty);

			if ((r == 0 && initial == 0) || (r && ret == 0)) {
				ret = mig_section_write(mig.ch,
					MIG_SEC_DEV_INIT_DONE, 0, i, NULL, 0,
					NULL, 0);
				if (ret) {
					mig_error("sending device %s init-done: "
						  "%s", d->id, strerror(-ret));
					return ret;
				}
				d->init_done = true;
			}
		}
	}
	return 0;
}

static uint64_t mig_devs_pending(void)
{
	uint64_t total = 0;

	for (unsigned i = 0; i < mig.nr_devs; i++)
		total += vmig_pending(&mig.devs[i], NULL);
	return total;
}

/* ---- rollback -------------------------------------------------------- */

static void migration_rollback(struct vm *vm)
{
	for (unsigned i = 0; i < mig.nr_devs; i++) {
		struct vmig_dev *d = &mig.devs[i];

		if (d->state != VFU_MIG_STATE_RUNNING &&
		    mig_dev_set_state(vm, d, VFU_MIG_STATE_RUNNING))
			pr_err("device %s: could not return to RUNNING after "
			       "a failed migration (now %s)", d->id,
			       vfu_mig_state_name(d->state));
	}
	mig_devs_log_stop();
	for (unsigned i = 0; i < vm->nr_devs; i++)
		vfio_user_pci_set_saving_traps(vm->devs[i], false);
	if (mig.dirty_logging) {
		vm_dirty_log_stop(vm);
		mig.dirty_logging = false;
	}
	if (mig.paused) {
		vm_resume(vm);
		mig.paused = false;
	}
}

/* ---- the migration thread ------------------------------------------- */

static int mig_sync_dirty(struct vm *vm, uint64_t *bm, uint64_t *kvm_pages)
{
	uint64_t before = bitmap_count(bm, mig.ram.pages);
	int ret = vm_dirty_log_sync(vm, bm);

	if (ret) {
		mig_error("KVM dirty log: %s", strerror(-ret));
		return ret;
	}
	*kvm_pages = bitmap_count(bm, mig.ram.pages) - before;
	return mig_devs_log_sync(bm);
}

static int mig_send_ram(uint64_t *bm, uint64_t max_pages, bool *more)
{
	struct mig_ram_stats st = { 0 };
	int ret = mig_ram_send_dirty(mig.ch, &mig.ram, bm, max_pages, more,
				     &st);

	mig.stats.ram_pages += st.pages_sent;
	mig.stats.zero_pages += st.zero_pages;
	mig.stats.transferred += st.bytes;
	if (ret)
		mig_error("sending RAM: %s", strerror(-ret));
	return ret;
}

static int mig_send_blob(uint16_t type, uint32_t id, void *blob, size_t len)
{
	int ret = mig_section_write(mig.ch, type, 0, id, blob, len, NULL, 0);

	free(blob);
	if (ret) {
		mig_error("sending %s state: %s", mig_section_name(type),
			  strerror(-ret));
		return ret;
	}
	mig.stats.transferred += len + MIG_SECTION_HDR_SIZE;
	return 0;
}

/* Everything after the vCPUs stopped. */
static int mig_switchover(struct vm *vm, uint64_t *bm)
{
	uint64_t t0 = clock_ns(), kvm_pages, t_sync, t_ram;
	bool more, p2p_all = mig.nr_devs > 1;
	uint32_t run;
	int ret;

	mig_set_status(vm, MIG_STATUS_DEVICE);
	mig.was_running = vm_run_state(vm) == VM_STATE_RUNNING;
	vm_pause(vm);
	mig.paused = true;
	mig.stats.downtime_start = t0;

	/* Several devices: quiesce peer-to-peer DMA on all before any stops
	 * (a device must not DMA into a peer that already stopped). */
	for (unsigned i = 0; i < mig.nr_devs; i++)
		if (!(mig.devs[i].flags & VFU_MIGRATION_P2P))
			p2p_all = false;
	if (p2p_all) {
		for (unsigned i = 0; i < mig.nr_devs; i++) {
			struct vmig_dev *d = &mig.devs[i];
			enum vfu_mig_state p2p =
				d->state == VFU_MIG_STATE_PRE_COPY ?
				VFU_MIG_STATE_PRE_COPY_P2P :
				VFU_MIG_STATE_RUNNING_P2P;

			ret = mig_dev_set_state(vm, d, p2p);
			if (ret) {
				mig_error("device %s: %s failed: %s", d->id,
					  vfu_mig_state_name(p2p),
					  strerror(-ret));
				return ret;
			}
		}
	}
	for (unsigned i = 0; i < mig.nr_devs; i++) {
		struct vmig_dev *d = &mig.devs[i];

		ret = mig_dev_set_state(vm, d, VFU_MIG_STATE_STOP_COPY);
		if (ret) {
			mig_error("device %s: STOP_COPY failed: %s", d->id,
				  strerror(-ret));
			return ret;
		}
	}
	/* Devices are quiet now: the last dirty sync is complete. */
	t_sync = clock_ns();
	ret = mig_sync_dirty(vm, bm, &kvm_pages);
	if (ret)
		return ret;
	mig.stats.final_pages = bitmap_count(bm, mig.ram.pages);
	t_ram = clock_ns();
	ret = mig_send_ram(bm, 0, &more);
	pr_debug("switchover: devices stopped in %.1f ms, dirty sync %.1f ms, "
		 "%llu pages in %.1f ms", (t_sync - t0) / 1e6,
		 (t_ram - t_sync) / 1e6,
		 (unsigned long long)mig.stats.final_pages,
		 (clock_ns() - t_ram) / 1e6);
	if (ret)
		return ret;
	for (unsigned i = 0; i < mig.nr_devs; i++) {
		struct vmig_dev *d = &mig.devs[i];

		do {
			ret = mig_dev_send_chunk(d, i, mig.buf, MIG_BUF_SIZE,
						 &d->bytes_stopcopy);
		} while (ret > 0);
		if (ret < 0)
			return ret;
		ret = mig_section_write(mig.ch, MIG_SEC_DEV_END, 0, i, NULL, 0,
					NULL, 0);
		if (ret) {
			mig_error("sending device %s end: %s", d->id,
				  strerror(-ret));
			return ret;
		}
	}
	for (unsigned i = 0; i < vm->nr_cpus; i++) {
		void *blob;
		size_t len;

		ret = vcpu_state_save(vm->kvm_fd, vm->vcpus[i].fd, &blob, &len);
		if (ret) {
			mig_error("saving vCPU %u: %s", i, strerror(-ret));
			return ret;
		}
		ret = mig_send_blob(MIG_SEC_VCPU, i, blob, len);
		if (ret)
			return ret;
	}
	{
		void *blob;
		size_t len;

		ret = vm_kstate_save(vm->vm_fd, &blob, &len);
		if (ret) {
			mig_error("saving irqchip/PIT/clock: %s", strerror(-ret));
			return ret;
		}
		ret = mig_send_blob(MIG_SEC_IRQCHIP, 0, blob, len);
		if (ret)
			return ret;
		ret = vm_serial_save(vm, &blob, &len);
		if (!ret)
			ret = mig_send_blob(MIG_SEC_SERIAL, 0, blob, len);
		if (ret)
			return ret;
	}
	/* Device config last: the destination applies it after the device
	 * state, as vfio-pci does (MSI-X routes need the loaded device). */
	for (unsigned i = 0; i < vm->nr_devs; i++) {
		void *blob;
		size_t len;

		ret = vfio_user_pci_save_state(vm->devs[i], &blob, &len);
		if (ret) {
			mig_error("saving PCI state of %s: %s",
				  vfio_user_pci_id(vm->devs[i]), strerror(-ret));
			return ret;
		}
		ret = mig_send_blob(MIG_SEC_PCI_DEV, i, blob, len);
		if (ret)
			return ret;
	}
	run = mig.was_running;
	/*
	 * From here on the destination may run the guest at any moment: a
	 * cancel can no longer take it back without risking a guest that
	 * runs twice, so cancel waits for the outcome instead (see
	 * migration_cancel()). Only the destination's word decides.
	 */
	pthread_mutex_lock(&mig.lock);
	mig.end_sent = true;
	pthread_mutex_unlock(&mig.lock);
	ret = mig_section_write(mig.ch, MIG_SEC_END, 0, 0, &run, sizeof(run),
				NULL, 0);
	pr_debug("switchover: END written %.1f ms after the vCPUs stopped",
		 (clock_ns() - t0) / 1e6);
	if (ret) {
		mig_error("sending END: %s", strerror(-ret));
		return ret;
	}
	/* A file has no return path: the stream is complete once written
	 * (the caller keeps the guest paused here, as QEMU does). */
	if (!mig.ch->has_return_path) {
		mig.stats.downtime_ns = clock_ns() - t0;
		return 0;
	}
	/* The destination owns the guest once it says it runs. */
	{
		struct timespec ts;
		int wret = 0;

		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += MIG_CONFIRM_TIMEOUT_MS / 1000;
		pthread_mutex_lock(&mig.lock);
		while (!mig.resumed && !mig.rp_error && !mig.rp_closed &&
		       wret != ETIMEDOUT)
			wret = pthread_cond_timedwait(&mig.cond, &mig.lock, &ts);
		ret = mig.resumed ? 0 : -EPIPE;
		pthread_mutex_unlock(&mig.lock);
		if (ret) {
			mig_error(wret == ETIMEDOUT ? "destination did not "
				  "confirm it runs the guest" :
				  "destination closed before confirming");
			return ret;
		}
	}
	mig.stats.downtime_ns = clock_ns() - t0;
	return 0;
}

static void *mig_thread_fn(void *arg)
{
	struct vm *vm = arg;
	uint64_t *bm = NULL, t_start = clock_ns();
	struct mig_channel *ch = NULL;
	struct json_object *cfg;
	const char *cfg_str;
	bool rp_started = false;
	int ret;

	mig.buf = malloc(MIG_BUF_SIZE);
	bm = calloc(bitmap_words(mig.ram.pages), 8);
	if (!mig.buf || !bm) {
		mig_error("out of memory");
		goto out_fail;
	}
	ret = mig_channel_connect(&mig.uri, MIG_IO_TIMEOUT_MS, &ch);
	pthread_mutex_lock(&mig.lock);
	mig.ch = ch;
	pthread_mutex_unlock(&mig.lock);
	if (ret) {
		mig_error("cannot reach the destination %s: %s", mig.uri_str,
			  strerror(-ret));
		goto out_fail;
	}
	if (!mig.ch->has_return_path && mig.caps.switchover_ack) {
		mig_error("switchover-ack needs a return path (tcp: or unix:)");
		goto out_fail;
	}
	if (mig.ch->has_return_path) {
		if (pthread_create(&mig.rp_thread, NULL, rp_thread_fn, vm)) {
			mig_error("cannot start the return-path thread");
			goto out_fail;
		}
		rp_started = true;
	}
	ret = mig_stream_write_header(mig.ch);
	cfg = mig_config_json(vm);
	json_object_object_add(cfg, "switchover_ack",
			       json_object_new_boolean(mig.caps.switchover_ack));
	cfg_str = json_object_to_json_string_ext(cfg, JSON_C_TO_STRING_PLAIN);
	if (!ret)
		ret = mig_section_write(mig.ch, MIG_SEC_CONFIG, 0, 0, cfg_str,
					strlen(cfg_str) + 1, NULL, 0);
	json_object_put(cfg);
	if (ret) {
		mig_error("sending the configuration: %s", strerror(-ret));
		goto out_fail;
	}

	/* Dirty tracking on before the first pass, so nothing written
	 * while it runs is missed. */
	ret = vm_dirty_log_start(vm);
	if (ret) {
		mig_error("KVM dirty logging: %s", strerror(-ret));
		goto out_fail;
	}
	mig.dirty_logging = true;
	if (mig_devs_log_start(vm))
		goto out_fail;
	/* Trap the device-memory areas the device must see while saving,
	 * synchronously, before it enters PRE_COPY. */
	for (unsigned i = 0; i < vm->nr_devs; i++) {
		ret = vfio_user_pci_set_saving_traps(vm->devs[i], true);
		if (ret) {
			mig_error("device %s: trapping BAR areas: %s",
				  vfio_user_pci_id(vm->devs[i]), strerror(-ret));
			goto out_fail;
		}
	}
	for (unsigned i = 0; i < mig.nr_devs; i++) {
		struct vmig_dev *d = &mig.devs[i];

		if (!(d->flags & VFU_MIGRATION_PRE_COPY)) {
			d->init_done = true;
			continue;
		}
		ret = mig_dev_set_state(vm, d, VFU_MIG_STATE_PRE_COPY);
		if (ret) {
			mig_error("device %s: PRE_COPY failed: %s", d->id,
				  strerror(-ret));
			goto out_fail;
		}
	}
	for (uint64_t p = 0; p < mig.ram.pages; p++)
		bitmap_set(bm, p);
	mig.stats.setup_ns = clock_ns() - t_start;
	mig_set_status(vm, MIG_STATUS_ACTIVE);

	for (;;) {
		uint64_t t_iter = clock_ns(), sent0 = mig.stats.transferred;
		uint64_t kvm_pages, remaining, wait_ns;
		bool more = true, ready, acked = true;

		/* One iteration: all dirty RAM (in slices, device data in
		 * between), then the devices' pre-copy data. */
		while (more) {
			if (mig_should_stop())
				goto out_fail;
			ret = mig_send_ram(bm, MIG_RAM_PASS_PAGES, &more);
			if (ret || mig_devs_precopy())
				goto out_fail;
			pthread_mutex_lock(&mig.lock);
			mig.stats.remaining = bitmap_count(bm, mig.ram.pages) *
					      MIG_PAGE_SIZE;
			pthread_mutex_unlock(&mig.lock);
			wait_ns = mig_converge_throttle_ns(&mig.conv,
					mig.stats.transferred - sent0,
					clock_ns() - t_iter);
			if (wait_ns)
				mig_throttle_wait(wait_ns);
		}
		ret = mig_section_write(mig.ch, MIG_SEC_ITER_END, 0, 0, NULL, 0,
					NULL, 0);
		if (ret) {
			mig_error("destination gone: %s", strerror(-ret));
			goto out_fail;
		}
		if (mig_sync_dirty(vm, bm, &kvm_pages))
			goto out_fail;
		mig.stats.dirty_pages = bitmap_count(bm, mig.ram.pages);
		mig_converge_sample(&mig.conv, mig.stats.transferred - sent0,
				    clock_ns() - t_iter,
				    mig.stats.dirty_pages * MIG_PAGE_SIZE);
		remaining = mig.stats.dirty_pages * MIG_PAGE_SIZE +
			    mig_devs_pending() + mig_channel_unsent(mig.ch);
		pthread_mutex_lock(&mig.lock);
		ready = mig_converge_ready(&mig.conv, remaining);
		mig.stats.remaining = remaining;
		if (mig.caps.switchover_ack)
			acked = mig.switchover_acked;
		mig_converge_reason(&mig.conv, mig.reason, sizeof(mig.reason));
		if (ready && !acked)
			snprintf(mig.reason, sizeof(mig.reason), "converged; "
				 "waiting for the destination's switchover-ack");
		pthread_mutex_unlock(&mig.lock);
		FERRY_TRACE(migration_iteration, mig.conv.iterations,
			    mig.stats.dirty_pages, remaining);
		if (ready && acked)
			break;
	}
	if (mig_switchover(vm, bm))
		goto out_fail;

	mig.stats.total_ns = clock_ns() - t_start;
	if (mig.ch->has_return_path) {
		/* The guest lives on the destination now; devices here stay
		 * stopped. */
		for (unsigned i = 0; i < mig.nr_devs; i++)
			mig_dev_set_state(vm, &mig.devs[i], VFU_MIG_STATE_STOP);
		mig_devs_log_stop();
	}
	if (mig.ch->has_return_path) {
		pthread_mutex_lock(&mig.lock);
		mig.migrated_away = true;
		pthread_mutex_unlock(&mig.lock);
	}
	mig_set_status(vm, MIG_STATUS_COMPLETED);
	pr_info("migration completed: %.3f s total, %.1f ms downtime, "
		"%llu bytes, %u iterations, %llu pages in the last pass, "
		"%llu pages reported by device DMA logs (%llu only by them)",
		mig.stats.total_ns / 1e9, mig.stats.downtime_ns / 1e6,
		(unsigned long long)mig.stats.transferred, mig.conv.iterations,
		(unsigned long long)mig.stats.final_pages,
		(unsigned long long)mig.stats.dev_dirty_pages,
		(unsigned long long)mig.stats.dev_only_pages);
	if (!mig.ch->has_return_path) {
		/* Saved to a file: the guest stays here, paused (QEMU's
		 * postmigrate); devices run again so that `cont` resumes a
		 * consistent VM. */
		/* Take a user pause before dropping ours: no vCPU may run
		 * in between. */
		if (mig.was_running && vm_user_stop(vm))
			vm_qmp_event(vm, "STOP", NULL);
		migration_rollback(vm);
		pr_info("migration to %s complete; the guest is paused here "
			"(cont resumes it)", mig.uri_str);
		goto out;
	}
	vm_request_exit(vm, 0, "migration-completed");
	goto out;

out_fail:
	migration_rollback(vm);
	mig.stats.total_ns = clock_ns() - t_start;
	if (atomic_load(&mig.cancel)) {
		mig_set_status(vm, MIG_STATUS_CANCELLED);
		pr_info("migration cancelled; the guest keeps running here");
	} else {
		mig_set_status(vm, MIG_STATUS_FAILED);
		pr_err("migration failed: %s; the guest keeps running here",
		       mig.error);
	}
out:
	if (mig.ch)
		mig_channel_shutdown(mig.ch);
	if (rp_started)
		pthread_join(mig.rp_thread, NULL);
	/* migration_cancel() uses mig.ch under the lock. */
	pthread_mutex_lock(&mig.lock);
	ch = mig.ch;
	mig.ch = NULL;
	pthread_mutex_unlock(&mig.lock);
	mig_channel_close(ch);
	free(bm);
	free(mig.buf);
	mig.buf = NULL;
	return NULL;
}

int migration_start(struct vm *vm, const char *uri, char *err, size_t errlen)
{
	int ret;

	pthread_mutex_lock(&mig.lock);
	if (mig.status == MIG_STATUS_SETUP || mig.status == MIG_STATUS_ACTIVE ||
	    mig.status == MIG_STATUS_DEVICE ||
	    mig.status == MIG_STATUS_CANCELLING) {
		pthread_mutex_unlock(&mig.lock);
		snprintf(err, errlen, "There's a migration process in progress");
		return -EBUSY;
	}
	if (mig.migrated_away) {
		pthread_mutex_unlock(&mig.lock);
		snprintf(err, errlen, "The guest was already migrated away");
		return -EINVAL;
	}
	if (incoming_pending(vm)) {
		pthread_mutex_unlock(&mig.lock);
		snprintf(err, errlen, "Guest is waiting for an incoming "
			 "migration");
		return -EINVAL;
	}
	pthread_mutex_unlock(&mig.lock);
	if (mig.thread_started) {
		pthread_join(mig.thread, NULL);
		mig.thread_started = false;
	}
	ret = mig_uri_parse(uri, &mig.uri, err, errlen);
	if (ret)
		return ret;
	snprintf(mig.uri_str, sizeof(mig.uri_str), "%s", uri);
	mig.vm = vm;
	memset(&mig.stats, 0, sizeof(mig.stats));
	mig.stats.start_ns = clock_ns();
	mig.error[0] = '\0';
	mig.reason[0] = '\0';
	mig.switchover_acked = mig.resumed = mig.rp_error = mig.rp_closed = false;
	mig.end_sent = false;
	mig.paused = mig.dirty_logging = false;
	atomic_store(&mig.cancel, false);
	mig_converge_init(&mig.conv, mig.downtime_limit_ms, mig.max_bandwidth);
	mig_ram_describe(vm, &mig.ram);
	mig_set_status(vm, MIG_STATUS_SETUP);
	ret = mig_devs_init(vm);
	if (ret) {
		snprintf(err, errlen, "%s", mig.error);
		mig_set_status(vm, MIG_STATUS_FAILED);
		return ret;
	}
	if (pthread_create(&mig.thread, NULL, mig_thread_fn, vm)) {
		snprintf(err, errlen, "cannot start the migration thread");
		mig_set_status(vm, MIG_STATUS_FAILED);
		return -EAGAIN;
	}
	mig.thread_started = true;
	return 0;
}

int migration_cancel(struct vm *vm)
{
	pthread_mutex_lock(&mig.lock);
	if (mig.status != MIG_STATUS_SETUP && mig.status != MIG_STATUS_ACTIVE &&
	    mig.status != MIG_STATUS_DEVICE) {
		/* Like QEMU: cancelling nothing is not an error. */
		pthread_mutex_unlock(&mig.lock);
		return 0;
	}
	if (mig.end_sent) {
		/* The whole state is on its way: whether the guest runs there
		 * is the destination's call now (its confirmation, its error,
		 * or its silence until the timeout). */
		pthread_mutex_unlock(&mig.lock);
		pr_warn("migrate_cancel: too late, the destination has the "
			"whole state; waiting for its confirmation");
		return -EBUSY;
	}
	atomic_store(&mig.cancel, true);
	pthread_mutex_unlock(&mig.lock);
	/* A no-op if the migration ended in between (see mig_set_status). */
	mig_set_status(vm, MIG_STATUS_CANCELLING);
	pthread_mutex_lock(&mig.lock);
	/* Wake a blocked send or receive. mig.ch is only closed under the
	 * lock: NULL here if the migration ended meanwhile. */
	if (mig.ch && !mig.resumed)
		mig_channel_shutdown(mig.ch);
	pthread_cond_broadcast(&mig.cond);
	pthread_mutex_unlock(&mig.lock);
	return 0;
}

void migration_fini(struct vm *vm)
{
	if (mig.thread_started) {
		migration_cancel(vm);
		pthread_join(mig.thread, NULL);
		mig.thread_started = false;
	}
	incoming_fini(vm);
}

static void json_add_u64(struct json_object *o, const char *k, uint64_t v)
{
	json_object_object_add(o, k, json_object_new_int64((int64_t)v));
}

struct json_object *migration_query(struct vm *vm)
{
	struct json_object *r = json_object_new_object();
	struct json_object *ram, *devs;
	uint64_t now = clock_ns();

	pthread_mutex_lock(&mig.lock);
	if (mig.status == MIG_STATUS_NONE) {
		pthread_mutex_unlock(&mig.lock);
		return r;
	}
	json_object_object_add(r, "status",
			       json_object_new_string(mig_status_name(mig.status)));
	ram = json_object_new_object();
	json_add_u64(ram, "transferred", mig.stats.transferred);
	json_add_u64(ram, "remaining", mig.stats.remaining);
	json_add_u64(ram, "total", vm_ram_size(vm));
	json_add_u64(ram, "normal", mig.stats.ram_pages);
	json_add_u64(ram, "duplicate", mig.stats.zero_pages);
	json_add_u64(ram, "dirty-sync-count", mig.conv.iterations);
	json_add_u64(ram, "page-size", MIG_PAGE_SIZE);
	json_add_u64(ram, "dirty-pages-rate",
		     (uint64_t)(mig.conv.dirty_rate / MIG_PAGE_SIZE));
	json_add_u64(ram, "mbps", (uint64_t)(mig.conv.bandwidth * 8 / 1e6));
	json_add_u64(ram, "device-dirty-pages", mig.stats.dev_dirty_pages);
	json_add_u64(ram, "device-only-dirty-pages", mig.stats.dev_only_pages);
	json_object_object_add(r, "ram", ram);
	devs = json_object_new_array();
	for (unsigned i = 0; i < mig.nr_devs; i++) {
		struct vmig_dev *d = &mig.devs[i];
		struct json_object *o = json_object_new_object();

		json_object_object_add(o, "id", json_object_new_string(d->id));
		json_object_object_add(o, "state",
				       json_object_new_string(vfu_mig_state_name(d->state)));
		json_add_u64(o, "precopy-bytes", d->bytes_precopy);
		json_add_u64(o, "stopcopy-bytes", d->bytes_stopcopy);
		json_object_object_add(o, "init-data-sent",
				       json_object_new_boolean(d->init_done));
		json_object_array_add(devs, o);
	}
	json_object_object_add(r, "vfio-user-devices", devs);
	if (mig.status == MIG_STATUS_COMPLETED) {
		json_add_u64(r, "total-time", mig.stats.total_ns / 1000000);
		json_add_u64(r, "downtime", mig.stats.downtime_ns / 1000000);
		json_add_u64(r, "downtime-us", mig.stats.downtime_ns / 1000);
	} else if (mig.status == MIG_STATUS_FAILED ||
		   mig.status == MIG_STATUS_CANCELLED) {
		json_add_u64(r, "total-time", mig.stats.total_ns / 1000000);
	} else {
		json_add_u64(r, "total-time",
			     (now - mig.stats.start_ns) / 1000000);
		if (mig.conv.expected_downtime_ms != UINT64_MAX)
			json_add_u64(r, "expected-downtime",
				     mig.conv.expected_downtime_ms);
	}
	json_add_u64(r, "setup-time", mig.stats.setup_ns / 1000000);
	json_add_u64(r, "iterations", mig.conv.iterations);
	if (mig.reason[0])
		json_object_object_add(r, "x-convergence",
				       json_object_new_string(mig.reason));
	if (mig.error[0])
		json_object_object_add(r, "error-desc",
				       json_object_new_string(mig.error));
	pthread_mutex_unlock(&mig.lock);
	return r;
}

int migration_set_parameter(struct vm *vm, const char *name, int64_t value,
			    bool check_only, char *err, size_t errlen)
{
	if (!strcmp(name, "downtime-limit")) {
		if (value < 0 || value > MIG_MAX_DOWNTIME_MS) {
			snprintf(err, errlen, "Parameter 'downtime-limit' "
				 "expects an integer in the range of 0 to %d "
				 "milliseconds", MIG_MAX_DOWNTIME_MS);
			return -EINVAL;
		}
		if (check_only)
			return 0;
		pthread_mutex_lock(&mig.lock);
		mig.downtime_limit_ms = (uint64_t)value;
		mig.conv.downtime_limit_ms = (uint64_t)value;
		pthread_mutex_unlock(&mig.lock);
		return 0;
	}
	if (!strcmp(name, "max-bandwidth")) {
		if (value < 0) {
			snprintf(err, errlen, "Parameter 'max-bandwidth' "
				 "expects a non-negative size in bytes per "
				 "second");
			return -EINVAL;
		}
		if (check_only)
			return 0;
		pthread_mutex_lock(&mig.lock);
		mig.max_bandwidth = (uint64_t)value;
		mig.conv.max_bandwidth = (uint64_t)value;
		pthread_mutex_unlock(&mig.lock);
		return 0;
	}
	snprintf(err, errlen, "Parameter '%s' is unexpected", name);
	return -EINVAL;
}

int migration_set_capability(struct vm *vm, const char *name, bool on,
			     bool check_only, char *err, size_t errlen)
{
	bool *cap;

	if (!strcmp(name, "switchover-ack"))
		cap = &mig.caps.switchover_ack;
	else if (!strcmp(name, "return-path"))
		cap = &mig.caps.return_path;	/* always on for sockets */
	else if (!strcmp(name, "x-ignore-device-dirty-log"))
		cap = &mig.caps.no_device_dirty_log;
	else {
		snprintf(err, errlen, "Capability '%s' is not supported", name);
		return -EINVAL;
	}
	pthread_mutex_lock(&mig.lock);
	if (mig.status == MIG_STATUS_SETUP || mig.status == MIG_STATUS_ACTIVE ||
	    mig.status == MIG_STATUS_DEVICE) {
		pthread_mutex_unlock(&mig.lock);
		snprintf(err, errlen, "There's a migration process in progress");
		return -EBUSY;
	}
	if (!check_only)
		*cap = on;
	pthread_mutex_unlock(&mig.lock);
	return 0;
}

struct json_object *migration_query_parameters(struct vm *vm)
{
	struct json_object *r = json_object_new_object();

	pthread_mutex_lock(&mig.lock);
	json_add_u64(r, "downtime-limit", mig.downtime_limit_ms);
	json_add_u64(r, "max-bandwidth", mig.max_bandwidth);
	pthread_mutex_unlock(&mig.lock);
	return r;
}

struct json_object *migration_query_capabilities(struct vm *vm)
{
	struct json_object *r = json_object_new_array();
	const struct { const char *name; bool *v; } caps[] = {
		{ "switchover-ack", &mig.caps.switchover_ack },
		{ "return-path", &mig.caps.return_path },
		{ "x-ignore-device-dirty-log", &mig.caps.no_device_dirty_log },
	};

	pthread_mutex_lock(&mig.lock);
	for (size_t i = 0; i < ARRAY_SIZE(caps); i++) {
		struct json_object *o = json_object_new_object();

		json_object_object_add(o, "capability",
				       json_object_new_string(caps[i].name));
		json_object_object_add(o, "state",
				       json_object_new_boolean(*caps[i].v));
		json_object_array_add(r, o);
	}
	pthread_mutex_unlock(&mig.lock);
	return r;
}
