/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Live update's steps inside the engine (mig_cpr.c); engine-private.
 * Each reports its failure through mig_fail*() and returns -errno.
 */
#ifndef FERRY_LIB_MIG_CPR_H
#define FERRY_LIB_MIG_CPR_H

#include <json-c/json.h>

#include "ferry/mig_channel.h"

struct mig_engine;

/* Source. setup: check the URIs; cpr-transfer hands the fds over (the
 * guest still runs), cpr-exec only names the update. */
int mig_cpr_setup(struct mig_engine *e);
/* The main channel, retried until the new process listens (-ESRCH:
 * it exited first). */
int mig_cpr_connect_main(struct mig_engine *e, struct mig_channel **out);
/* The thread's end: what setup kept of the new process is let go. */
void mig_cpr_end(struct mig_engine *e);
/* CONFIG's share: mode and id. */
void mig_cpr_config(struct mig_engine *e, struct json_object *cfg);
/* vCPUs paused: interrupts counted, devices quiet; thaw undoes it (a
 * no-op when not frozen). */
int mig_cpr_freeze(struct mig_engine *e);
void mig_cpr_thaw(struct mig_engine *e);
/* cpr-exec: exec the new image; returns only on failure. */
int mig_cpr_exec(struct mig_engine *e);

/* Destination: the source's mode and id are the ones adopted. */
int mig_cpr_check_config(struct mig_engine *e, struct json_object *src);
/* At COMMIT, before the vCPUs run. */
int mig_cpr_activate(struct mig_engine *e);

#endif /* FERRY_LIB_MIG_CPR_H */
