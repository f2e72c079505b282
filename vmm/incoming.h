/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The destination's endpoint (incoming.c): listen on the URI that
 * --incoming or QMP's migrate-incoming names, accept the source, and
 * hand the stream to the VM's migration engine. "defer" arms the VM
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
/* Stop waiting (a thread in accept() returns) and join. */
void incoming_fini(struct vm *vm);

#endif /* FERRY_VMM_INCOMING_H */
