/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Live migration of a running VM with its vfio-user devices
 * (docs/migration.md, stream format in docs/migration-stream.md).
 *
 * Source: migration_start() spawns the migration thread, which owns the
 * channel until the destination confirms that it runs the guest
 * (MIG_RP_RESUMED). Until then the source owns the guest: cancel, a
 * failure on either side, a dead or stalled destination or a rejected
 * stream all end in migration_rollback(), which puts every device back in
 * RUNNING, stops dirty logging, untraps BAR areas and resumes the vCPUs
 * if they were running.
 *
 * Destination: incoming_start() listens, and the incoming thread loads
 * the stream into a VM whose vCPUs have never run. They run only after
 * the END section arrived intact and every device took its state; on any
 * error the destination reports it on the return path and exits non-zero
 * without running a single guest instruction.
 *
 * Status names and QMP shapes follow QEMU's where the concept is the same
 * (query-migrate, MIGRATION events, migrate-set-parameters,
 * migrate-set-capabilities).
 */
#ifndef FERRY_VMM_MIGRATION_H
#define FERRY_VMM_MIGRATION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct vm;
struct json_object;

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

/* Source. Errors: -errno and a message in err. */
int migration_start(struct vm *vm, const char *uri, char *err,
		    size_t errlen);
/* 0, or -EBUSY once the whole state was sent (too late to cancel). */
int migration_cancel(struct vm *vm);
struct json_object *migration_query(struct vm *vm);
/* With check_only, validate without changing anything (QMP applies a
 * command's settings all or none). */
int migration_set_parameter(struct vm *vm, const char *name, int64_t value,
			    bool check_only, char *err, size_t errlen);
int migration_set_capability(struct vm *vm, const char *name, bool on,
			     bool check_only, char *err, size_t errlen);
struct json_object *migration_query_parameters(struct vm *vm);
struct json_object *migration_query_capabilities(struct vm *vm);
/* Join the migration thread (shutdown). */
void migration_fini(struct vm *vm);

/* Destination: uri "defer" waits for migrate-incoming. */
int incoming_start(struct vm *vm, const char *uri, char *err, size_t errlen);
bool incoming_pending(struct vm *vm);

#endif /* FERRY_VMM_MIGRATION_H */
