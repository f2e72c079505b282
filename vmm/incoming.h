/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The destination's endpoint (incoming.c): listen on the URI that
 * --incoming or QMP's migrate-incoming names and hand the listener to
 * the VM's migration engine, which accepts the source and loads. "defer" arms the VM
 * without listening yet (migrate-incoming brings the URI).
 */
#ifndef FERRY_VMM_INCOMING_H
#define FERRY_VMM_INCOMING_H

#include <stdbool.h>
#include <stddef.h>

struct vm;

int incoming_start(struct vm *vm, const char *uri, char *err, size_t errlen);
/* Armed and the guest has not run yet: waiting for or loading a
 * stream. */
bool incoming_pending(struct vm *vm);

#endif /* FERRY_VMM_INCOMING_H */
