/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * ferry-dev live update: a new ferry-dev process takes the running
 * device over from the old one -- no reset, no message to the client,
 * nothing lost (docs/vfio-user-extensions.md, "Device server live
 * update").
 *
 * Give side: a control socket (--control PATH) served by a thread of the
 * running process. On a request it pauses the device and holds the
 * server at a message boundary, hands over fds and state, and commits
 * only when the new process says it has everything ("taken"); on any
 * failure or timeout before that it resumes exactly as before.
 *
 * Take side (--takeover PATH): connect, receive, rebuild (the caller,
 * with what takeover_take() returns), say "taken", wait for the commit;
 * the client socket is not read before the commit.
 *
 * The control protocol: messages { u32 magic "FTKO", u16 version 1,
 * u16 type, u32 len } + len bytes (at most TK_MSG_MAX):
 *   new -> old  HELLO  u32 pid
 *   old -> new  OFFER  u64 deadline_ns, u64 quiesce_ns, u32 pid; then
 *               the fd registry (cpr_fds_send) with the state blob
 *   old -> new  REFUSE reason (the old one keeps serving)
 *   new -> old  TAKEN
 *   old -> new  COMMIT (the old one never serves again)
 *   either way  ABORT  reason
 * Times are CLOCK_MONOTONIC (both ends are on one host). The old process
 * decides: COMMIT only if TAKEN arrived before deadline_ns, else ABORT
 * and it serves on; the new one serves only after COMMIT (or, if the
 * connection ends with no decision, once the old process is gone).
 */
#ifndef FERRY_DEV_TAKEOVER_H
#define FERRY_DEV_TAKEOVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/util.h"

struct cpr_fds;
struct ferry_dma;
struct vfu_server;

#define TK_DEFAULT_TIMEOUT_MS	5000u	/* old: OFFER sent -> TAKEN */
#define TK_MAX_TIMEOUT_MS	600000u

/* Fault injection for the tests (--x-takeover-fault), take side. */
enum tk_fault {
	TK_FAULT_NONE,
	TK_FAULT_DIE_BEFORE_TAKEN,	/* SIGKILL itself, state rebuilt */
	TK_FAULT_CORRUPT_BLOB,		/* flip a byte of the state blob */
	TK_FAULT_DROP_FD,		/* lose the fd named by arg */
	TK_FAULT_STALL_BEFORE_TAKEN,	/* sleep arg ms before TAKEN */
	TK_FAULT_LOSE_IRQ_PENDING,	/* negative controls: state not */
	TK_FAULT_LOSE_RING_TAIL,	/* carried (ferry_dma.h X_LOSE), */
	TK_FAULT_RESET_DEVICE,		/* or a device reset on the way */
};

struct tk_fault_opt {
	enum tk_fault kind;
	char arg[64];
};

/* "KIND" or "KIND=ARG"; 0 or -EINVAL. */
int tk_fault_parse(const char *s, struct tk_fault_opt *out);

/* ---- give side ---- */

struct tk_give;

struct tk_give_opts {
	const char *name;		/* device name, for logs */
	int listen_fd;			/* control socket (ours from now on) */
	struct sock_access access;	/* who may take the device */
	unsigned int timeout_ms;	/* OFFER sent -> TAKEN */
	struct vfu_server *srv;
	struct ferry_dma *dma;
};

/* Serve the control socket on a thread of its own. */
int tk_give_start(const struct tk_give_opts *opts, struct tk_give **out);
/* Stop the thread (a takeover in progress ends first) and close the
 * control socket; never unlinks its path. */
void tk_give_stop(struct tk_give *g);
/* After vfu_server_run() returned: was the device handed over? Then this
 * process must leave without touching anything it shared. */
bool tk_give_handed_over(struct tk_give *g);

/* ---- take side ---- */

struct tk_take;

/*
 * Connect to the control socket at path, ask for the device and receive
 * it: 0 and *out, or -errno with err saying why (nothing was taken, the
 * old process serves on).
 */
int tk_take_connect(const char *path, const struct tk_fault_opt *fault,
		    struct tk_take **out, char *err, size_t errlen);
/* What arrived: the fds (take from them), the two state parts. */
struct cpr_fds *tk_take_fds(struct tk_take *t);
void tk_take_server_state(struct tk_take *t, const void **p, size_t *len);
void tk_take_device_state(struct tk_take *t, const void **p, size_t *len);
/* Everything is rebuilt: say TAKEN and wait for the old process's
 * decision. 0: ours, serve; -errno: not ours, leave without reading the
 * client socket (err says why). */
int tk_take_commit(struct tk_take *t, char *err, size_t errlen);
/* Rebuilding failed: tell the old process (it resumes). */
void tk_take_abort(struct tk_take *t, const char *why);
/* Log the pause the device saw (quiesce in the old process to now). */
void tk_take_report(struct tk_take *t, const char *name);
void tk_take_free(struct tk_take *t);

#endif /* FERRY_DEV_TAKEOVER_H */
