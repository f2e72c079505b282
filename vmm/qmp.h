/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * QMP-compatible control socket: a UNIX stream socket with any number of
 * clients (up to QMP_MAX_CLIENTS), served from the main loop's epoll.
 * Wire behaviour follows QEMU's QMP: greeting, mandatory
 * qmp_capabilities, {"return": ...} or {"error": {"class", "desc"}}
 * replies with "id" echoed, and timestamped events.
 */
#ifndef FERRY_VMM_QMP_H
#define FERRY_VMM_QMP_H

#include <stddef.h>

struct vm;
struct qmp;
struct json_object;

/* Past this many, a new client takes the slot of the one silent the
 * longest (docs/qmp.md). */
#define QMP_MAX_CLIENTS		64
#define QMP_MAX_MSG		(64 * 1024)

/* Listen on path (a stale socket file is replaced, a live one is not)
 * and register with the epoll instance epfd. */
int qmp_create(struct vm *vm, int epfd, const char *path, struct qmp **out,
	       char *err, size_t errlen);
/* Close every client and the listener, and remove the socket file. */
void qmp_destroy(struct qmp *q);
/* Send an event to every client past negotiation; data is borrowed. */
void qmp_emit(struct qmp *q, const char *name, struct json_object *data);

#endif /* FERRY_VMM_QMP_H */
