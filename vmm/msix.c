/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * MSI-X table/PBA emulation and KVM routing (see msix.h for the model).
 *
 * Vector states, decided by update_vector() under m->lock:
 *   routed   enabled, unmasked, address programmed: irqfd attached
 *   watched  anything else while MSI-X is enabled: the poll thread owns
 *            the eventfd and turns signals into pending bits
 *   idle     MSI-X disabled: the device holds no fd, nobody watches
 *   frozen   live update: no irqfd, nobody drains; signals stay counted
 *            in the eventfds until a thaw (here or in the new process)
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>

#include "ferry/ferry_dma_hw.h"
#include "ferry/log.h"
#include "ferry/util.h"

#include "msix.h"
#include "vm.h"

struct msix_vector {
	int fd;
	int gsi;		/* -1 until first routed */
	bool assigned;		/* irqfd attached */
	uint64_t routed_addr;
	uint32_t routed_data;
};

struct msix {
	struct vm *vm;
	const char *id;
	unsigned nr;
	msix_set_irqs_fn set_irqs;
	void *opaque;

	pthread_mutex_t lock;
	bool enabled;
	bool func_mask;
	uint8_t *table;		/* nr * PCI_MSIX_ENTRY_SIZE, guest layout */
	uint64_t *pba;		/* DIV_ROUND_UP(nr, 64) words */
	struct msix_vector *vec;
	int *fds;		/* the vec[].fd values, contiguous for SET_IRQS */

	int kick_fd;		/* wakes the poll thread to rescan */
	bool frozen;		/* live update: see msix_freeze() */
	bool keep_irqfds;	/* debug: freeze without detaching */
	bool stop;
	pthread_t thread;
	bool thread_started;
};

static uint32_t entry_u32(const struct msix *m, unsigned v, unsigned off)
{
	uint32_t x;

	memcpy(&x, m->table + (size_t)v * PCI_MSIX_ENTRY_SIZE + off, 4);
	return x;
}

static uint64_t entry_addr(const struct msix *m, unsigned v)
{
	return (uint64_t)entry_u32(m, v, PCI_MSIX_ENTRY_ADDR_HI) << 32 |
	       entry_u32(m, v, PCI_MSIX_ENTRY_ADDR_LO);
}

static bool pending_test(const struct msix *m, unsigned v)
{
	return m->pba[v / 64] & (1ull << (v % 64));
}

static void pending_set(struct msix *m, unsigned v, bool on)
{
	if (on)
		m->pba[v / 64] |= 1ull << (v % 64);
	else
		m->pba[v / 64] &= ~(1ull << (v % 64));
}

static void kick_poller(struct msix *m)
{
	uint64_t one = 1;

	if (write(m->kick_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		pr_warn("device %s: cannot wake MSI-X poller: %s", m->id,
			strerror(errno));
}

/* Move a signal sitting in the eventfd into the PBA. Caller holds lock. */
static void drain_to_pending(struct msix *m, unsigned v)
{
	uint64_t cnt;

	if (read(m->vec[v].fd, &cnt, sizeof(cnt)) == sizeof(cnt) && cnt)
		pending_set(m, v, true);
}

static void update_vector(struct msix *m, unsigned v)
{
	struct msix_vector *vec = &m->vec[v];
	uint32_t ctrl = entry_u32(m, v, PCI_MSIX_ENTRY_VECTOR_CTRL);
	uint64_t addr = entry_addr(m, v);
	uint32_t data = entry_u32(m, v, PCI_MSIX_ENTRY_DATA);
	bool route = m->enabled && !m->func_mask &&
		     !(ctrl & PCI_MSIX_ENTRY_CTRL_MASKBIT) && addr != 0;
	int ret;

	if (m->frozen && vec->assigned && m->keep_irqfds)
		return;		/* the negative control: left attached */
	if (!route || m->frozen) {
		if (vec->assigned) {
			ret = vm_irqfd_deassign(m->vm, vec->fd, vec->gsi);
			if (ret < 0)
				pr_warn("device %s: MSI-X vector %u: irqfd deassign: %s",
					m->id, v, strerror(-ret));
			vec->assigned = false;
		}
		return;
	}

	if (vec->gsi < 0 || vec->routed_addr != addr ||
	    vec->routed_data != data) {
		ret = vm_msi_route_set(m->vm, &vec->gsi, addr, data);
		if (ret < 0) {
			pr_err("device %s: MSI-X vector %u: cannot route: %s",
			       m->id, v, strerror(-ret));
			return;	/* stays watched: signals become pending */
		}
		vec->routed_addr = addr;
		vec->routed_data = data;
	}
	if (vec->assigned)
		return;

	/* Signals that arrived while masked: the poll thread may not have
	 * drained the last one yet, so drain here too, then deliver once. */
	drain_to_pending(m, v);
	if (pending_test(m, v)) {
		pending_set(m, v, false);
		ret = vm_signal_msi(m->vm, addr, data);
		if (ret < 0)
			pr_warn("device %s: MSI-X vector %u: inject: %s",
				m->id, v, strerror(-ret));
	}
	ret = vm_irqfd_assign(m->vm, vec->fd, vec->gsi);
	if (ret < 0) {
		pr_err("device %s: MSI-X vector %u: irqfd assign: %s",
		       m->id, v, strerror(-ret));
		return;
	}
	vec->assigned = true;
}

static void update_all(struct msix *m)
{
	unsigned v;

	for (v = 0; v < m->nr; v++)
		update_vector(m, v);
	kick_poller(m);
}

static void *poll_thread(void *arg)
{
	struct msix *m = arg;
	struct pollfd *pfd;
	unsigned *map;
	unsigned n, i, v;
	uint64_t cnt;

	pfd = calloc(m->nr + 1, sizeof(*pfd));
	map = calloc(m->nr + 1, sizeof(*map));
	if (!pfd || !map) {
		pr_err("device %s: MSI-X poller: out of memory", m->id);
		goto out_free;
	}

	for (;;) {
		pthread_mutex_lock(&m->lock);
		if (m->stop) {
			pthread_mutex_unlock(&m->lock);
			break;
		}
		pfd[0] = (struct pollfd){ .fd = m->kick_fd, .events = POLLIN };
		n = 1;
		for (v = 0; m->enabled && !m->frozen && v < m->nr; v++) {
			if (m->vec[v].assigned)
				continue;
			pfd[n] = (struct pollfd){ .fd = m->vec[v].fd,
						  .events = POLLIN };
			map[n++] = v;
		}
		pthread_mutex_unlock(&m->lock);

		if (poll(pfd, n, -1) < 0) {
			if (errno == EINTR)
				continue;
			pr_err("device %s: MSI-X poller: %s", m->id,
			       strerror(errno));
			break;
		}
		if (pfd[0].revents & POLLIN)
			(void)!read(m->kick_fd, &cnt, sizeof(cnt));

		pthread_mutex_lock(&m->lock);
		for (i = 1; i < n; i++) {
			v = map[i];
			/* Re-check: the vector may have been routed since. */
			if ((pfd[i].revents & POLLIN) && m->enabled &&
			    !m->frozen && !m->vec[v].assigned)
				drain_to_pending(m, v);
		}
		pthread_mutex_unlock(&m->lock);
	}

out_free:
	free(map);
	free(pfd);
	return NULL;
}

/* Reset state (PCI spec): every entry zero and masked, nothing pending. */
static void table_reset(struct msix *m)
{
	uint32_t masked = PCI_MSIX_ENTRY_CTRL_MASKBIT;

	memset(m->table, 0, (size_t)m->nr * PCI_MSIX_ENTRY_SIZE);
	memset(m->pba, 0, DIV_ROUND_UP(m->nr, 64) * sizeof(uint64_t));
	for (unsigned v = 0; v < m->nr; v++)
		memcpy(m->table + (size_t)v * PCI_MSIX_ENTRY_SIZE +
		       PCI_MSIX_ENTRY_VECTOR_CTRL, &masked, 4);
}

/* Adopted fds from..nr not taken into a struct msix: ours to close. */
static void adopt_fds_close(const int *adopt_fds, unsigned from,
			    unsigned nr)
{
	for (unsigned v = from; adopt_fds && v < nr; v++)
		if (adopt_fds[v] >= 0)
			close(adopt_fds[v]);
}

int msix_create(struct vm *vm, const char *id, unsigned nr_vectors,
		msix_set_irqs_fn set_irqs, void *opaque, const int *adopt_fds,
		struct msix **out)
{
	struct msix *m;
	unsigned v = 0;
	int ret;

	if (nr_vectors == 0 || nr_vectors > MSIX_MAX_VECTORS) {
		adopt_fds_close(adopt_fds, 0, nr_vectors);
		return -EINVAL;
	}

	m = calloc(1, sizeof(*m));
	if (!m) {
		adopt_fds_close(adopt_fds, 0, nr_vectors);
		return -ENOMEM;
	}
	m->vm = vm;
	m->id = id;
	m->nr = nr_vectors;
	m->set_irqs = set_irqs;
	m->opaque = opaque;
	m->kick_fd = -1;
	pthread_mutex_init(&m->lock, NULL);

	m->table = calloc(nr_vectors, PCI_MSIX_ENTRY_SIZE);
	m->pba = calloc(DIV_ROUND_UP(nr_vectors, 64), sizeof(uint64_t));
	m->vec = calloc(nr_vectors, sizeof(*m->vec));
	m->fds = calloc(nr_vectors, sizeof(*m->fds));
	if (!m->table || !m->pba || !m->vec || !m->fds) {
		ret = -ENOMEM;
		adopt_fds_close(adopt_fds, 0, nr_vectors);
		goto err_free;
	}
	table_reset(m);
	for (v = 0; v < nr_vectors; v++) {
		m->vec[v].gsi = -1;
		m->vec[v].fd = -1;
	}
	/* Adopted eventfds (live update) are the device's already, with
	 * whatever signals they hold: frozen until thawed. */
	m->frozen = adopt_fds != NULL;
	for (v = 0; v < nr_vectors; v++) {
		m->vec[v].fd = adopt_fds ? adopt_fds[v] :
				eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
		if (m->vec[v].fd < 0) {
			ret = adopt_fds ? -EBADF : -errno;
			goto err_close;
		}
		m->fds[v] = m->vec[v].fd;
	}
	m->kick_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (m->kick_fd < 0) {
		ret = -errno;
		goto err_close;
	}
	ret = -pthread_create(&m->thread, NULL, poll_thread, m);
	if (ret < 0)
		goto err_close;
	m->thread_started = true;
	*out = m;
	return 0;

err_close:
	close_safely(&m->kick_fd);
	/* The adopted fd that failed and those after it are not in vec. */
	adopt_fds_close(adopt_fds, v + 1, nr_vectors);
	for (v = 0; v < nr_vectors; v++)
		close_safely(&m->vec[v].fd);
err_free:
	free(m->fds);
	free(m->vec);
	free(m->pba);
	free(m->table);
	pthread_mutex_destroy(&m->lock);
	free(m);
	return ret;
}

/* Both ends of a destroy: quiet leaves the device and KVM alone (a
 * hand-over gave them to another process). */
static void msix_free(struct msix *m, bool quiet)
{
	unsigned v;
	int ret;

	if (!m)
		return;

	pthread_mutex_lock(&m->lock);
	if (quiet) {
		/* No SET_IRQS, no deassign: only our fds close. */
		for (v = 0; v < m->nr; v++)
			m->vec[v].assigned = false;
		m->frozen = true;
	} else if (m->enabled) {
		ret = m->set_irqs(m->opaque, NULL, m->nr);
		if (ret < 0)
			pr_debug("device %s: MSI-X fds not taken back: %s",
				 m->id, strerror(-ret));
		m->enabled = false;
	}
	if (!quiet)
		update_all(m);	/* detaches every irqfd */
	m->stop = true;
	kick_poller(m);
	pthread_mutex_unlock(&m->lock);
	if (m->thread_started)
		pthread_join(m->thread, NULL);

	for (v = 0; v < m->nr; v++) {
		if (m->vec[v].gsi >= 0 && !quiet)
			vm_msi_route_free(m->vm, m->vec[v].gsi);
		close_safely(&m->vec[v].fd);
	}
	close_safely(&m->kick_fd);
	free(m->fds);
	free(m->vec);
	free(m->pba);
	free(m->table);
	pthread_mutex_destroy(&m->lock);
	free(m);
}

void msix_destroy(struct msix *m)
{
	msix_free(m, false);
}

void msix_abandon(struct msix *m)
{
	msix_free(m, true);
}

void msix_freeze(struct msix *m, bool detach)
{
	pthread_mutex_lock(&m->lock);
	m->frozen = true;
	m->keep_irqfds = !detach;
	update_all(m);
	pthread_mutex_unlock(&m->lock);
}

void msix_thaw(struct msix *m)
{
	pthread_mutex_lock(&m->lock);
	m->frozen = false;
	m->keep_irqfds = false;
	/* Attaching an irqfd injects what its eventfd counted meanwhile;
	 * the poll thread drains the masked ones. */
	update_all(m);
	pthread_mutex_unlock(&m->lock);
}

uint64_t msix_table_size(const struct msix *m)
{
	return (uint64_t)m->nr * PCI_MSIX_ENTRY_SIZE;
}

uint64_t msix_pba_size(const struct msix *m)
{
	return DIV_ROUND_UP(m->nr, 64) * sizeof(uint64_t);
}

unsigned msix_nr_vectors(const struct msix *m)
{
	return m->nr;
}

bool msix_enabled(struct msix *m)
{
	bool en;

	pthread_mutex_lock(&m->lock);
	en = m->enabled;
	pthread_mutex_unlock(&m->lock);
	return en;
}

void msix_table_access(struct msix *m, uint64_t offset, void *data,
		       unsigned size, bool is_write)
{
	unsigned first, last, v;

	if (!range_within(offset, size, msix_table_size(m))) {
		if (!is_write)
			memset(data, 0xff, size);
		return;
	}
	pthread_mutex_lock(&m->lock);
	if (!is_write) {
		memcpy(data, m->table + offset, size);
	} else {
		memcpy(m->table + offset, data, size);
		first = offset / PCI_MSIX_ENTRY_SIZE;
		last = (offset + size - 1) / PCI_MSIX_ENTRY_SIZE;
		for (v = first; v <= last; v++)
			update_vector(m, v);
		kick_poller(m);
	}
	pthread_mutex_unlock(&m->lock);
}

/* The PBA is read-only for software; writes are ignored (PCI spec). */
void msix_pba_access(struct msix *m, uint64_t offset, void *data,
		     unsigned size, bool is_write)
{
	if (is_write)
		return;
	if (!range_within(offset, size, msix_pba_size(m))) {
		memset(data, 0xff, size);
		return;
	}
	pthread_mutex_lock(&m->lock);
	memcpy(data, (uint8_t *)m->pba + offset, size);
	pthread_mutex_unlock(&m->lock);
}

void msix_reset(struct msix *m)
{
	int ret;

	if (!m)
		return;
	pthread_mutex_lock(&m->lock);
	if (m->enabled) {
		ret = m->set_irqs(m->opaque, NULL, m->nr);
		if (ret < 0)
			pr_warn("device %s: cannot take the vectors back from "
				"the device: %s", m->id, strerror(-ret));
	}
	m->enabled = false;
	m->func_mask = false;
	table_reset(m);
	update_all(m);		/* every irqfd detached */
	/* What the device signalled before is not the new guest's. */
	for (unsigned v = 0; v < m->nr; v++) {
		uint64_t cnt;

		while (read(m->vec[v].fd, &cnt, sizeof(cnt)) > 0)
			;
	}
	pthread_mutex_unlock(&m->lock);
}

int msix_set_control(struct msix *m, bool enable, bool func_mask)
{
	int ret = 0;

	pthread_mutex_lock(&m->lock);
	if (enable != m->enabled) {
		ret = m->set_irqs(m->opaque, enable ? m->fds : NULL, m->nr);
		if (ret < 0)
			pr_err("device %s: cannot %s MSI-X on the device: %s",
			       m->id, enable ? "enable" : "disable",
			       strerror(-ret));
		/* Track the guest's view regardless: it owns the bit. */
		m->enabled = enable;
	}
	m->func_mask = func_mask;
	update_all(m);
	pthread_mutex_unlock(&m->lock);
	return ret;
}

int msix_vector_fd(struct msix *m, unsigned vector)
{
	return vector < m->nr ? m->vec[vector].fd : -1;
}

bool msix_vector_pending(struct msix *m, unsigned vector)
{
	bool p;

	if (vector >= m->nr)
		return false;
	pthread_mutex_lock(&m->lock);
	p = pending_test(m, vector);
	pthread_mutex_unlock(&m->lock);
	return p;
}

/* Blob: u8 enabled, u8 func_mask, u16 reserved, u32 nr, table, PBA. */
#define MSIX_STATE_HDR	8u

size_t msix_state_size(const struct msix *m)
{
	return MSIX_STATE_HDR + msix_table_size(m) +
	       DIV_ROUND_UP(m->nr, 64) * sizeof(uint64_t);
}

void msix_state_get(struct msix *m, void *buf)
{
	uint8_t *p = buf;
	uint32_t nr = m->nr;

	pthread_mutex_lock(&m->lock);
	for (unsigned v = 0; v < m->nr; v++)
		if (m->enabled && !m->vec[v].assigned)
			drain_to_pending(m, v);
	p[0] = m->enabled;
	p[1] = m->func_mask;
	p[2] = p[3] = 0;
	memcpy(p + 4, &nr, 4);
	memcpy(p + MSIX_STATE_HDR, m->table, msix_table_size(m));
	memcpy(p + MSIX_STATE_HDR + msix_table_size(m), m->pba,
	       DIV_ROUND_UP(m->nr, 64) * sizeof(uint64_t));
	pthread_mutex_unlock(&m->lock);
}

int msix_state_set(struct msix *m, const void *buf, size_t len,
		   bool device_has_fds)
{
	const uint8_t *p = buf;
	uint32_t nr;
	int ret = 0;

	if (len != msix_state_size(m))
		return -EINVAL;
	memcpy(&nr, p + 4, 4);
	if (nr != m->nr || p[0] > 1 || p[1] > 1)
		return -EINVAL;
	pthread_mutex_lock(&m->lock);
	memcpy(m->table, p + MSIX_STATE_HDR, msix_table_size(m));
	memcpy(m->pba, p + MSIX_STATE_HDR + msix_table_size(m),
	       DIV_ROUND_UP(m->nr, 64) * sizeof(uint64_t));
	if (p[0] && !m->enabled && !device_has_fds) {
		ret = m->set_irqs(m->opaque, m->fds, m->nr);
		if (ret < 0)
			pr_err("device %s: cannot enable MSI-X on the device: %s",
			       m->id, strerror(-ret));
	}
	m->enabled = p[0];
	m->func_mask = p[1];
	update_all(m);
	pthread_mutex_unlock(&m->lock);
	return ret < 0 ? ret : 0;
}
