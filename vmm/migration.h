/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * ferry-vmm's face of live migration: QMP's migrate, migrate_cancel,
 * query-migrate, migrate-set-parameters/capabilities and
 * migrate-incoming, over libferry's migration engine
 * (ferry/mig_engine.h, docs/migration.md). The engine drives the
 * migration; the VMM lends it the VM through host ops (mig_host.c) and
 * turns its events into QMP events.
 *
 * Status names and QMP shapes follow QEMU's where the concept is the
 * same (query-migrate, MIGRATION events, migrate-set-parameters,
 * migrate-set-capabilities).
 */
#ifndef FERRY_VMM_MIGRATION_H
#define FERRY_VMM_MIGRATION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/mig_engine.h"

struct vm;
struct json_object;

/* Create the VM's migration engine, after its devices exist. */
int migration_init(struct vm *vm, char *err, size_t errlen);
/* This VM was built from a live update's fds (mode, id): the stream
 * that comes must be that update's. */
/* --exit-after-migrate: exit once the guest was handed over instead of
 * staying in postmigrate until quit. */
void migration_set_exit_after(struct vm *vm, bool exit_after);
int migration_cpr_incoming(struct vm *vm, enum mig_mode mode,
			   const char *id);
/* Cancel or end what runs, join every migration thread, free. */
void migration_fini(struct vm *vm);

/* Source. Errors: -errno and a message in err. */
int migration_start(struct vm *vm, const char *uri, char *err,
		    size_t errlen);
/* QEMU's "channels" form: a main channel, and a cpr one for mode
 * cpr-transfer (ferry/mig_channel.h, mig_uri_from_channel()). */
int migration_start_channels(struct vm *vm, struct json_object *channels,
			     char *err, size_t errlen);
/* 0, or -EBUSY once the whole state was sent (too late to cancel). */
int migration_cancel(struct vm *vm);
struct json_object *migration_query(struct vm *vm);
/* migrate-set-parameters: every setting of args (types checked by the
 * caller) validated first, then all applied or none. 0 or -errno with
 * QEMU's kind of message in err. */
int migration_set_parameters(struct vm *vm, struct json_object *args,
			     char *err, size_t errlen);
int migration_set_capability(struct vm *vm, const char *name, bool on,
			     bool check_only, char *err, size_t errlen);
struct json_object *migration_query_parameters(struct vm *vm);
struct json_object *migration_query_capabilities(struct vm *vm);
/* After a hand-over that was never confirmed: where the guest runs
 * ("here" or "destination"), as someone who checked says. */
int migration_resolve(struct vm *vm, const char *where, char *err,
		      size_t errlen);
/* What migration makes of the VM's run state for query-status (QEMU's
 * names: "inmigrate", "finish-migrate", "postmigrate"), or NULL; and
 * why cont must not run the guest now (NULL: it may). */
const char *migration_run_state(struct vm *vm);
const char *migration_cont_refusal(struct vm *vm);
/* Why stop must not be taken now: the switchover is deciding whether
 * the guest runs on (NULL: it may). cont is refused then too. */
const char *migration_stop_refusal(struct vm *vm);
/* Why system_reset must not run now (migrating, migrated, not arrived),
 * or NULL. */
const char *migration_reset_refusal(struct vm *vm);

#endif /* FERRY_VMM_MIGRATION_H */
