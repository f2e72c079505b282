/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The destination's endpoint: listen on the --incoming (or
 * migrate-incoming) URI, wait for a source that says a valid hello
 * (mig_accept_source(): strangers, junk and slow talkers are refused
 * and logged, and the door stays open), and hand the stream to the
 * migration engine, which loads it (lib/mig_load.c).
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "ferry/log.h"
#include "ferry/mig_channel.h"
#include "incoming.h"
#include "vm_mig.h"

bool incoming_pending(struct vm *vm)
{
	struct vm_mig *m = vm->mig;
	bool armed;

	pthread_mutex_lock(&m->inc_lock);
	armed = m->inc_armed;
	pthread_mutex_unlock(&m->inc_lock);
	/* Waiting for the source or loading its stream: the guest has not
	 * run yet (it does once the stream is loaded; a failed load ends
	 * the VMM). */
	return armed && vm_run_state(vm) == VM_STATE_PRELAUNCH;
}

static void *inc_accept_fn(void *arg)
{
	struct vm_mig *m = arg;
	bool is_file = mig_listener_uri(m->listener)->kind == MIG_URI_FILE;
	struct mig_channel *ch = NULL;
	uint16_t minor = 0;
	char err[256];
	int ret;

	/* A file is what it is (the engine checks its header); a socket's
	 * door stays open until a real source comes. */
	if (is_file)
		ret = mig_listener_accept(m->listener, 0, &ch);
	else
		ret = mig_accept_source(m->listener, MIG_HELLO_TIMEOUT_MS, 0,
					&ch, &minor);
	pthread_mutex_lock(&m->inc_lock);
	mig_listener_close(m->listener);
	m->listener = NULL;
	pthread_mutex_unlock(&m->inc_lock);
	if (ret) {
		if (ret == -EINTR || ret == -EBADF)
			return NULL;	/* shut down (incoming_fini) */
		pr_err("incoming migration failed: accepting the migration "
		       "stream: %s; no guest code ran here", strerror(-ret));
		vm_request_exit(m->vm, VM_EXIT_ERROR, "migration-failed");
		return NULL;
	}
	if (is_file)
		ret = mig_load_start(m->engine, ch, err, sizeof(err));
	else
		ret = mig_load_start_accepted(m->engine, ch, minor, err,
					      sizeof(err));
	if (ret) {
		pr_err("incoming migration failed: %s; no guest code ran here",
		       err);
		vm_request_exit(m->vm, VM_EXIT_ERROR, "migration-failed");
	}
	return NULL;
}

int incoming_start(struct vm *vm, const char *uri, char *err, size_t errlen)
{
	struct vm_mig *m = vm->mig;
	struct mig_uri u;
	int ret;

	pthread_mutex_lock(&m->inc_lock);
	if (m->inc_thread_started || vm_run_state(vm) != VM_STATE_PRELAUNCH) {
		pthread_mutex_unlock(&m->inc_lock);
		snprintf(err, errlen, "The incoming migration has already "
			 "been started or the guest has run");
		return -EINVAL;
	}
	m->inc_armed = true;
	pthread_mutex_unlock(&m->inc_lock);
	if (!strcmp(uri, "defer"))
		return 0;	/* migrate-incoming brings the URI */
	ret = mig_uri_parse(uri, &u, err, errlen);
	if (ret)
		return ret;
	pthread_mutex_lock(&m->inc_lock);
	ret = mig_listener_open(&u, &vm->sock_access, &m->listener);
	if (ret) {
		pthread_mutex_unlock(&m->inc_lock);
		snprintf(err, errlen, "cannot listen on %s: %s", uri,
			 strerror(-ret));
		return ret;
	}
	if (pthread_create(&m->inc_thread, NULL, inc_accept_fn, m)) {
		mig_listener_close(m->listener);
		m->listener = NULL;
		pthread_mutex_unlock(&m->inc_lock);
		snprintf(err, errlen, "cannot start the incoming thread");
		return -EAGAIN;
	}
	m->inc_thread_started = true;
	pthread_mutex_unlock(&m->inc_lock);
	pr_info("migration: waiting for the source on %s", uri);
	return 0;
}

void incoming_fini(struct vm *vm)
{
	struct vm_mig *m = vm->mig;

	if (!m->inc_thread_started)
		return;
	/* A thread still in accept(): make it return. The engine's own
	 * thread, if the stream arrived, is stopped by its destroy. */
	pthread_mutex_lock(&m->inc_lock);
	if (m->listener && mig_listener_fd(m->listener) >= 0)
		shutdown(mig_listener_fd(m->listener), SHUT_RDWR);
	pthread_mutex_unlock(&m->inc_lock);
	pthread_join(m->inc_thread, NULL);
	m->inc_thread_started = false;
}
