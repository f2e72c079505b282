/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The migration engine: moves a running VM -- guest RAM, its passthrough
 * devices (ferry/vdev.h) and the VMM's own state -- from a source to a
 * destination over the ferry stream (docs/migration.md,
 * docs/migration-stream.md). It knows nothing of KVM or of any one VMM:
 * the VMM plugs in through struct mig_host_ops, and hears what happens
 * through struct mig_event_ops.
 *
 * One engine per VM; an engine runs one migration at a time, either
 * way (a VM that arrived can leave again), on a thread of its own. Two
 * engines in one process are independent (no globals).
 *
 * Source (mig_save_start): connect, send the configuration, dirty
 * tracking on (host RAM log, device DMA logs), trap device areas, devices
 * to PRE_COPY, iterate RAM and device pre-copy data until the estimated
 * rest fits the downtime limit (and, with switchover-ack, the destination
 * acked), pause the vCPUs, devices to STOP_COPY (P2P first), last RAM,
 * device data, VMM state sections, END. With a return path the guest is
 * then handed over in three steps, so that no single lost or stalled
 * message can make it run on both sides: the destination, having loaded
 * and checked everything, says READY; the source answers COMMIT and from
 * then on never resumes the guest by itself; the destination runs it on
 * COMMIT, and only then, and says RESUMED. Until COMMIT is sent the
 * source owns the guest: cancel, any failure, or a switchover that
 * overruns its deadline (10 x downtime-limit, at least 5 s) rolls back
 * (devices RUNNING, logs off, traps off, vCPUs resumed if they were
 * running). After RESUMED the devices go to STOP and host->handed_over()
 * runs. If RESUMED never comes after COMMIT, nobody knows where the
 * guest runs: the source keeps it paused with its devices stopped,
 * calls host->outcome_unknown() and waits for mig_engine_resolve(). A
 * channel without a return path (a file) completes once END is written;
 * the guest then stays paused (host->hold_paused()).
 *
 * Destination (mig_load_start): check the source's configuration
 * against the host's before loading anything, devices to RESUMING, load
 * RAM and device data while the source iterates, ack the switchover
 * once every device has its initial data, and at END apply in the order
 * hardware needs: devices RESUMING -> STOP (they validate their stream),
 * host->state_apply() (irqchip, vCPUs, then device config); READY and
 * wait for COMMIT (a source that never commits keeps the guest); devices
 * RUNNING, host->start(); then RESUMED. On any error: the reason on the
 * return path, devices reset out of RESUMING, host->load_failed(); no
 * guest instruction ran.
 *
 * Errors: functions return 0 or -errno with a message in err. Errors on
 * the engine's threads are recorded once (the first is the cause) under
 * the engine's lock and shown in mig_stats.error.
 */
#ifndef FERRY_MIG_ENGINE_H
#define FERRY_MIG_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/mig_channel.h"
#include "ferry/mig_devs.h"
#include "ferry/mig_ram.h"
#include "ferry/vdev.h"

struct cpr_fds;
struct json_object;
struct mig_engine;

/* QEMU's MigrationStatus names where the concept is the same. */
enum mig_status {
	MIG_STATUS_NONE,
	MIG_STATUS_SETUP,
	MIG_STATUS_ACTIVE,
	MIG_STATUS_DEVICE,	/* vCPUs stopped, stop-copy */
	MIG_STATUS_COMPLETED,
	MIG_STATUS_FAILED,
	MIG_STATUS_CANCELLING,
	MIG_STATUS_CANCELLED,
	MIG_STATUS_NR,
};

const char *mig_status_name(enum mig_status s);

/*
 * What a migration moves (QEMU's MigMode names). normal: to another host,
 * RAM and device state copied. The CPR modes move the VM to a new VMM
 * process on this host without copying anything: guest RAM, the device
 * connections and interrupt eventfds go as fds (ferry/cpr_fds.h), only
 * the VMM's state (vCPUs, irqchip, PCI/MSI-X) goes on the stream; the
 * devices never stop (they are not migrated, they are kept).
 * cpr-transfer: a new process started with a cpr channel takes the fds
 * over a UNIX socket, builds its VM while the guest still runs here, and
 * takes over at a short pause (the three-step hand-over, so either this
 * process or the new one runs the guest, never both). cpr-exec: this
 * process exec()s the new image in place, fds kept open, the stream in a
 * file.
 */
enum mig_mode {
	MIG_MODE_NORMAL,
	MIG_MODE_CPR_TRANSFER,
	MIG_MODE_CPR_EXEC,
	MIG_MODE_NR,
};

const char *mig_mode_name(enum mig_mode m);
/* "normal", "cpr-transfer", "cpr-exec": 0, or -EINVAL. */
int mig_mode_parse(const char *s, enum mig_mode *out);

/* Emit one VMM state section (host->state_save()); type is the VMM's
 * own (MIG_SEC_VCPU...), not one the engine uses. 0 or -errno. */
typedef int (*mig_put_fn)(void *ctx, uint16_t type, uint32_t id,
			  const void *data, size_t len);

/*
 * What the engine needs from its VMM. Called on the engine's thread
 * unless said otherwise; 0 or -errno.
 */
struct mig_host_ops {
	/* Guest RAM: ranges and host mappings. Page numbers (bitmap bits)
	 * index the ranges concatenated in order. */
	int (*ram_describe)(void *host, struct mig_ram *ram);
	/* Dirty tracking of guest RAM by vCPUs and by the VMM itself:
	 * sync ORs the pages written since the previous sync into bitmap
	 * and clears them -- or, with dirty_log_clear (optional), ORs the
	 * pages written since they were last cleared and leaves them set:
	 * the engine clears each chunk of pages right before it reads them
	 * (mig_ram_clear_fn in ferry/mig_ram.h), so a page the guest keeps
	 * writing during a pass is sent once per pass, and tracking costs
	 * the guest nothing where it was not re-armed yet. */
	int (*dirty_log_start)(void *host);
	int (*dirty_log_sync)(void *host, uint64_t *bitmap);
	int (*dirty_log_clear)(void *host, uint64_t pfn, uint64_t npages,
			       const uint64_t *bits);
	void (*dirty_log_stop)(void *host);

	/* vCPUs. pause() (nestable with the VMM's own pauses) returns when
	 * no vCPU runs guest code; running() says whether the guest was
	 * running (not paused by the user) before. */
	bool (*running)(void *host);
	void (*pause)(void *host);
	void (*resume)(void *host);

	/* Switch the device areas that must reach the device while it
	 * saves between direct mapping and trapped access, synchronously:
	 * on return no vCPU writes them behind the device's back. */
	int (*set_saving_traps)(void *host, bool trap);

	/* The VMM's part of the configuration both sides must share (the
	 * engine adds RAM size and its own flags), and the check of the
	 * source's against this VMM's (-EINVAL and a message naming both
	 * values on a mismatch). */
	struct json_object *(*config)(void *host);
	int (*config_check)(void *host, struct json_object *src, char *err,
			    size_t errlen);

	/* VMM state (vCPUs, irqchip, clock, serial, PCI/MSI-X): the source
	 * emits its sections after the devices' data; the destination takes
	 * them as they arrive (-ENOENT: not a type it knows; -EBADMSG and a
	 * message: bad id or length) and applies them all at the end, with
	 * the devices in STOP and before they run. discard() frees what
	 * was loaded, applied or not. */
	int (*state_save)(void *host, mig_put_fn put, void *ctx, char *err,
			  size_t errlen);
	int (*state_load)(void *host, uint16_t type, uint32_t id,
			  const void *data, size_t len, char *err,
			  size_t errlen);
	int (*state_apply)(void *host, char *err, size_t errlen);
	void (*state_discard)(void *host);
	/* Destination: start the vCPUs (run false: leave the guest paused,
	 * as it was on the source). */
	int (*start)(void *host, bool run);

	/*
	 * Live update (CPR modes; optional: without them the modes are
	 * refused). Source: prepare() registers the fds the new process
	 * needs and sets the registry's blob (what else it needs to build
	 * the same VM over them), the guest still running; freeze(), with
	 * the vCPUs paused, makes every device interrupt stay counted in
	 * its eventfd and stops talking to the devices; thaw() undoes it
	 * (the hand-over failed: the guest runs here again); handed_over is
	 * followed by cpr_release(): let go of the devices without a word,
	 * they live on in the new process. exec() replaces this process
	 * with the new image, reg's fds left open for it; it returns only
	 * if the exec failed. Destination: activate() at COMMIT, before
	 * start(): talk to the adopted devices, deliver what their
	 * interrupts counted meanwhile.
	 */
	int (*cpr_prepare)(void *host, struct cpr_fds *reg, const char *id,
			   char *err, size_t errlen);
	int (*cpr_freeze)(void *host, char *err, size_t errlen);
	void (*cpr_thaw)(void *host);
	void (*cpr_release)(void *host);
	int (*cpr_exec)(void *host, struct cpr_fds *reg, char *err,
			size_t errlen);
	int (*cpr_activate)(void *host, char *err, size_t errlen);

	/* Outcomes. Source: the guest runs at the destination now (stop
	 * this copy for good); the guest must stay paused when the engine
	 * drops its pause (a file was written: QEMU's postmigrate); nobody
	 * knows whether the destination runs the guest (it stays paused
	 * here until mig_engine_resolve()). Destination: the load failed,
	 * the guest must never run here. */
	void (*handed_over)(void *host);
	void (*hold_paused)(void *host);
	void (*outcome_unknown)(void *host);
	void (*load_failed)(void *host);
};

/* What the engine reports, from any of its threads. */
struct mig_event_ops {
	void (*status)(void *opaque, enum mig_status status);
	void (*device_state)(void *opaque, const char *id,
			     enum vfu_mig_state state);
	/* Source: pass number pass (from 1) over dirty RAM begins
	 * (optional). */
	void (*pass)(void *opaque, unsigned pass);
};

struct mig_params {
	uint64_t downtime_limit_ms;	/* default MIG_DEFAULT_DOWNTIME_MS */
	uint64_t max_bandwidth;		/* bytes/s, 0 = unlimited */
	bool switchover_ack;
	bool no_device_dirty_log;	/* debug: the negative control */
	/* A channel without progress for this long fails the migration
	 * (source writes, destination reads); 0: 10 s for writes, 60 s for
	 * reads (the source may pause between sends, e.g. throttled). */
	uint64_t io_timeout_ms;
	/* Multifd: multifd_channels connections beside the main one carry
	 * RAM (and, with multifd_device_state, the devices' switchover
	 * state as packets). Both sides must agree on both numbers. */
	bool multifd;
	unsigned multifd_channels;	/* 1..MIG_MAX_MULTIFD_CHANNELS */
	bool multifd_device_state;	/* default true, as QEMU's auto */
	/* Destination: bytes of one device's state that may wait out of
	 * order (0: no bound, as QEMU's default). */
	uint64_t max_queued_bytes;
	bool no_reorder;		/* debug: the negative control */
	/* Debug, source: queue each device's switchover packets last to
	 * first (the reassembler's worst case: all wait for packet 0), or
	 * never send packet 0 (a loss the destination must notice). */
	bool devstate_reverse;
	bool devstate_drop_first;
	enum mig_mode mode;		/* default normal */
};

#define MIG_MAX_IO_TIMEOUT_MS	3600000	/* an hour */
#define MIG_MAX_MULTIFD_CHANNELS	64
#define MIG_DEFAULT_MULTIFD_CHANNELS	2	/* QEMU's */

struct mig_dev_stats {
	const char *id;			/* the device's; lives as long */
	enum vfu_mig_state state;
	uint64_t precopy_bytes;
	uint64_t stopcopy_bytes;
	bool init_done;
};

struct mig_stats {
	enum mig_status status;
	bool incoming;			/* the last migration was a load */
	uint64_t start_ns, setup_ns, total_ns, downtime_ns;
	uint64_t transferred;		/* stream bytes, framing included */
	uint64_t remaining;
	uint64_t ram_bytes;
	uint64_t ram_pages;		/* data pages sent */
	uint64_t zero_pages;
	uint64_t dirty_pages;		/* after the last sync */
	uint64_t final_pages;		/* sent with the vCPUs stopped */
	uint64_t dev_dirty_pages;	/* reported by device DMA logs */
	uint64_t dev_only_pages;	/* ...that the RAM log did not have */
	unsigned iterations;		/* pre-copy passes done */
	unsigned dirty_syncs;		/* passes begun, the final one too */
	double bandwidth;		/* bytes/s, per pass (convergence) */
	double dirty_rate;		/* bytes/s, measured at each sync */
	/* While active: bytes/s on the wire over the last 100 ms or more
	 * (QEMU's mbps), and pages (data and zero) per second between the
	 * engine's last two statistics updates. */
	double xfer_rate;
	uint64_t pages_per_second;
	/* Bytes before the vCPUs stopped, and with them stopped. */
	uint64_t precopy_bytes;
	uint64_t downtime_bytes;
	uint64_t expected_downtime_ms;	/* UINT64_MAX: unknown */
	unsigned nr_devs;
	struct mig_dev_stats dev[MIG_MAX_DEVICES];
	uint64_t io_idle_ms;		/* since bytes last moved */
	uint64_t multifd_bytes;		/* on the multifd channels */
	unsigned nr_channels;		/* multifd channels */
	uint64_t channel_bytes[MIG_MAX_MULTIFD_CHANNELS];
	/* Device state over multifd: packets sent (source) or received
	 * (destination); of those received, how many came ahead of their
	 * turn, and the most bytes one device had waiting. */
	uint64_t dev_packets;
	uint64_t dev_packets_early;
	uint64_t dev_queued_peak;
	enum mig_mode mode;		/* what the last migration was */
	bool outcome_unknown;		/* see mig_engine_resolve() */
	/* The guest was handed over to a destination: set before the
	 * status reads COMPLETED, so whoever sees COMPLETED sees it. */
	bool migrated_away;
	char reason[256];		/* why not switched over yet */
	char error[512];		/* the first error */
};

int mig_engine_create(const struct mig_host_ops *ops, void *host,
		      struct mig_engine **out);
/* Cancel what runs, wait for the engine's threads, free. */
void mig_engine_destroy(struct mig_engine *e);
void mig_engine_set_events(struct mig_engine *e,
			   const struct mig_event_ops *ops, void *opaque);
/* The devices that migrate with the VM, in the order both sides list
 * them (the stream names devices by index). -EBUSY while migrating. */
int mig_engine_set_devices(struct mig_engine *e, struct vdev *const *devs,
			   unsigned n);

void mig_engine_get_params(struct mig_engine *e, struct mig_params *p);
/* Downtime limit and bandwidth apply at once, even to a running
 * migration; the flags only between migrations (-EBUSY). Out-of-range
 * values: -EINVAL. */
int mig_engine_set_params(struct mig_engine *e, const struct mig_params *p,
			  char *err, size_t errlen);

/*
 * Start a migration to uri (tcp:HOST:PORT, unix:PATH, file:PATH), or
 * over an already connected channel (the engine takes it either way).
 * Returns once the migration thread runs; -EBUSY if one runs, -EINVAL
 * if the guest already left.
 */
int mig_save_start(struct mig_engine *e, const char *uri, char *err,
		   size_t errlen);
int mig_save_start_channel(struct mig_engine *e, struct mig_channel *ch,
			   char *err, size_t errlen);
/* cpr-transfer: the main channel to uri, the fds first to cpr_uri (a
 * unix: socket where the new process waits). */
int mig_save_start_cpr(struct mig_engine *e, const char *uri,
		       const char *cpr_uri, char *err, size_t errlen);
/* Destination: this VMM adopted the fds of migration id (a CPR mode):
 * the stream must say the same mode and id, and carries no RAM and no
 * device data. */
int mig_engine_set_cpr_incoming(struct mig_engine *e, enum mig_mode mode,
				const char *id);
/* Load a migration stream from ch (taken) on the engine's thread; or
 * one whose header mig_accept_source() already checked (minor: its
 * version). */
int mig_load_start(struct mig_engine *e, struct mig_channel *ch, char *err,
		   size_t errlen);
int mig_load_start_accepted(struct mig_engine *e, struct mig_channel *ch,
			    uint16_t minor, char *err, size_t errlen);
/*
 * Wait for a source on l (taken) on the engine's thread, then load its
 * stream; for a socket, through mig_accept_source(), and the multifd
 * channels arrive on the same listener. The status stays none until a
 * source said hello. mig_engine_destroy() ends the wait.
 */
int mig_load_listen(struct mig_engine *e, struct mig_listener *l, char *err,
		    size_t errlen);

/* Cancel the outgoing migration: 0 (also when none runs), or -EBUSY once
 * END was sent (the destination decides now). */
int mig_engine_cancel(struct mig_engine *e);
/*
 * After an unknown outcome (mig_stats.outcome_unknown): someone who
 * knows -- who looked at the destination -- says where the guest runs.
 * here: it never ran there; devices RUNNING and the vCPUs resume here.
 * Otherwise: it runs there; host->handed_over(). -EINVAL with a message
 * when there is nothing to resolve.
 */
int mig_engine_resolve(struct mig_engine *e, bool here, char *err,
		       size_t errlen);
/* Wait until the engine's current migration, if any, has ended. */
void mig_engine_wait(struct mig_engine *e);
void mig_engine_stats(struct mig_engine *e, struct mig_stats *out);
enum mig_status mig_engine_status(struct mig_engine *e);
/* A status a migration passes through (setup, active, device,
 * cancelling), as opposed to none or an end. */
bool mig_status_is_active(enum mig_status s);

#endif /* FERRY_MIG_ENGINE_H */
