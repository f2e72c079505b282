/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * State shared by the migration source (migration.c) and destination
 * (incoming.c). One VM per ferry-vmm process, so one migration object.
 */
#ifndef FERRY_VMM_MIGRATION_PRIV_H
#define FERRY_VMM_MIGRATION_PRIV_H

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "ferry/mig_channel.h"
#include "ferry/mig_converge.h"
#include "ferry/mig_ram.h"
#include "ferry/vmig.h"
#include "migration.h"
#include "vmm.h"

#define MIG_BUF_SIZE		(1u << 20)	/* one device data chunk */

struct migration {
	pthread_mutex_t lock;	/* status, flags, stats, error */
	pthread_cond_t cond;
	struct vm *vm;
	enum mig_status status;

	/* parameters and capabilities (migrate-set-*) */
	uint64_t downtime_limit_ms;
	uint64_t max_bandwidth;
	struct {
		bool switchover_ack;
		bool return_path;
		bool no_device_dirty_log;	/* negative-control debug */
	} caps;

	/* the current source migration */
	pthread_t thread;
	bool thread_started;
	pthread_t rp_thread;
	struct mig_uri uri;
	char uri_str[300];
	struct mig_channel *ch;
	atomic_bool cancel;
	bool switchover_acked;
	bool resumed;
	bool rp_error;
	bool rp_closed;
	bool paused;
	bool was_running;
	bool migrated_away;	/* the guest runs elsewhere now */
	bool end_sent;		/* too late to cancel */
	bool dirty_logging;
	struct mig_ram ram;
	struct vmig_dev devs[VM_MAX_DEVICES];
	unsigned nr_devs;
	struct mig_converge conv;
	uint8_t *buf;
	char error[512];
	char reason[256];
	struct {
		uint64_t start_ns;
		uint64_t setup_ns;
		uint64_t total_ns;
		uint64_t downtime_start;
		uint64_t downtime_ns;
		uint64_t transferred;
		uint64_t remaining;
		uint64_t ram_pages;
		uint64_t zero_pages;
		uint64_t dirty_pages;
		uint64_t final_pages;
		uint64_t dev_dirty_pages;
		uint64_t dev_only_pages;
	} stats;
};

extern struct migration mig;

void mig_set_status(struct vm *vm, enum mig_status s);
void mig_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void mig_device_event(struct vm *vm, struct vmig_dev *d);
int mig_dev_set_state(struct vm *vm, struct vmig_dev *d,
		      enum vfu_mig_state st);
void mig_ram_describe(struct vm *vm, struct mig_ram *ram);
struct json_object *mig_config_json(struct vm *vm);
void incoming_fini(struct vm *vm);
/* Destination: start the vCPUs of a VM whose state was just loaded
 * (run false: leave it paused, as the source was). */
int vm_incoming_run(struct vm *vm, bool run);

/* The UART's registers (serial.c). */
int vm_serial_save(struct vm *vm, void **blob, size_t *len);
int vm_serial_load(struct vm *vm, const void *blob, size_t len,
		   char *err, size_t errlen);

#endif /* FERRY_VMM_MIGRATION_PRIV_H */
