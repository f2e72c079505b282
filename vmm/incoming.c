/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The destination's endpoint: listen on the --incoming (or
 * migrate-incoming) URI and give the listener to the migration engine
 * (mig_load_listen()). The engine's thread waits at the door for a
 * source that says a valid hello (strangers, junk and slow talkers are
 * refused and logged, and the door stays open), loads the stream, and
 * accepts the further channels a multifd source opens.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "ferry/log.h"
#include "ferry/mig_channel.h"
#include "ferry/mig_engine.h"
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

int incoming_start(struct vm *vm, const char *uri, char *err, size_t errlen)
{
	struct vm_mig *m = vm->mig;
	struct mig_listener *l;
	struct mig_uri u;
	int ret;

	pthread_mutex_lock(&m->inc_lock);
	if (m->inc_listening || vm_run_state(vm) != VM_STATE_PRELAUNCH) {
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
	ret = mig_listener_open(&u, &vm->sock_access, &l);
	if (ret) {
		pthread_mutex_unlock(&m->inc_lock);
		snprintf(err, errlen, "cannot listen on %s: %s", uri,
			 strerror(-ret));
		return ret;
	}
	/* The engine owns the listener from here, failed start or not;
	 * its destroy ends the wait (migration_fini()). */
	ret = mig_load_listen(m->engine, l, err, errlen);
	if (!ret)
		m->inc_listening = true;
	pthread_mutex_unlock(&m->inc_lock);
	if (!ret)
		pr_info("migration: waiting for the source on %s", uri);
	return ret;
}
