/* SPDX-License-Identifier: BSD-3-Clause */
/* A passthrough device's INTx line routed to KVM (see intx.h). */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "ferry/log.h"
#include "ferry/util.h"

#include "intx.h"
#include "vm.h"

struct intx {
	struct vm *vm;
	const char *id;
	unsigned gsi;
	bool level;		/* automasked, with a resample eventfd */
	const struct intx_ops *ops;
	void *opaque;

	pthread_mutex_t lock;
	int fd[2];		/* trigger, resample */
	bool on;		/* the device holds the eventfds */
	bool attached;		/* the KVM irqfd is in place */
	bool frozen;		/* live update: no irqfd */
	bool adopted;		/* the device is the old process's still */
};

int intx_create(struct vm *vm, const char *id, unsigned gsi, bool level,
		const struct intx_ops *ops, void *opaque,
		const int *adopt_fds, struct intx **out)
{
	struct intx *x = calloc(1, sizeof(*x));
	int ret;

	if (!x) {
		ret = -ENOMEM;
		goto err_close_adopted;
	}
	x->vm = vm;
	x->id = id;
	x->gsi = gsi;
	x->level = level;
	x->ops = ops;
	x->opaque = opaque;
	pthread_mutex_init(&x->lock, NULL);
	if (adopt_fds) {
		x->fd[0] = adopt_fds[0];
		x->fd[1] = adopt_fds[1];
		x->adopted = x->frozen = true;
		*out = x;
		return 0;
	}
	/* Non-blocking: the trigger is drained before it is handed out. */
	x->fd[0] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	x->fd[1] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (x->fd[0] < 0 || x->fd[1] < 0) {
		ret = -errno;
		intx_destroy(x, true);
		return ret;
	}
	*out = x;
	return 0;

err_close_adopted:
	if (adopt_fds) {
		close(adopt_fds[0]);
		close(adopt_fds[1]);
	}
	return ret;
}

/* Caller holds lock. */
static void irqfd_detach(struct intx *x)
{
	int ret;

	if (!x->attached)
		return;
	/* KVM lowers the pin as the resampler goes. */
	ret = vm_irqfd_deassign(x->vm, x->fd[0], (int)x->gsi);
	if (ret)
		pr_warn("device %s: INTx irqfd on GSI %u: %s", x->id, x->gsi,
			strerror(-ret));
	x->attached = false;
}

/* Caller holds lock. */
static int irqfd_attach(struct intx *x)
{
	uint64_t one = 1;
	int ret;

	if (x->attached || x->frozen || !x->on)
		return 0;
	ret = x->level ? vm_irqfd_assign_resample(x->vm, x->fd[0], x->fd[1],
						  (int)x->gsi) :
			 vm_irqfd_assign(x->vm, x->fd[0], (int)x->gsi);
	if (ret) {
		pr_err("device %s: INTx irqfd on GSI %u: %s", x->id, x->gsi,
		       strerror(-ret));
		return ret;
	}
	x->attached = true;
	if (!x->level)
		return 0;
	/* Nobody listened for EOIs until now: let the device look at its
	 * level again, as if the guest had just EOI'd. A level that is
	 * down makes this a no-op, one that is up is asserted once (the
	 * IOAPIC ignores a pin already up and in service). */
	if (write(x->fd[1], &one, sizeof(one)) != sizeof(one))
		pr_warn("device %s: INTx resample kick: %s", x->id,
			strerror(errno));
	return 0;
}

/* Caller holds lock. */
static int line_off(struct intx *x)
{
	int ret = 0;

	irqfd_detach(x);
	if (x->on && !x->adopted)
		ret = x->ops->disable(x->opaque);
	x->on = false;
	return ret;
}

/* Caller holds lock. */
static int line_on(struct intx *x)
{
	uint64_t stale;
	int ret;

	if (!x->on && !x->adopted) {
		/* A count left from an earlier "on" would be a spurious
		 * interrupt the moment the irqfd attaches. */
		while (read(x->fd[0], &stale, sizeof(stale)) > 0)
			;
		ret = x->ops->enable(x->opaque, x->fd[0],
				     x->level ? x->fd[1] : -1);
		if (ret)
			return ret;
	}
	x->on = true;
	ret = irqfd_attach(x);
	if (ret)
		line_off(x);
	return ret;
}

int intx_set(struct intx *x, bool on)
{
	int ret;

	pthread_mutex_lock(&x->lock);
	ret = on ? line_on(x) : line_off(x);
	pthread_mutex_unlock(&x->lock);
	if (ret && ret != -ENOTCONN)
		pr_warn("device %s: cannot turn INTx %s: %s", x->id,
			on ? "on" : "off", strerror(-ret));
	return ret;
}

bool intx_is_on(struct intx *x)
{
	bool on;

	pthread_mutex_lock(&x->lock);
	on = x->on;
	pthread_mutex_unlock(&x->lock);
	return on;
}

unsigned intx_gsi(const struct intx *x)
{
	return x->gsi;
}

bool intx_is_level(const struct intx *x)
{
	return x->level;
}

int intx_fd(const struct intx *x, unsigned which)
{
	return which < 2 ? x->fd[which] : -1;
}

void intx_freeze(struct intx *x, bool detach)
{
	pthread_mutex_lock(&x->lock);
	x->frozen = true;
	if (detach)
		irqfd_detach(x);
	pthread_mutex_unlock(&x->lock);
}

void intx_thaw(struct intx *x)
{
	pthread_mutex_lock(&x->lock);
	x->frozen = false;
	x->adopted = false;
	/* A failure is logged there; the line stays on, unrouted, and the
	 * next intx_set(true) (a guest write that keeps INTx on) retries. */
	(void)irqfd_attach(x);
	pthread_mutex_unlock(&x->lock);
}

void intx_destroy(struct intx *x, bool quiet)
{
	if (!x)
		return;
	pthread_mutex_lock(&x->lock);
	irqfd_detach(x);
	if (quiet)
		x->on = false;
	else
		(void)line_off(x);
	pthread_mutex_unlock(&x->lock);
	pthread_mutex_destroy(&x->lock);
	close_safely(&x->fd[0]);
	close_safely(&x->fd[1]);
	free(x);
}
