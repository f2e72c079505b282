/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The server's side of a live update (ferry/vfu_server.h): parking the
 * dispatcher at a message boundary, and the session as a blob plus fds
 * for the process that takes over.
 *
 * Session description (host byte order, packed; every count bounded
 * before it sizes anything, the whole blob consumed exactly):
 *
 *   u32 magic "VSRV"   u16 version 2   u16 reserved 0
 *   u32 flags (CLIENT | NEGOTIATED | LOG)   u32 mig_state
 *   u32 next_msg_id
 *   caps: u32 major u32 minor u32 max_msg_fds u32 max_data_xfer_size
 *         u32 max_dma_maps u64 pgsizes
 *   u32 xfer_max   u32 max_maps (negotiated)
 *   u32 nr_files   u32 nr_regions
 *   regions, by increasing iova:
 *         u64 iova u64 size u64 offset u32 prot s32 file (-1: by message)
 *   LOG only: u64 page_size u32 nr_ranges, ranges {u64 iova u64 length},
 *         then for each region with a file: u64 nr_words, the words
 *   u32 nr_irq_indexes, per index: u32 count, count bytes (1: eventfd)
 *   version 2: u32 intx (INTX_MASKED | INTX_RESAMPLE)
 *
 * fds: "listen", "client" (CLIENT), "dma.<file>" (each file a region
 * uses; one per regular file, see vfu_dma_file), "irq.<index>.<vector>",
 * "intx.resample" (INTX_RESAMPLE).
 *
 * Version 1 (no INTx word) is still loaded: INTx unmasked, no resample
 * fd, which is what a version-1 server had.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ferry/blob.h"
#include "ferry/cpr_fds.h"
#include "ferry/log.h"
#include "ferry/util.h"
#include "vfu_server_priv.h"

#define SRV_CPR_MAGIC		0x56525356u	/* "VSRV" */
#define SRV_CPR_VERSION		2u
#define SRV_CPR_VERSION_MIN	1u	/* before the INTx word */

#define SRV_CPR_CLIENT		(1u << 0)
#define SRV_CPR_NEGOTIATED	(1u << 1)
#define SRV_CPR_LOG		(1u << 2)
#define SRV_CPR_FLAGS		(SRV_CPR_CLIENT | SRV_CPR_NEGOTIATED | \
				 SRV_CPR_LOG)

#define SRV_CPR_INTX_MASKED	(1u << 0)
#define SRV_CPR_INTX_RESAMPLE	(1u << 1)
#define SRV_CPR_INTX_FLAGS	(SRV_CPR_INTX_MASKED | SRV_CPR_INTX_RESAMPLE)
#define SRV_CPR_INTX_FD		"intx.resample"

/* One region as it travels. */
struct srv_cpr_region {
	uint64_t iova;
	uint64_t size;
	uint64_t offset;
	uint32_t prot;
	int32_t file;
} __attribute__((packed));

_Static_assert(sizeof(struct srv_cpr_region) == 32, "cpr region");

/*
 * Holding the dispatcher
 */

static void deadline_ts(struct timespec *ts, unsigned int timeout_ms)
{
	clock_gettime(CLOCK_MONOTONIC, ts);	/* srv->cond's clock */
	ts->tv_sec += timeout_ms / 1000;
	ts->tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

int vfu_server_hold(struct vfu_server *srv, unsigned int timeout_ms)
{
	struct timespec ts;
	uint64_t one = 1;
	int ret = 0;

	deadline_ts(&ts, timeout_ms);
	pthread_mutex_lock(&srv->lock);
	if (srv->hold != VFU_HOLD_NONE) {
		pthread_mutex_unlock(&srv->lock);
		return -EBUSY;
	}
	srv->hold = VFU_HOLD_WANTED;
	if (write(srv->hold_fd, &one, sizeof(one)) < 0)
		pr_debug("%s: hold eventfd: %d", srv->desc.name, -errno);
	while (srv->hold == VFU_HOLD_WANTED) {
		if (pthread_cond_timedwait(&srv->cond, &srv->lock, &ts) ==
		    ETIMEDOUT && srv->hold == VFU_HOLD_WANTED) {
			srv->hold = VFU_HOLD_NONE;
			ret = -ETIMEDOUT;
			break;
		}
	}
	/* A device thread waiting for a DMA reply would wait for a
	 * dispatcher that no longer reads: the device must be stopped
	 * before the server is held. */
	if (!ret && srv->conn_users) {
		srv->hold = VFU_HOLD_NONE;
		pthread_cond_broadcast(&srv->cond);
		ret = -EBUSY;
	}
	pthread_mutex_unlock(&srv->lock);
	return ret;
}

void vfu_server_release(struct vfu_server *srv)
{
	pthread_mutex_lock(&srv->lock);
	if (srv->hold == VFU_HOLD_PARKED || srv->hold == VFU_HOLD_WANTED)
		srv->hold = VFU_HOLD_NONE;
	pthread_cond_broadcast(&srv->cond);
	pthread_mutex_unlock(&srv->lock);
}

void vfu_server_handover(struct vfu_server *srv)
{
	pthread_mutex_lock(&srv->lock);
	if (srv->hold == VFU_HOLD_PARKED)
		srv->hold = VFU_HOLD_HANDOVER;
	pthread_cond_broadcast(&srv->cond);
	pthread_mutex_unlock(&srv->lock);
}

/*
 * Saving
 */

static int fds_add_fmt(struct cpr_fds *fds, int fd, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static int fds_add_fmt(struct cpr_fds *fds, int fd, const char *fmt, ...)
{
	char name[CPR_NAME_MAX];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(name, sizeof(name), fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(name))
		return -ENAMETOOLONG;
	return cpr_fds_add(fds, name, fd);
}

static void save_caps(struct blob_wr *w, const struct vfu_caps *c)
{
	blob_put_u32(w, c->major);
	blob_put_u32(w, c->minor);
	blob_put_u32(w, c->max_msg_fds);
	blob_put_u32(w, c->max_data_xfer_size);
	blob_put_u32(w, c->max_dma_maps);
	blob_put_u64(w, c->pgsizes);
}

/* DMA table: regions, log, and the files' fds. Read lock held. */
static int save_dma(struct vfu_dma_table *t, struct cpr_fds *fds,
		    struct blob_wr *w)
{
	int ret;

	blob_put_u32(w, t->max_maps);
	blob_put_u32(w, t->nr_files);
	blob_put_u32(w, t->nr);
	for (uint32_t i = 0; i < t->nr_files; i++) {
		if (t->files[i].fd < 0)
			continue;
		ret = fds_add_fmt(fds, t->files[i].fd, "dma.%u", i);
		if (ret)
			return ret;
	}
	for (uint32_t i = 0; i < t->nr; i++) {
		const struct vfu_dma_region *r = &t->regions[i];
		struct srv_cpr_region c = {
			.iova = r->iova, .size = r->size,
			.offset = r->map ? r->fd_offset : 0,
			.prot = r->prot, .file = r->map ? r->file : -1,
		};

		blob_wr_put(w, &c, sizeof(c));
	}
	if (!t->log_on)
		return 0;
	blob_put_u64(w, t->log_pgsize);
	blob_put_u32(w, t->log_nr_ranges);
	blob_wr_put(w, t->log_ranges,
		    t->log_nr_ranges * sizeof(t->log_ranges[0]));
	for (uint32_t i = 0; i < t->nr; i++) {
		const struct vfu_dma_region *r = &t->regions[i];
		uint64_t words;

		if (!r->map)
			continue;
		words = r->dirty ? DIV_ROUND_UP(r->dirty_pages, 64) : 0;
		blob_put_u64(w, words);
		blob_wr_put(w, r->dirty, words * sizeof(uint64_t));
	}
	return 0;
}

static int save_irqs(struct vfu_server *srv, struct cpr_fds *fds,
		     struct blob_wr *w)
{
	uint32_t intx;
	int ret;

	blob_put_u32(w, VFU_PCI_NUM_IRQS);
	for (uint32_t i = 0; i < VFU_PCI_NUM_IRQS; i++) {
		uint32_t n = srv->desc.irq_count[i];

		blob_put_u32(w, n);
		for (uint32_t v = 0; v < n; v++) {
			uint8_t set = srv->irq_fds[i][v] >= 0;

			blob_wr_put(w, &set, 1);
			if (!set)
				continue;
			ret = fds_add_fmt(fds, srv->irq_fds[i][v], "irq.%u.%u",
					  i, v);
			if (ret)
				return ret;
		}
	}
	intx = (srv->intx_masked ? SRV_CPR_INTX_MASKED : 0) |
	       (srv->intx_resample_fd >= 0 ? SRV_CPR_INTX_RESAMPLE : 0);
	blob_put_u32(w, intx);
	if (intx & SRV_CPR_INTX_RESAMPLE)
		return cpr_fds_add(fds, SRV_CPR_INTX_FD,
				   srv->intx_resample_fd);
	return 0;
}

int vfu_server_save(struct vfu_server *srv, struct cpr_fds *fds,
		    void **blob, size_t *len)
{
	struct blob_wr w;
	uint32_t flags = 0;
	int ret;

	blob_wr_init(&w);
	pthread_mutex_lock(&srv->lock);
	if (srv->hold != VFU_HOLD_PARKED) {
		pthread_mutex_unlock(&srv->lock);
		return -EINVAL;
	}
	if (srv->conn && srv->conn->fd >= 0)
		flags |= SRV_CPR_CLIENT;
	if ((flags & SRV_CPR_CLIENT) && srv->negotiated)
		flags |= SRV_CPR_NEGOTIATED;
	pthread_rwlock_rdlock(&srv->dma.lock);
	if (srv->dma.log_on)
		flags |= SRV_CPR_LOG;

	blob_put_u32(&w, SRV_CPR_MAGIC);
	blob_put_u16(&w, SRV_CPR_VERSION);
	blob_put_u16(&w, 0);
	blob_put_u32(&w, flags);
	blob_put_u32(&w, srv->mig_state);
	blob_put_u32(&w, srv->next_msg_id);
	save_caps(&w, &srv->client_caps);
	blob_put_u32(&w, srv->xfer_max);

	ret = srv->listen_fd >= 0 ? cpr_fds_add(fds, "listen", srv->listen_fd) :
	      -ENOTCONN;
	if (!ret && (flags & SRV_CPR_CLIENT))
		ret = cpr_fds_add(fds, "client", srv->conn->fd);
	if (!ret)
		ret = save_dma(&srv->dma, fds, &w);
	if (!ret)
		ret = save_irqs(srv, fds, &w);
	pthread_rwlock_unlock(&srv->dma.lock);
	pthread_mutex_unlock(&srv->lock);
	if (ret) {
		blob_wr_free(&w);
		return ret;
	}
	return blob_wr_finish(&w, blob, len);
}

/*
 * Restoring: parse and check everything first, then apply.
 */

struct srv_cpr {
	uint32_t flags;
	uint32_t mig_state;
	uint32_t next_msg_id;
	struct vfu_caps caps;
	uint32_t xfer_max;
	uint32_t max_maps;
	uint32_t nr_files;
	uint32_t nr_regions;
	const uint8_t *regions;		/* nr_regions srv_cpr_region */
	uint64_t log_pgsize;
	uint32_t log_nr_ranges;
	struct vfu_dma_log_range log_ranges[VFU_DMA_LOG_MAX_RANGES];
	const uint8_t **dirty;		/* per region: words, or NULL */
	const uint8_t *irq_set[VFU_PCI_NUM_IRQS];
	uint32_t intx;			/* SRV_CPR_INTX_* (version 1: 0) */
};

#define bad(...)	({ snprintf(err, errlen, __VA_ARGS__); -EBADMSG; })

static int parse_caps(struct blob_rd *r, struct vfu_caps *c)
{
	uint32_t major, minor;

	blob_get_u32(r, &major);
	blob_get_u32(r, &minor);
	blob_get_u32(r, &c->max_msg_fds);
	blob_get_u32(r, &c->max_data_xfer_size);
	blob_get_u32(r, &c->max_dma_maps);
	blob_get_u64(r, &c->pgsizes);
	c->major = (uint16_t)major;
	c->minor = (uint16_t)minor;
	if (major > UINT16_MAX || minor > UINT16_MAX)
		return -EINVAL;
	return blob_rd_err(r);
}

static struct srv_cpr_region region_at(const struct srv_cpr *s, uint32_t i)
{
	struct srv_cpr_region c;

	memcpy(&c, s->regions + (size_t)i * sizeof(c), sizeof(c));
	return c;
}

/* The region's log words as vfu_server_dma.c counts them. */
static uint64_t log_words(uint64_t iova, uint64_t size, uint64_t pgsize)
{
	uint64_t first = iova / pgsize, last = (iova + size - 1) / pgsize;

	return DIV_ROUND_UP(last - first + 1, 64);
}

static int parse_regions(struct vfu_server *srv, struct blob_rd *r,
			 struct srv_cpr *s, char *err, size_t errlen)
{
	uint64_t prev_end = 0;
	const void *p;

	if (s->nr_regions > s->max_maps)
		return bad("%u DMA regions, %u allowed", s->nr_regions,
			   s->max_maps);
	p = blob_rd_ptr(r, (size_t)s->nr_regions *
				sizeof(struct srv_cpr_region));
	if (!p)
		return bad("DMA region table truncated");
	s->regions = p;
	for (uint32_t i = 0; i < s->nr_regions; i++) {
		struct srv_cpr_region c = region_at(s, i);
		struct vfu_dma_map m = {
			.argsz = sizeof(m), .flags = c.prot,
			.offset = c.offset, .addr = c.iova, .size = c.size,
		};

		/* The rules DMA_MAP itself is held to. */
		if (vfu_codec_dma_map(&m, sizeof(m), c.file >= 0, &srv->lim,
				      &m))
			return bad("DMA region %u (iova 0x%" PRIx64 " size 0x%"
				   PRIx64 " prot 0x%x) invalid", i, c.iova,
				   c.size, c.prot);
		if (c.file < -1 || (c.file >= 0 &&
				    (uint32_t)c.file >= s->nr_files))
			return bad("DMA region %u: file %d of %u", i, c.file,
				   s->nr_files);
		/* Sorted and disjoint, as the table keeps them. */
		if (i && c.iova < prev_end)
			return bad("DMA region %u at 0x%" PRIx64 " overlaps or "
				   "precedes the one before", i, c.iova);
		prev_end = c.iova + c.size;
	}
	return 0;
}

static int parse_log(struct blob_rd *r, struct srv_cpr *s, char *err,
		     size_t errlen)
{
	struct vfu_dma_log_control ctl;
	const struct vfu_dma_log_range *ranges;
	uint8_t *payload;
	size_t plen;
	const void *p;
	int ret;

	blob_get_u64(r, &s->log_pgsize);
	blob_get_u32(r, &s->log_nr_ranges);
	if (blob_rd_err(r))
		return bad("DMA log truncated");
	if (s->log_nr_ranges > VFU_DMA_LOG_MAX_RANGES)
		return bad("DMA log of %u ranges", s->log_nr_ranges);
	plen = s->log_nr_ranges * sizeof(struct vfu_dma_log_range);
	p = blob_rd_ptr(r, plen);
	if (!p)
		return bad("DMA log ranges truncated");
	/* The rules DMA_LOGGING_START is held to. */
	payload = malloc(sizeof(ctl) + plen);
	if (!payload)
		return -ENOMEM;
	ctl = (struct vfu_dma_log_control){
		.page_size = s->log_pgsize, .num_ranges = s->log_nr_ranges,
	};
	memcpy(payload, &ctl, sizeof(ctl));
	memcpy(payload + sizeof(ctl), p, plen);
	ret = vfu_codec_dma_log_start(payload, sizeof(ctl) + plen, &ctl,
				      &ranges);
	if (!ret)
		memcpy(s->log_ranges, ranges, plen);
	free(payload);
	if (ret)
		return bad("DMA log (page size %" PRIu64 ", %u ranges) "
			   "invalid", s->log_pgsize, s->log_nr_ranges);

	for (uint32_t i = 0; i < s->nr_regions; i++) {
		struct srv_cpr_region c = region_at(s, i);
		uint64_t words, want;

		if (c.file < 0)
			continue;
		if (blob_get_u64(r, &words))
			return bad("DMA log of region %u truncated", i);
		want = log_words(c.iova, c.size, s->log_pgsize);
		if (words != want)
			return bad("DMA log of region %u: %" PRIu64 " words, "
				   "%" PRIu64 " expected", i, words, want);
		s->dirty[i] = blob_rd_ptr(r, (size_t)words * sizeof(uint64_t));
		if (!s->dirty[i])
			return bad("DMA log of region %u truncated", i);
	}
	return 0;
}

static int parse_irqs(struct vfu_server *srv, struct blob_rd *r,
		      uint16_t version, struct srv_cpr *s, char *err,
		      size_t errlen)
{
	uint32_t n;

	if (blob_get_u32(r, &n) || n != VFU_PCI_NUM_IRQS)
		return bad("%u IRQ indexes, %u expected", n, VFU_PCI_NUM_IRQS);
	for (uint32_t i = 0; i < VFU_PCI_NUM_IRQS; i++) {
		if (blob_get_u32(r, &n))
			return bad("IRQ index %u truncated", i);
		if (n != srv->desc.irq_count[i])
			return bad("IRQ index %u has %u vectors here, %u in "
				   "the blob", i, srv->desc.irq_count[i], n);
		s->irq_set[i] = blob_rd_ptr(r, n);
		if (!s->irq_set[i])
			return bad("IRQ index %u truncated", i);
		for (uint32_t v = 0; v < n; v++)
			if (s->irq_set[i][v] > 1)
				return bad("IRQ %u.%u: %u", i, v,
					   s->irq_set[i][v]);
	}
	if (version < 2)
		return 0;
	if (blob_get_u32(r, &s->intx))
		return bad("INTx state truncated");
	if (s->intx & ~SRV_CPR_INTX_FLAGS)
		return bad("INTx state 0x%x", s->intx);
	if (s->intx && !srv->desc.irq_count[VFU_PCI_INTX_IRQ_INDEX])
		return bad("INTx state 0x%x for a device without INTx",
			   s->intx);
	return 0;
}

static int parse(struct vfu_server *srv, const void *blob, size_t len,
		 struct srv_cpr *s, char *err, size_t errlen)
{
	struct blob_rd r;
	uint32_t magic;
	uint16_t version, reserved;
	int ret;

	blob_rd_init(&r, blob, len);
	blob_get_u32(&r, &magic);
	blob_get_u16(&r, &version);
	blob_get_u16(&r, &reserved);
	if (blob_rd_err(&r) || magic != SRV_CPR_MAGIC)
		return bad("not a vfio-user server session (magic 0x%08x)",
			   magic);
	if (version < SRV_CPR_VERSION_MIN || version > SRV_CPR_VERSION ||
	    reserved)
		return bad("server session version %u, reserved %u (expected "
			   "%u..%u, 0)", version, reserved, SRV_CPR_VERSION_MIN,
			   SRV_CPR_VERSION);
	blob_get_u32(&r, &s->flags);
	blob_get_u32(&r, &s->mig_state);
	blob_get_u32(&r, &s->next_msg_id);
	if (parse_caps(&r, &s->caps))
		return bad("server session header truncated or invalid");
	blob_get_u32(&r, &s->xfer_max);
	blob_get_u32(&r, &s->max_maps);
	blob_get_u32(&r, &s->nr_files);
	blob_get_u32(&r, &s->nr_regions);
	if (blob_rd_err(&r))
		return bad("server session truncated");
	if (s->flags & ~SRV_CPR_FLAGS)
		return bad("server session flags 0x%x", s->flags);
	if ((s->flags & SRV_CPR_NEGOTIATED) && !(s->flags & SRV_CPR_CLIENT))
		return bad("negotiated without a client");
	if (s->mig_state >= VFU_MIG_STATE_NR ||
	    (!srv->desc.ops->mig && s->mig_state != VFU_MIG_STATE_RUNNING))
		return bad("migration state %u", s->mig_state);
	if (s->next_msg_id > UINT16_MAX)
		return bad("message id %u", s->next_msg_id);
	if ((s->flags & SRV_CPR_NEGOTIATED) &&
	    (s->xfer_max == 0 || s->xfer_max > srv->cfg.max_data_xfer_size))
		return bad("max_data_xfer_size %u (this server: 1..%u)",
			   s->xfer_max, srv->cfg.max_data_xfer_size);
	if (s->max_maps > srv->cfg.max_dma_maps)
		return bad("max_dma_maps %u (this server: at most %u)",
			   s->max_maps, srv->cfg.max_dma_maps);
	if (s->nr_files > CPR_MAX_FDS)
		return bad("%u DMA files", s->nr_files);
	if (!(s->flags & SRV_CPR_CLIENT) &&
	    (s->nr_regions || (s->flags & SRV_CPR_LOG)))
		return bad("DMA state without a client");
	ret = parse_regions(srv, &r, s, err, errlen);
	if (ret)
		return ret;
	s->dirty = calloc(s->nr_regions ? s->nr_regions : 1,
			  sizeof(*s->dirty));
	if (!s->dirty)
		return -ENOMEM;
	if (s->flags & SRV_CPR_LOG) {
		ret = parse_log(&r, s, err, errlen);
		if (ret)
			return ret;
	}
	ret = parse_irqs(srv, &r, version, s, err, errlen);
	if (ret)
		return ret;
	for (uint32_t i = 0; i < VFU_PCI_NUM_IRQS; i++)
		for (uint32_t v = 0; v < srv->desc.irq_count[i]; v++)
			if (s->irq_set[i][v] && !(s->flags & SRV_CPR_CLIENT))
				return bad("IRQ eventfds without a client");
	if (s->intx && !(s->flags & SRV_CPR_CLIENT))
		return bad("INTx state without a client");
	if (blob_rd_left(&r))
		return bad("%zu bytes after the server session",
			   blob_rd_left(&r));
	return 0;
}

/* Every fd the description names, before anything is applied. */
static int check_fds(struct vfu_server *srv, struct cpr_fds *fds,
		     const struct srv_cpr *s, char *err, size_t errlen)
{
	char name[CPR_NAME_MAX];
	int fd;

	/* Each fd is of the kind its name says: a wrong one would be taken
	 * now and fail only once the old process is gone. */
	fd = cpr_fds_peek(fds, "listen");
	if (fd < 0 || !fd_is_unix_stream(fd))
		return bad("no \"listen\" socket");
	fd = cpr_fds_peek(fds, "client");
	if ((s->flags & SRV_CPR_CLIENT) && (fd < 0 || !fd_is_unix_stream(fd)))
		return bad("no \"client\" socket");
	for (uint32_t i = 0; i < s->nr_regions; i++) {
		struct srv_cpr_region c = region_at(s, i);

		if (c.file < 0)
			continue;
		snprintf(name, sizeof(name), "dma.%d", c.file);
		if (cpr_fds_peek(fds, name) < 0)
			return bad("no \"%s\" fd (DMA region %u)", name, i);
	}
	for (uint32_t i = 0; i < VFU_PCI_NUM_IRQS; i++) {
		for (uint32_t v = 0; v < srv->desc.irq_count[i]; v++) {
			if (!s->irq_set[i][v])
				continue;
			snprintf(name, sizeof(name), "irq.%u.%u", i, v);
			fd = cpr_fds_peek(fds, name);
			if (fd < 0 || !fd_is_eventfd(fd))
				return bad("no \"%s\" eventfd", name);
		}
	}
	fd = cpr_fds_peek(fds, SRV_CPR_INTX_FD);
	if ((s->intx & SRV_CPR_INTX_RESAMPLE) && (fd < 0 || !fd_is_eventfd(fd)))
		return bad("no \"%s\" eventfd", SRV_CPR_INTX_FD);
	return 0;
}

/* Map every region over its file, as DMA_MAP did in the old process;
 * then the log and its bits. Write lock not needed: nobody runs yet. */
static int apply_dma(struct vfu_server *srv, struct cpr_fds *fds,
		     const struct srv_cpr *s, char *err, size_t errlen)
{
	struct vfu_dma_table *t = &srv->dma;
	char name[CPR_NAME_MAX];
	int ret;

	t->max_maps = s->max_maps;
	for (uint32_t i = 0; i < s->nr_regions; i++) {
		struct srv_cpr_region c = region_at(s, i);
		struct vfu_dma_map m = {
			.argsz = sizeof(m), .flags = c.prot,
			.offset = c.offset, .addr = c.iova, .size = c.size,
		};
		int fd = -1;

		if (c.file >= 0) {
			snprintf(name, sizeof(name), "dma.%d", c.file);
			fd = dup(cpr_fds_peek(fds, name));
			if (fd < 0) {
				ret = -errno;
				snprintf(err, errlen, "DMA region %u: %s", i,
					 strerror(errno));
				return ret;
			}
		}
		ret = vfu_dma_table_map(t, &m, fd);
		if (ret) {
			snprintf(err, errlen, "DMA region %u (iova 0x%" PRIx64
				 " size 0x%" PRIx64 "): cannot map: %s", i,
				 c.iova, c.size, strerror(-ret));
			return ret;
		}
	}
	if (!(s->flags & SRV_CPR_LOG))
		return 0;
	ret = vfu_dma_log_start(t, s->log_pgsize, s->log_ranges,
				s->log_nr_ranges);
	if (ret) {
		snprintf(err, errlen, "DMA log: %s", strerror(-ret));
		return ret;
	}
	/* Regions were sorted in the blob: same order in the table. */
	for (uint32_t i = 0; i < t->nr; i++)
		if (s->dirty[i] && t->regions[i].dirty)
			memcpy(t->regions[i].dirty, s->dirty[i],
			       DIV_ROUND_UP(t->regions[i].dirty_pages, 64) *
			       sizeof(uint64_t));
	return 0;
}

/* The files now live in the DMA table (dup'd): drop the registry's. */
static void drop_dma_fds(struct cpr_fds *fds, const struct srv_cpr *s)
{
	char name[CPR_NAME_MAX];

	for (uint32_t f = 0; f < s->nr_files; f++) {
		int fd;

		snprintf(name, sizeof(name), "dma.%u", f);
		fd = cpr_fds_take(fds, name);
		if (fd >= 0)
			close(fd);
	}
}

int vfu_server_restore(struct vfu_server *srv, struct cpr_fds *fds,
		       const void *blob, size_t len,
		       const struct sock_access *acc, char *err,
		       size_t errlen)
{
	struct srv_cpr *s;
	char name[CPR_NAME_MAX];
	int ret;

	if (srv->listen_fd >= 0 || srv->conn || srv->has_adopted) {
		snprintf(err, errlen, "server already in use");
		return -EBUSY;
	}
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	ret = parse(srv, blob, len, s, err, errlen);
	if (!ret)
		ret = check_fds(srv, fds, s, err, errlen);
	if (ret)
		goto out_free;

	ret = apply_dma(srv, fds, s, err, errlen);
	if (ret)
		goto err_unmap;
	drop_dma_fds(fds, s);
	for (uint32_t i = 0; i < VFU_PCI_NUM_IRQS; i++) {
		for (uint32_t v = 0; v < srv->desc.irq_count[i]; v++) {
			if (!s->irq_set[i][v])
				continue;
			snprintf(name, sizeof(name), "irq.%u.%u", i, v);
			srv->irq_fds[i][v] = cpr_fds_take(fds, name);
		}
	}
	srv->intx_masked = s->intx & SRV_CPR_INTX_MASKED;
	if (s->intx & SRV_CPR_INTX_RESAMPLE)
		srv->intx_resample_fd = cpr_fds_take(fds, SRV_CPR_INTX_FD);
	srv->listen_fd = cpr_fds_take(fds, "listen");
	srv->access = acc ? *acc : SOCK_ACCESS_PRIVATE;
	srv->mig_state = s->mig_state;
	srv->next_msg_id = (uint16_t)s->next_msg_id;
	if (s->flags & SRV_CPR_CLIENT) {
		vfu_conn_init_sock(&srv->adopted, cpr_fds_take(fds, "client"));
		srv->adopted.max_fds = srv->cfg.max_msg_fds;
		srv->has_adopted = true;
		/* Device threads may reach the client (DMA messages) as
		 * soon as the device runs, before the dispatcher does. */
		srv->conn = &srv->adopted;
	}
	if (s->flags & SRV_CPR_NEGOTIATED) {
		srv->negotiated = true;
		srv->client_caps = s->caps;
		srv->xfer_max = s->xfer_max;
		srv->lim.max_data_xfer_size = s->xfer_max;
	}
	goto out_free;

err_unmap:
	vfu_dma_log_stop(&srv->dma);
	vfu_dma_table_unmap_all(&srv->dma);
	srv->dma.max_maps = srv->cfg.max_dma_maps;
out_free:
	free(s->dirty);
	free(s);
	return ret;
}
