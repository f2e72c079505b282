/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Live update (CPR) in the migration engine: the steps that differ from
 * a migration to another host. mig_save.c and mig_load.c call these
 * where a CPR mode replaces RAM and device data by the fds.
 *
 * Source, cpr-transfer: the host registers its fds (guest RAM, device
 * connections, region fds, interrupt eventfds) and a description; they
 * go over the cpr channel to the new process, which builds its VM over
 * them while the guest still runs here and then listens on the main
 * channel. The main channel then carries CONFIG (mode, id), waits for
 * the new process's ready (SWITCHOVER_ACK), and at the pause only the
 * VMM's state and the three-step hand-over.
 *
 * Source, cpr-exec: at the pause the stream goes to a file, the fds are
 * exported across exec() and the host execs the new image; an exec that
 * fails comes back here and the guest runs on.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "ferry/cpr_fds.h"
#include "ferry/log.h"
#include "ferry/util.h"
#include "mig_cpr.h"
#include "mig_engine_priv.h"

#define CPR_CONNECT_RETRY_MS	2

static const char *const mig_mode_names[MIG_MODE_NR] = {
	[MIG_MODE_NORMAL] = "normal",
	[MIG_MODE_CPR_TRANSFER] = "cpr-transfer",
	[MIG_MODE_CPR_EXEC] = "cpr-exec",
};

const char *mig_mode_name(enum mig_mode m)
{
	return m < MIG_MODE_NR ? mig_mode_names[m] : "unknown";
}

int mig_mode_parse(const char *s, enum mig_mode *out)
{
	for (unsigned i = 0; i < MIG_MODE_NR; i++) {
		if (!strcmp(s, mig_mode_names[i])) {
			*out = (enum mig_mode)i;
			return 0;
		}
	}
	return -EINVAL;
}

/* A fresh id names this update: the fds and the stream must agree. */
static int cpr_new_id(struct mig_engine *e)
{
	uint8_t id[16];

	if (getrandom(id, sizeof(id), 0) != (ssize_t)sizeof(id))
		return mig_fail(e, -errno, "getrandom: %s", strerror(errno));
	for (size_t i = 0; i < sizeof(id); i++)
		snprintf(e->cpr_id + 2 * i, 3, "%02x", id[i]);
	return 0;
}

/* The host's fds and description, in a registry the caller frees. */
static int cpr_collect(struct mig_engine *e, struct cpr_fds **out)
{
	char err[256] = "";
	struct cpr_fds *reg;
	int ret;

	if (!e->host_ops->cpr_prepare)
		return mig_fail(e, -EOPNOTSUPP, "this VMM cannot live-update "
				"(%s)", mig_mode_name(e->run_params.mode));
	ret = cpr_new_id(e);
	if (ret)
		return ret;
	ret = cpr_fds_new(&reg);
	if (ret)
		return mig_fail(e, ret, "out of memory");
	ret = e->host_ops->cpr_prepare(e->host, reg, e->cpr_id, err,
				       sizeof(err));
	if (ret) {
		cpr_fds_free(reg);
		return mig_fail(e, ret, "live update: %s",
				err[0] ? err : strerror(-ret));
	}
	*out = reg;
	return 0;
}

/* The process on the other end of the cpr channel, as a pidfd: its
 * exit ends the wait for its main channel at once. -1 if the kernel
 * cannot say (then the wait is bounded by time only). */
static int cpr_peer_pidfd(int sock)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);

	if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) ||
	    cred.pid <= 0)
		return -1;
	return (int)syscall(SYS_pidfd_open, cred.pid, 0);
}

static bool cpr_peer_gone(struct mig_engine *e)
{
	struct pollfd p = { .fd = e->cpr_peer_pidfd, .events = POLLIN };

	return e->cpr_peer_pidfd >= 0 && poll(&p, 1, 0) > 0;
}

/*
 * A unix socket that is not listening yet (not there, or bound and not
 * yet listening): the new process is still starting. Retried for
 * MIG_CPR_READY_MS (or x-io-timeout), so that both processes may be
 * started at once; migrate_cancel ends the wait.
 */
static int cpr_connect_retry(struct mig_engine *e, const struct mig_uri *uri,
			     struct mig_channel **out)
{
	unsigned timeout = mig_io_timeout(e, MIG_WRITE_TIMEOUT_MS);
	uint64_t deadline = clock_ns() +
			    mig_io_timeout(e, MIG_CPR_READY_MS) * 1000000ull;
	int ret;

	for (bool gone = false;;) {
		ret = mig_channel_connect(uri, timeout, out);
		if (ret != -ECONNREFUSED && ret != -ENOENT)
			return ret;
		if (gone)
			return -ESRCH;
		if (clock_ns() > deadline || atomic_load(&e->cancel))
			return ret;
		/* The new process exited: one more try (it may have
		 * listened and died since), then no point waiting. */
		gone = cpr_peer_gone(e);
		if (!gone)
			usleep(CPR_CONNECT_RETRY_MS * 1000);
	}
}

void mig_cpr_end(struct mig_engine *e)
{
	close_safely(&e->cpr_peer_pidfd);
}

int mig_cpr_setup(struct mig_engine *e)
{
	struct mig_channel *ch = NULL;
	struct cpr_fds *reg;
	unsigned timeout = mig_io_timeout(e, MIG_WRITE_TIMEOUT_MS);
	int ret;

	if (e->run_params.multifd)
		return mig_fail(e, -EINVAL, "%s does not take multifd: nothing "
				"is copied", mig_mode_name(e->run_params.mode));
	if (e->run_params.mode == MIG_MODE_CPR_EXEC) {
		if (!e->connect || e->uri.kind != MIG_URI_FILE)
			return mig_fail(e, -EINVAL, "cpr-exec writes its state "
					"to a file: migrate to file:PATH");
		return cpr_new_id(e);	/* the fds go at the exec */
	}
	if (!e->connect || e->cpr_uri.kind != MIG_URI_UNIX)
		return mig_fail(e, -EINVAL, "cpr-transfer needs a cpr channel "
				"(a unix: socket) beside the main one");
	if (e->uri.kind == MIG_URI_FILE)
		return mig_fail(e, -EINVAL, "cpr-transfer's main channel is a "
				"socket (the hand-over needs a return path)");
	ret = cpr_collect(e, &reg);
	if (ret)
		return ret;
	ret = cpr_connect_retry(e, &e->cpr_uri, &ch);
	if (ret) {
		cpr_fds_free(reg);
		return mig_fail(e, ret, "cannot reach the new process's cpr "
				"channel %s: %s", e->cpr_uri.path,
				strerror(-ret));
	}
	e->cpr_peer_pidfd = cpr_peer_pidfd(ch->fd);
	ret = cpr_fds_send(reg, ch->fd, timeout);
	pr_info("live update: %u fds handed to the new process (%s)",
		cpr_fds_count(reg), ret ? strerror(-ret) : "ok");
	cpr_fds_free(reg);
	mig_channel_close(ch);
	if (ret)
		return mig_fail_io(e, ret, "handing the fds over: %s",
				   strerror(-ret));
	return 0;
}

/*
 * The new process listens on the main channel once its VM is built over
 * the fds: retry until it does, within the I/O timeout.
 */
int mig_cpr_connect_main(struct mig_engine *e, struct mig_channel **out)
{
	return cpr_connect_retry(e, &e->uri, out);
}

void mig_cpr_config(struct mig_engine *e, struct json_object *cfg)
{
	json_object_object_add(cfg, "mode", json_object_new_string(
		mig_mode_name(e->run_params.mode)));
	json_object_object_add(cfg, "cpr_id",
			       json_object_new_string(e->cpr_id));
}

int mig_cpr_freeze(struct mig_engine *e)
{
	char err[256] = "";
	int ret = e->host_ops->cpr_freeze(e->host, err, sizeof(err));

	if (ret)
		return mig_fail(e, ret, "live update: %s",
				err[0] ? err : strerror(-ret));
	e->cpr_frozen = true;
	return 0;
}

void mig_cpr_thaw(struct mig_engine *e)
{
	if (!e->cpr_frozen)
		return;
	e->host_ops->cpr_thaw(e->host);
	e->cpr_frozen = false;
}

/*
 * The stream is in its file: exec the new image with the fds. Returns
 * only on failure (the guest is still ours: the caller thaws).
 */
int mig_cpr_exec(struct mig_engine *e)
{
	struct cpr_fds *reg;
	char err[256] = "";
	int ret;

	if (!e->host_ops->cpr_exec)
		return mig_fail(e, -EOPNOTSUPP, "this VMM cannot exec a new "
				"image");
	/* cpr_collect() makes a new id: the stream has this one. */
	ret = cpr_fds_new(&reg);
	if (ret)
		return mig_fail(e, ret, "out of memory");
	ret = e->host_ops->cpr_prepare(e->host, reg, e->cpr_id, err,
				       sizeof(err));
	if (!ret) {
		/* The last moment a cancel can be honoured; from here on
		 * it is refused, as after COMMIT. */
		pthread_mutex_lock(&e->lock);
		if (atomic_load(&e->cancel))
			ret = -ECANCELED;
		else
			e->committed = true;
		pthread_mutex_unlock(&e->lock);
		if (ret == -ECANCELED) {
			cpr_fds_free(reg);
			return ret;	/* rolled back as any cancel */
		}
		ret = e->host_ops->cpr_exec(e->host, reg, err, sizeof(err));
	}
	cpr_fds_free(reg);
	return mig_fail(e, ret ? ret : -EIO, "cpr-exec: %s",
			err[0] ? err : strerror(ret ? -ret : EIO));
}

/* ---- destination ---- */

int mig_engine_set_cpr_incoming(struct mig_engine *e, enum mig_mode mode,
				const char *id)
{
	if (mode >= MIG_MODE_NR || !id || strlen(id) >= sizeof(e->cpr_in_id))
		return -EINVAL;
	pthread_mutex_lock(&e->lock);
	e->cpr_in_mode = mode;
	snprintf(e->cpr_in_id, sizeof(e->cpr_in_id), "%s", id);
	pthread_mutex_unlock(&e->lock);
	return 0;
}

int mig_cpr_check_config(struct mig_engine *e, struct json_object *src)
{
	struct json_object *v;
	const char *mode = "normal", *id = "";

	if (json_object_object_get_ex(src, "mode", &v) &&
	    json_object_is_type(v, json_type_string))
		mode = json_object_get_string(v);
	if (json_object_object_get_ex(src, "cpr_id", &v) &&
	    json_object_is_type(v, json_type_string))
		id = json_object_get_string(v);
	if (strcmp(mode, mig_mode_name(e->cpr_in_mode)))
		return mig_fail(e, -EINVAL, "configuration mismatch: the "
				"source migrates in mode %s, this destination "
				"expects %s", mode,
				mig_mode_name(e->cpr_in_mode));
	if (e->cpr_in_mode != MIG_MODE_NORMAL && strcmp(id, e->cpr_in_id))
		return mig_fail(e, -EINVAL, "live update %s is not the one "
				"whose fds this process took (%s)", id,
				e->cpr_in_id);
	return 0;
}

int mig_cpr_activate(struct mig_engine *e)
{
	char err[256] = "";
	int ret;

	if (!e->host_ops->cpr_activate)
		return 0;
	ret = e->host_ops->cpr_activate(e->host, err, sizeof(err));
	if (ret)
		return mig_fail(e, ret, "taking over the devices: %s",
				err[0] ? err : strerror(-ret));
	return 0;
}
