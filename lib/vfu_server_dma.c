/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The server's DMA side: the table of regions the client mapped, device
 * DMA through them, and DMA write logging.
 *
 * fd-backed regions are mmap'd MAP_SHARED and accessed under the table's
 * read lock; DMA_UNMAP takes the write lock, so once an unmap returns no
 * device access to that region is in flight. Regions mapped without an
 * fd are reached with DMA_READ/DMA_WRITE messages to the client; those go
 * out with the lock dropped, because the dispatcher thread (which would
 * need the write lock for an unmap) must stay free to receive the reply.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ferry/log.h"
#include "ferry/trace.h"
#include "ferry/util.h"
#include "vfu_server_priv.h"

int vfu_dma_table_init(struct vfu_dma_table *t, uint32_t max_maps,
		       uint64_t max_size)
{
	memset(t, 0, sizeof(*t));
	t->max_maps = max_maps;
	t->max_size = max_size;
	return -pthread_rwlock_init(&t->lock, NULL);
}

/*
 * The file table. A region keeps its file open (file_get) until it is
 * unmapped (file_put): the mapping alone would serve the device, but a
 * live update must be able to hand the file to the next process.
 */

/* Take ownership of fd for a new region: its file's index, or -errno
 * (fd closed on every path but the one that keeps it). */
static int32_t file_get(struct vfu_dma_table *t, int fd,
			const struct stat *st)
{
	bool regular = S_ISREG(st->st_mode);
	int32_t free_slot = -1;
	struct vfu_dma_file *f;

	for (uint32_t i = 0; i < t->nr_files; i++) {
		f = &t->files[i];
		if (f->fd < 0) {
			if (free_slot < 0)
				free_slot = (int32_t)i;
			continue;
		}
		/* Same inode: mmap of either fd reaches the same pages. */
		if (regular && f->regular && f->dev == st->st_dev &&
		    f->ino == st->st_ino) {
			f->refs++;
			close_safely(&fd);
			return (int32_t)i;
		}
	}
	if (free_slot < 0) {
		if (t->nr_files >= INT32_MAX - 1)
			goto err_close;
		f = realloc(t->files, (t->nr_files + 1) * sizeof(*f));
		if (!f)
			goto err_close;
		t->files = f;
		free_slot = (int32_t)t->nr_files++;
	}
	t->files[free_slot] = (struct vfu_dma_file){
		.fd = fd, .dev = st->st_dev, .ino = st->st_ino,
		.regular = regular, .refs = 1,
	};
	return free_slot;

err_close:
	close_safely(&fd);
	return -ENOMEM;
}

static void file_put(struct vfu_dma_table *t, int32_t i)
{
	struct vfu_dma_file *f;

	if (i < 0 || (uint32_t)i >= t->nr_files)
		return;
	f = &t->files[i];
	if (f->fd >= 0 && --f->refs == 0)
		close_safely(&f->fd);
}

int vfu_dma_table_file_fd(const struct vfu_dma_table *t, int32_t i)
{
	if (i < 0 || (uint32_t)i >= t->nr_files)
		return -1;
	return t->files[i].fd;
}

static void region_release(struct vfu_dma_table *t, struct vfu_dma_region *r)
{
	if (r->map)
		munmap(r->map, r->map_len);
	free(r->dirty);
	file_put(t, r->file);
	memset(r, 0, sizeof(*r));
	r->file = -1;
}

void vfu_dma_table_destroy(struct vfu_dma_table *t)
{
	vfu_dma_table_unmap_all(t);
	free(t->regions);
	t->regions = NULL;
	t->cap = 0;
	free(t->files);
	t->files = NULL;
	t->nr_files = 0;
	pthread_rwlock_destroy(&t->lock);
}

/* Index of the first region whose end is above iova (may be t->nr). */
static uint32_t table_lower_bound(const struct vfu_dma_table *t, uint64_t iova)
{
	uint32_t lo = 0, hi = t->nr;

	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		const struct vfu_dma_region *r = &t->regions[mid];

		if (r->iova + r->size <= iova)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* The region containing iova, or NULL. */
static struct vfu_dma_region *table_find(struct vfu_dma_table *t,
					 uint64_t iova)
{
	uint32_t i = table_lower_bound(t, iova);

	if (i < t->nr && t->regions[i].iova <= iova)
		return &t->regions[i];
	return NULL;
}

static int region_alloc_dirty(const struct vfu_dma_table *t,
			      struct vfu_dma_region *r)
{
	uint64_t last;

	if (!r->map)
		return 0;	/* message-based: the client logs */
	r->dirty_first = r->iova / t->log_pgsize;
	last = (r->iova + r->size - 1) / t->log_pgsize;
	r->dirty_pages = last - r->dirty_first + 1;
	r->dirty = calloc(DIV_ROUND_UP(r->dirty_pages, 64), sizeof(uint64_t));
	return r->dirty ? 0 : -ENOMEM;
}

/* mmap the client's fd for [offset, offset+size), refusing a file that
 * is shorter than the mapping (touching past EOF would SIGBUS us). */
static int region_mmap(struct vfu_dma_region *r, const struct vfu_dma_map *m,
		       int fd, struct stat *st)
{
	long pgsz = sysconf(_SC_PAGESIZE);
	uint64_t aligned = m->offset & ~((uint64_t)pgsz - 1);
	uint64_t delta = m->offset - aligned, len, end;
	int prot = 0;
	void *p;

	if (fstat(fd, st) < 0)
		return -errno;
	if (check_add_overflow(m->offset, m->size, &end))
		return -EINVAL;
	if (S_ISREG(st->st_mode) && end > (uint64_t)st->st_size)
		return -EINVAL;
	if (check_add_overflow(m->size, delta, &len) || len > SIZE_MAX)
		return -EINVAL;
	if (m->flags & VFU_DMA_FLAG_READ)
		prot |= PROT_READ;
	if (m->flags & VFU_DMA_FLAG_WRITE)
		prot |= PROT_WRITE;
	if (!prot)
		prot = PROT_NONE;
	p = mmap(NULL, (size_t)len, prot, MAP_SHARED, fd, (off_t)aligned);
	if (p == MAP_FAILED)
		return -errno;
	r->map = p;
	r->map_len = (size_t)len;
	r->addr = (uint8_t *)p + delta;
	r->fd_offset = m->offset;
	return 0;
}

int vfu_dma_table_map(struct vfu_dma_table *t, const struct vfu_dma_map *m,
		      int fd)
{
	struct vfu_dma_region r = {
		.iova = m->addr, .size = m->size,
		.prot = m->flags & VFU_DMA_MAP_FLAGS_ALL, .file = -1,
	};
	struct stat st;
	uint32_t i;
	int ret;

	pthread_rwlock_wrlock(&t->lock);
	i = table_lower_bound(t, m->addr);
	if (i < t->nr && ranges_overlap(t->regions[i].iova,
					t->regions[i].size, m->addr, m->size)) {
		ret = -EEXIST;
		goto err_unlock;
	}
	if (t->nr >= t->max_maps) {
		ret = -ENOSPC;
		goto err_unlock;
	}
	if (t->nr == t->cap) {
		uint32_t ncap = t->cap ? t->cap * 2 : 16;
		struct vfu_dma_region *n;

		n = realloc(t->regions, ncap * sizeof(*n));
		if (!n) {
			ret = -ENOMEM;
			goto err_unlock;
		}
		t->regions = n;
		t->cap = ncap;
	}
	if (fd >= 0) {
		ret = region_mmap(&r, m, fd, &st);
		if (ret)
			goto err_unlock;
	}
	/* A region mapped while logging is on is logged from the start. */
	if (t->log_on) {
		ret = region_alloc_dirty(t, &r);
		if (ret)
			goto err_release;
	}
	if (fd >= 0) {
		/* fd belongs to the file table from here on. */
		r.file = file_get(t, fd, &st);
		fd = -1;
		if (r.file < 0) {
			ret = r.file;
			r.file = -1;
			goto err_release;
		}
	}
	memmove(&t->regions[i + 1], &t->regions[i],
		(t->nr - i) * sizeof(*t->regions));
	t->regions[i] = r;
	t->nr++;
	pthread_rwlock_unlock(&t->lock);
	return 0;

err_release:
	region_release(t, &r);
err_unlock:
	pthread_rwlock_unlock(&t->lock);
	close_safely(&fd);
	return ret;
}

int vfu_dma_table_unmap(struct vfu_dma_table *t, uint64_t iova, uint64_t size)
{
	struct vfu_dma_region *r;
	uint32_t i;

	/* The write lock waits for every in-flight device access. */
	pthread_rwlock_wrlock(&t->lock);
	r = table_find(t, iova);
	if (!r || r->iova != iova || r->size != size) {
		pthread_rwlock_unlock(&t->lock);
		return -ENOENT;
	}
	i = (uint32_t)(r - t->regions);
	region_release(t, r);
	memmove(&t->regions[i], &t->regions[i + 1],
		(t->nr - i - 1) * sizeof(*t->regions));
	t->nr--;
	pthread_rwlock_unlock(&t->lock);
	return 0;
}

void vfu_dma_table_unmap_all(struct vfu_dma_table *t)
{
	pthread_rwlock_wrlock(&t->lock);
	for (uint32_t i = 0; i < t->nr; i++)
		region_release(t, &t->regions[i]);
	t->nr = 0;
	pthread_rwlock_unlock(&t->lock);
}

static void log_free_locked(struct vfu_dma_table *t)
{
	for (uint32_t i = 0; i < t->nr; i++) {
		free(t->regions[i].dirty);
		t->regions[i].dirty = NULL;
	}
	t->log_on = false;
	t->log_pgsize = 0;
	t->log_nr_ranges = 0;
}

int vfu_dma_log_start(struct vfu_dma_table *t, uint64_t pgsize,
		      const struct vfu_dma_log_range *ranges, uint32_t nr)
{
	int ret = 0;

	if (nr > VFU_DMA_LOG_MAX_RANGES)
		return -E2BIG;
	pthread_rwlock_wrlock(&t->lock);
	if (t->log_on) {
		ret = -EBUSY;
		goto out_unlock;
	}
	t->log_pgsize = pgsize;
	/* ranges may be unaligned inside the message payload. */
	memcpy(t->log_ranges, ranges, nr * sizeof(*ranges));
	t->log_nr_ranges = nr;
	for (uint32_t i = 0; i < t->nr; i++) {
		ret = region_alloc_dirty(t, &t->regions[i]);
		if (ret) {
			log_free_locked(t);
			goto out_unlock;
		}
	}
	t->log_on = true;
out_unlock:
	pthread_rwlock_unlock(&t->lock);
	return ret;
}

void vfu_dma_log_stop(struct vfu_dma_table *t)
{
	pthread_rwlock_wrlock(&t->lock);
	log_free_locked(t);
	pthread_rwlock_unlock(&t->lock);
}

/* Is [iova, iova+len) inside the union of the logged ranges? */
static bool log_covers(const struct vfu_dma_table *t, uint64_t iova,
		       uint64_t len)
{
	uint64_t cur = iova, end = iova + len;
	bool progress = true;

	if (!t->log_nr_ranges)
		return true;
	/* Ranges are disjoint; extend coverage until stuck. */
	while (cur < end && progress) {
		progress = false;
		for (uint32_t i = 0; i < t->log_nr_ranges; i++) {
			const struct vfu_dma_log_range *r = &t->log_ranges[i];

			if (r->iova <= cur && cur < r->iova + r->length) {
				cur = r->iova + r->length;
				progress = true;
			}
		}
	}
	return cur >= end;
}

static void dirty_set_pages(struct vfu_dma_region *r, uint64_t pgsize,
			    uint64_t lo, uint64_t hi)
{
	for (uint64_t p = lo / pgsize; p <= (hi - 1) / pgsize; p++) {
		uint64_t bit = p - r->dirty_first;

		__atomic_fetch_or(&r->dirty[bit / 64], 1ull << (bit % 64),
				  __ATOMIC_RELAXED);
	}
}

/* Log a device write of [iova, iova+len) inside fd-backed region r.
 * Called with the read lock held. */
static void dirty_mark(struct vfu_dma_table *t, struct vfu_dma_region *r,
		       uint64_t iova, uint64_t len)
{
	uint64_t end = iova + len;

	if (!t->log_on || !r->dirty || !len)
		return;
	if (!t->log_nr_ranges) {
		dirty_set_pages(r, t->log_pgsize, iova, end);
		return;
	}
	for (uint32_t i = 0; i < t->log_nr_ranges; i++) {
		const struct vfu_dma_log_range *lr = &t->log_ranges[i];
		uint64_t lo = MAX(iova, lr->iova);
		uint64_t hi = MIN(end, lr->iova + lr->length);

		if (lo < hi)
			dirty_set_pages(r, t->log_pgsize, lo, hi);
	}
}

int vfu_dma_log_report(struct vfu_dma_table *t,
		       const struct vfu_dma_log_report *rep,
		       uint64_t *bitmap, size_t bitmap_bytes)
{
	uint64_t end = rep->iova + rep->length;
	int ret = 0;

	memset(bitmap, 0, bitmap_bytes);
	/* Exclusive: read-and-clear must not race device writes setting
	 * bits in the words we clear. */
	pthread_rwlock_wrlock(&t->lock);
	if (!t->log_on) {
		ret = -EINVAL;
		goto out_unlock;
	}
	if (!log_covers(t, rep->iova, rep->length)) {
		ret = -EINVAL;
		goto out_unlock;
	}
	for (uint32_t i = table_lower_bound(t, rep->iova); i < t->nr; i++) {
		struct vfu_dma_region *r = &t->regions[i];
		uint64_t L = t->log_pgsize;

		if (r->iova >= end)
			break;
		if (!r->dirty)
			continue;
		for (uint64_t w = 0; w < DIV_ROUND_UP(r->dirty_pages, 64); w++) {
			uint64_t word = r->dirty[w];

			while (word) {
				uint64_t b = (uint64_t)__builtin_ctzll(word);
				uint64_t page = r->dirty_first + w * 64 + b;
				uint64_t lo = page * L, hi = lo + L;
				uint64_t clo = MAX(MAX(lo, rep->iova), r->iova);
				uint64_t chi = MIN(MIN(hi, end),
						   r->iova + r->size);

				word &= word - 1;
				if (clo >= chi)
					continue;
				for (uint64_t n = (clo - rep->iova) / rep->page_size;
				     n <= (chi - 1 - rep->iova) / rep->page_size;
				     n++)
					bitmap[n / 64] |= 1ull << (n % 64);
				/* Clear only log pages wholly reported, so a
				 * straddling page is not lost for the other
				 * side. */
				if (lo >= rep->iova && hi <= end)
					r->dirty[w] &= ~(1ull << b);
			}
		}
	}
out_unlock:
	pthread_rwlock_unlock(&t->lock);
	return ret;
}

/*
 * Device DMA
 */

/* Check that [iova, iova+len) is mapped with prot throughout. */
static int dma_check_locked(struct vfu_dma_table *t, uint64_t iova,
			    uint64_t len, uint32_t prot)
{
	uint64_t cur = iova, end;

	if (check_add_overflow(iova, len, &end))
		return -EFAULT;
	while (cur < end) {
		struct vfu_dma_region *r = table_find(t, cur);

		if (!r)
			return -EFAULT;
		if ((r->prot & prot) != prot)
			return -EACCES;
		cur = r->iova + r->size;
	}
	return 0;
}

/* Wait for the reply to a DMA message; called with srv->lock held. */
static int dma_msg_wait(struct vfu_server *srv, struct vfu_dma_waiter *w)
{
	struct timespec ts;
	int ret = 0;

	clock_gettime(CLOCK_MONOTONIC, &ts);	/* srv->cond's clock */
	ts.tv_sec += VFU_SERVER_DMA_MSG_TIMEOUT_MS / 1000;
	while (!w->done && srv->conn) {
		if (pthread_cond_timedwait(&srv->cond, &srv->lock, &ts)) {
			ret = -ETIMEDOUT;
			break;
		}
	}
	if (!w->done && !ret)
		ret = -ENOTCONN;
	return ret;
}

static void waiter_unlink(struct vfu_server *srv, struct vfu_dma_waiter *w)
{
	for (struct vfu_dma_waiter **pp = &srv->waiters; *pp;
	     pp = &(*pp)->next) {
		if (*pp == w) {
			*pp = w->next;
			return;
		}
	}
}

/* One DMA_READ or DMA_WRITE exchange of at most xfer_max bytes. */
static int dma_msg_one(struct vfu_server *srv, struct vfu_conn *conn,
		       uint16_t cmd, uint64_t iova, void *buf, size_t len)
{
	struct vfu_dma_access acc = { .addr = iova, .count = len };
	struct vfu_dma_waiter w = { .cmd = cmd };
	struct vfu_hdr h = { .cmd = cmd, .flags = VFU_F_TYPE_COMMAND };
	struct iovec iov[2] = {
		{ .iov_base = &acc, .iov_len = sizeof(acc) },
		{ .iov_base = buf, .iov_len = len },
	};
	struct vfu_dma_access got;
	int ret;

	pthread_mutex_lock(&srv->lock);
	w.msg_id = srv->next_msg_id++;
	w.next = srv->waiters;
	srv->waiters = &w;
	pthread_mutex_unlock(&srv->lock);

	h.msg_id = w.msg_id;
	ret = vfu_conn_send(conn, &h, iov, cmd == VFU_CMD_DMA_WRITE ? 2 : 1,
			    NULL, 0);

	pthread_mutex_lock(&srv->lock);
	if (!ret)
		ret = dma_msg_wait(srv, &w);
	waiter_unlink(srv, &w);
	pthread_mutex_unlock(&srv->lock);
	if (ret)
		goto out_release;

	/* The client is not trusted: check the reply before using it. */
	if (w.reply.hdr.flags & VFU_F_ERROR) {
		ret = w.reply.hdr.error_no ? -(int)MIN(w.reply.hdr.error_no,
						       VFU_MAX_ERRNO) : -EIO;
		goto out_release;
	}
	if (w.reply.payload_len < sizeof(got)) {
		ret = -EIO;
		goto out_release;
	}
	memcpy(&got, w.reply.payload, sizeof(got));
	if (got.addr != iova || got.count != len) {
		ret = -EIO;
		goto out_release;
	}
	if (cmd == VFU_CMD_DMA_READ) {
		if (w.reply.payload_len != sizeof(got) + len) {
			ret = -EIO;
			goto out_release;
		}
		memcpy(buf, w.reply.payload + sizeof(got), len);
	}
out_release:
	vfu_msg_release(&w.reply);
	return ret;
}

/* DMA through messages, chunked to what the client accepts. */
static int dma_msg_xfer(struct vfu_server *srv, uint16_t cmd, uint64_t iova,
			uint8_t *buf, size_t len)
{
	struct vfu_conn *conn;
	size_t chunk;
	int ret = 0;

	pthread_mutex_lock(&srv->lock);
	conn = srv->conn;
	if (!conn || !srv->negotiated) {
		pthread_mutex_unlock(&srv->lock);
		return -ENOTCONN;
	}
	/* Only the dispatcher could deliver the reply we would wait for. */
	if (pthread_equal(pthread_self(), srv->dispatcher)) {
		pthread_mutex_unlock(&srv->lock);
		return -EDEADLK;
	}
	srv->conn_users++;
	chunk = srv->xfer_max;
	pthread_mutex_unlock(&srv->lock);

	while (len && !ret) {
		size_t n = MIN(len, chunk);

		ret = dma_msg_one(srv, conn, cmd, iova, buf, n);
		iova += n;
		buf += n;
		len -= n;
	}

	pthread_mutex_lock(&srv->lock);
	srv->conn_users--;
	pthread_cond_broadcast(&srv->cond);
	pthread_mutex_unlock(&srv->lock);
	return ret;
}

static int dma_access(struct vfu_server *srv, uint64_t iova, uint8_t *buf,
		      size_t len, bool is_write)
{
	struct vfu_dma_table *t = &srv->dma;
	uint32_t prot = is_write ? VFU_DMA_FLAG_WRITE : VFU_DMA_FLAG_READ;
	int ret;

	FERRY_TRACE(server_dma, iova, len, is_write);
	if (!len)
		return 0;
	pthread_rwlock_rdlock(&t->lock);
	ret = dma_check_locked(t, iova, len, prot);
	pthread_rwlock_unlock(&t->lock);
	if (ret)
		return ret;

	/* Piece by piece, one region at a time; the lock is not held
	 * across message round trips. */
	while (len) {
		struct vfu_dma_region *r;
		uint64_t off;
		size_t n;

		pthread_rwlock_rdlock(&t->lock);
		r = table_find(t, iova);
		if (!r || (r->prot & prot) != prot) {
			/* Unmapped under us since the check. */
			pthread_rwlock_unlock(&t->lock);
			return r ? -EACCES : -EFAULT;
		}
		off = iova - r->iova;
		n = (size_t)MIN((uint64_t)len, r->size - off);
		if (r->map) {
			if (is_write) {
				memcpy(r->addr + off, buf, n);
				dirty_mark(t, r, iova, n);
			} else {
				memcpy(buf, r->addr + off, n);
			}
			pthread_rwlock_unlock(&t->lock);
		} else {
			pthread_rwlock_unlock(&t->lock);
			ret = dma_msg_xfer(srv, is_write ? VFU_CMD_DMA_WRITE :
					   VFU_CMD_DMA_READ, iova, buf, n);
			if (ret)
				return ret;
		}
		iova += n;
		buf += n;
		len -= n;
	}
	return 0;
}

int vfu_server_dma_read(struct vfu_server *srv, uint64_t iova, void *buf,
			size_t len)
{
	return dma_access(srv, iova, buf, len, false);
}

int vfu_server_dma_write(struct vfu_server *srv, uint64_t iova,
			 const void *buf, size_t len)
{
	/* The message path sends from buf and never writes into it. */
	return dma_access(srv, iova, (uint8_t *)buf, len, true);
}

uint64_t vfu_server_dma_log_pgsize(struct vfu_server *srv)
{
	uint64_t pgsize;

	pthread_rwlock_rdlock(&srv->dma.lock);
	pgsize = srv->dma.log_on ? srv->dma.log_pgsize : 0;
	pthread_rwlock_unlock(&srv->dma.lock);
	return pgsize;
}
