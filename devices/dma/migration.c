// SPDX-License-Identifier: BSD-3-Clause
/*
 * ferry-dma migration (v2: STOP_COPY | P2P | PRE_COPY): the per-arc state
 * changes, the saving stream and the resuming parser. The stream format
 * is documented in docs/ferry-dma.md:
 *
 *   stream header (48 bytes, own CRC)
 *   records: { type, len, offset, seq, crc } + len bytes
 *     DEVMEM  a chunk of device memory at offset (pre-copy and stop-copy)
 *     STATE   registers, in-flight descriptor, MSI-X, config (stop-copy)
 *     END     no payload; nothing may follow
 *
 * The resume side trusts nothing: every length is checked before bytes
 * are accumulated, every record CRC and sequence number is verified, the
 * device state is validated before it is applied, and the first error
 * is sticky so that RESUMING->STOP fails and only a reset recovers.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dma_internal.h"
#include "ferry/crc32c.h"
#include "ferry/log.h"
#include "ferry/util.h"

#define FDMA_MIG_HDR_CRC_LEN	44u	/* bytes of the header before crc */

struct fdma_mig_hdr {
	uint64_t magic;
	uint16_t major;
	uint16_t minor;
	uint32_t hdr_len;
	uint64_t devmem_size;
	uint32_t msix_vectors;
	uint32_t chunk_size;
	uint32_t vendor_device;
	uint32_t flags;
	uint32_t reserved;
	uint32_t crc;
} __attribute__((packed));

enum {
	FDMA_REC_DEVMEM	= 1,
	FDMA_REC_STATE	= 2,
	FDMA_REC_END	= 3,
};

struct fdma_mig_rec {
	uint32_t type;
	uint32_t len;
	uint64_t offset;
	uint32_t seq;
	uint32_t crc;	/* over this header with crc = 0, then the payload */
} __attribute__((packed));

_Static_assert(sizeof(struct fdma_mig_hdr) == 48, "stream header");
_Static_assert(sizeof(struct fdma_mig_rec) == 24, "record header");
_Static_assert(FDMA_MIG_HDR_CRC_LEN ==
	       offsetof(struct fdma_mig_hdr, crc), "header crc offset");

#define REC_HDR		sizeof(struct fdma_mig_rec)
#define REC_PAYLOAD_MAX	MAX((size_t)FERRY_DMA_MIG_CHUNK, \
			    sizeof(struct fdma_mig_state))
#define REC_CHUNK_BYTES	((uint64_t)REC_HDR + FERRY_DMA_MIG_CHUNK)
#define REC_TAIL_BYTES	((uint64_t)2 * REC_HDR + sizeof(struct fdma_mig_state))

static uint32_t vendor_device(void)
{
	return FERRY_DMA_VENDOR_ID | ((uint32_t)FERRY_DMA_DEVICE_ID << 16);
}

static bool state_is_running(enum vfu_mig_state s)
{
	return s == VFU_MIG_STATE_RUNNING || s == VFU_MIG_STATE_RUNNING_P2P ||
	       s == VFU_MIG_STATE_PRE_COPY || s == VFU_MIG_STATE_PRE_COPY_P2P;
}

static bool is_saving(enum vfu_mig_state s)
{
	return s == VFU_MIG_STATE_PRE_COPY || s == VFU_MIG_STATE_PRE_COPY_P2P ||
	       s == VFU_MIG_STATE_STOP_COPY;
}

bool fdma_is_running(const struct ferry_dma *d)
{
	return state_is_running(d->mig_state);
}

/* ---- saving ---------------------------------------------------------- */

static void save_end(struct ferry_dma *d)
{
	free(d->save.out);
	memset(&d->save, 0, sizeof(d->save));
}

static int save_begin(struct ferry_dma *d, bool stop_copy)
{
	save_end(d);
	d->save.out = malloc(REC_HDR + REC_PAYLOAD_MAX);
	if (!d->save.out)
		return -ENOMEM;
	d->save.active = true;
	d->save.stop_copy = stop_copy;
	d->save.initial_total = sizeof(struct fdma_mig_hdr) +
				d->nr_chunks * REC_CHUNK_BYTES;
	/* Everything written before this point is in the initial pass. */
	fdma_devmem_clear_all(d);
	return 0;
}

static void encode_hdr(struct ferry_dma *d)
{
	struct fdma_mig_hdr h = {
		.magic = FERRY_DMA_MIG_MAGIC,
		.major = FERRY_DMA_MIG_MAJOR,
		.minor = FERRY_DMA_MIG_MINOR,
		.hdr_len = sizeof(h),
		.devmem_size = d->cfg.devmem_size,
		.msix_vectors = d->cfg.msix_vectors,
		.chunk_size = FERRY_DMA_MIG_CHUNK,
		.vendor_device = vendor_device(),
	};

	h.crc = crc32c(&h, FDMA_MIG_HDR_CRC_LEN);
	memcpy(d->save.out, &h, sizeof(h));
	d->save.out_len = sizeof(h);
	d->save.out_pos = 0;
}

static uint32_t rec_crc(const struct fdma_mig_rec *rec, const void *payload)
{
	struct fdma_mig_rec tmp = *rec;
	uint32_t crc;

	tmp.crc = 0;
	crc = crc32c_update(CRC32C_INIT, &tmp, sizeof(tmp));
	crc = crc32c_update(crc, payload, rec->len);
	return crc32c_final(crc);
}

/* Frame the payload already placed at out + REC_HDR. */
static void encode_rec(struct ferry_dma *d, uint32_t type, uint32_t len,
		       uint64_t offset)
{
	struct fdma_mig_rec rec = {
		.type = type,
		.len = len,
		.offset = offset,
		.seq = d->save.seq++,
	};

	rec.crc = rec_crc(&rec, d->save.out + REC_HDR);
	memcpy(d->save.out, &rec, sizeof(rec));
	d->save.out_len = REC_HDR + len;
	d->save.out_pos = 0;
}

static void encode_chunk(struct ferry_dma *d, uint64_t chunk)
{
	uint64_t off = chunk * FERRY_DMA_MIG_CHUNK;

	memcpy(d->save.out + REC_HDR, d->devmem + off, FERRY_DMA_MIG_CHUNK);
	encode_rec(d, FDMA_REC_DEVMEM, FERRY_DMA_MIG_CHUNK, off);
}

void fdma_state_capture(struct ferry_dma *d, struct fdma_mig_state *s)
{
	const struct fdma_regs *r = &d->regs;
	const struct fdma_inflight *f = &d->inflight;

	memset(s, 0, sizeof(*s));
	s->ctrl = r->ctrl;
	s->ring_size = r->ring_size;
	s->ring_base = r->ring_base;
	s->ring_head = r->ring_head;
	s->ring_tail = r->ring_tail;
	s->irq_status = r->irq_status;
	s->irq_mask = r->irq_mask;
	s->irq_pending = r->irq_pending;
	s->errors = r->errors;
	s->completed = r->completed;
	s->bytes = r->bytes;
	s->irqs_raised = r->irqs_raised;
	s->running_crc = r->running_crc;
	s->scratch = r->scratch;
	memcpy(s->latch, r->latch, sizeof(s->latch));
	s->halted = r->halted;
	s->inflight_valid = f->valid;
	s->inflight_status = f->status;
	s->inflight_crc = f->crc;
	s->inflight_run_crc = f->run_crc;
	s->inflight_done = f->done;
	s->inflight_desc = f->desc;
	s->msix_pba = d->msix_pba;
	memcpy(s->msix_table, d->msix_table, sizeof(s->msix_table));
	memcpy(s->config, d->config, sizeof(s->config));
	s->resets = d->resets;
}

/* Produce the next unit of the stream into save.out; false: none now. */
static bool save_next(struct ferry_dma *d)
{
	struct fdma_save *s = &d->save;
	uint64_t i;

	if (!s->hdr_done) {
		encode_hdr(d);
		s->hdr_done = true;
		s->out_initial = true;
		return true;
	}
	if (s->init_cursor < d->nr_chunks) {
		uint64_t c = s->init_cursor++;

		/* Clear before copying: a racing write re-marks it. */
		fdma_devmem_test_clear(d, c);
		encode_chunk(d, c);
		s->out_initial = true;
		return true;
	}
	for (i = 0; i < d->nr_chunks; i++) {
		uint64_t c = (s->dirty_cursor + i) % d->nr_chunks;

		if (fdma_devmem_test_clear(d, c)) {
			s->dirty_cursor = c + 1;
			encode_chunk(d, c);
			s->out_initial = false;
			return true;
		}
	}
	if (!s->stop_copy)
		return false;
	if (!s->state_done) {
		fdma_state_capture(d,
				   (struct fdma_mig_state *)(s->out + REC_HDR));
		encode_rec(d, FDMA_REC_STATE, sizeof(struct fdma_mig_state), 0);
		s->state_done = true;
		s->out_initial = false;
		return true;
	}
	if (!s->end_done) {
		encode_rec(d, FDMA_REC_END, 0, 0);
		s->end_done = true;
		s->out_initial = false;
		return true;
	}
	return false;
}

static ssize_t fdma_read_data(void *dev, void *buf, size_t len)
{
	struct ferry_dma *d = dev;
	struct fdma_save *s = &d->save;
	size_t copied = 0;

	pthread_mutex_lock(&d->lock);
	if (!s->active) {
		pthread_mutex_unlock(&d->lock);
		return -EINVAL;
	}
	while (copied < len) {
		size_t n;

		if (s->out_pos == s->out_len && !save_next(d))
			break;
		n = MIN(len - copied, s->out_len - s->out_pos);
		memcpy((uint8_t *)buf + copied, s->out + s->out_pos, n);
		s->out_pos += n;
		copied += n;
		if (s->out_initial)
			s->initial_read += n;
	}
	pthread_mutex_unlock(&d->lock);
	return (ssize_t)copied;
}

static uint64_t out_left(const struct fdma_save *s)
{
	return s->out_len - s->out_pos;
}

static int fdma_precopy_info(void *dev, struct vfu_feature_precopy_info *info)
{
	struct ferry_dma *d = dev;
	struct fdma_save *s = &d->save;
	uint64_t dirty;

	pthread_mutex_lock(&d->lock);
	if (!s->active || (d->mig_state != VFU_MIG_STATE_PRE_COPY &&
			   d->mig_state != VFU_MIG_STATE_PRE_COPY_P2P)) {
		pthread_mutex_unlock(&d->lock);
		return -EINVAL;
	}
	memset(info, 0, sizeof(*info));
	info->initial_bytes = s->initial_total - s->initial_read;
	dirty = fdma_devmem_count_dirty(d, s->init_cursor) * REC_CHUNK_BYTES;
	if (!s->out_initial)
		dirty += out_left(s);
	info->dirty_bytes = dirty;
	pthread_mutex_unlock(&d->lock);
	return 0;
}

static int fdma_data_size(void *dev, uint64_t *stop_copy_length)
{
	struct ferry_dma *d = dev;
	struct fdma_save *s = &d->save;
	uint64_t n;

	pthread_mutex_lock(&d->lock);
	if (!s->active) {
		n = sizeof(struct fdma_mig_hdr) +
		    d->nr_chunks * REC_CHUNK_BYTES + REC_TAIL_BYTES;
	} else {
		n = out_left(s);
		if (!s->hdr_done)
			n += sizeof(struct fdma_mig_hdr);
		n += (d->nr_chunks - s->init_cursor +
		      fdma_devmem_count_dirty(d, s->init_cursor)) *
		     REC_CHUNK_BYTES;
		if (!s->state_done)
			n += REC_TAIL_BYTES;
	}
	*stop_copy_length = n;
	pthread_mutex_unlock(&d->lock);
	return 0;
}

/* ---- resuming -------------------------------------------------------- */

static void load_end(struct ferry_dma *d)
{
	free(d->load.in);
	free(d->load.state);
	memset(&d->load, 0, sizeof(d->load));
}

static int load_begin(struct ferry_dma *d)
{
	load_end(d);
	d->load.in = malloc(REC_HDR + REC_PAYLOAD_MAX);
	d->load.state = malloc(sizeof(struct fdma_mig_state));
	if (!d->load.in || !d->load.state) {
		load_end(d);
		return -ENOMEM;
	}
	d->load.active = true;
	d->load.in_need = sizeof(struct fdma_mig_hdr);
	return 0;
}

static int load_fail(struct ferry_dma *d)
{
	d->load.err = -EINVAL;
	return -EINVAL;
}

static int load_hdr(struct ferry_dma *d)
{
	struct fdma_mig_hdr h;
	uint32_t crc;

	memcpy(&h, d->load.in, sizeof(h));
	if (h.magic != FERRY_DMA_MIG_MAGIC) {
		pr_err("%s: resume: bad stream magic 0x%016" PRIx64
		       " (expected 0x%016" PRIx64 ")", d->name,
		       h.magic, (uint64_t)FERRY_DMA_MIG_MAGIC);
		return load_fail(d);
	}
	if (h.major != FERRY_DMA_MIG_MAJOR || h.minor > FERRY_DMA_MIG_MINOR) {
		pr_err("%s: resume: unsupported stream version %u.%u "
		       "(expected %u.x with x <= %u)", d->name, h.major,
		       h.minor, FERRY_DMA_MIG_MAJOR, FERRY_DMA_MIG_MINOR);
		return load_fail(d);
	}
	if (h.hdr_len != sizeof(h)) {
		pr_err("%s: resume: header length %u (expected %zu)",
		       d->name, h.hdr_len, sizeof(h));
		return load_fail(d);
	}
	crc = crc32c(&h, FDMA_MIG_HDR_CRC_LEN);
	if (h.crc != crc) {
		pr_err("%s: resume: header CRC 0x%08x (computed 0x%08x)",
		       d->name, h.crc, crc);
		return load_fail(d);
	}
	if (h.vendor_device != vendor_device()) {
		pr_err("%s: resume: stream is for device 0x%08x (expected "
		       "0x%08x)", d->name, h.vendor_device, vendor_device());
		return load_fail(d);
	}
	if (h.devmem_size != d->cfg.devmem_size) {
		pr_err("%s: resume: device memory size mismatch: stream %"
		       PRIu64 " bytes, this device %" PRIu64, d->name,
		       h.devmem_size, d->cfg.devmem_size);
		return load_fail(d);
	}
	if (h.msix_vectors != d->cfg.msix_vectors) {
		pr_err("%s: resume: MSI-X vector count mismatch: stream %u, "
		       "this device %u", d->name, h.msix_vectors,
		       d->cfg.msix_vectors);
		return load_fail(d);
	}
	if (h.chunk_size != FERRY_DMA_MIG_CHUNK || h.flags || h.reserved) {
		pr_err("%s: resume: chunk size %u flags 0x%x (expected %u, 0)",
		       d->name, h.chunk_size, h.flags, FERRY_DMA_MIG_CHUNK);
		return load_fail(d);
	}
	return 0;
}

/* Check a record header as soon as it is complete: before its payload
 * is accumulated, its length must be exactly what its type allows. */
static int load_rec_hdr(struct ferry_dma *d, const struct fdma_mig_rec *rec)
{
	uint32_t want;

	if (rec->seq != d->load.next_seq) {
		pr_err("%s: resume: record sequence %u (expected %u)",
		       d->name, rec->seq, d->load.next_seq);
		return load_fail(d);
	}
	switch (rec->type) {
	case FDMA_REC_DEVMEM:
		want = FERRY_DMA_MIG_CHUNK;
		if (rec->len == want &&
		    IS_ALIGNED(rec->offset, (uint64_t)FERRY_DMA_MIG_CHUNK) &&
		    range_within(rec->offset, rec->len, d->cfg.devmem_size))
			return 0;
		break;
	case FDMA_REC_STATE:
		want = sizeof(struct fdma_mig_state);
		if (rec->len == want && rec->offset == 0 &&
		    !d->load.have_state)
			return 0;
		break;
	case FDMA_REC_END:
		want = 0;
		if (rec->len == 0 && rec->offset == 0 && d->load.have_state)
			return 0;
		break;
	default:
		pr_err("%s: resume: record %u has unknown type %u", d->name,
		       rec->seq, rec->type);
		return load_fail(d);
	}
	pr_err("%s: resume: record %u type %u: length %u offset 0x%" PRIx64
	       " (expected length %u%s%s)", d->name, rec->seq, rec->type,
	       rec->len, rec->offset, want,
	       rec->type == FDMA_REC_STATE && d->load.have_state ?
	       ", one device state" : "",
	       rec->type == FDMA_REC_END && !d->load.have_state ?
	       ", device state before the end" : "");
	return load_fail(d);
}

int fdma_state_check(struct ferry_dma *d, const struct fdma_mig_state *s)
{
	struct ferry_dma_desc desc = s->inflight_desc;
	uint16_t vendor, device;

	memcpy(&vendor, &s->config[0], 2);
	memcpy(&device, &s->config[2], 2);
	if (vendor != FERRY_DMA_VENDOR_ID || device != FERRY_DMA_DEVICE_ID) {
		pr_err("%s: resume: config identity %04x:%04x (expected "
		       "%04x:%04x)", d->name, vendor, device,
		       FERRY_DMA_VENDOR_ID, FERRY_DMA_DEVICE_ID);
		return -EINVAL;
	}
	/* The interrupt mode is not in the stream: the capability list
	 * tells it (none, MSI or MSI-X at the one offset we use). */
	if (s->config[0x34] != d->config[0x34] ||
	    (d->config[0x34] &&
	     s->config[FDMA_MSIX_CAP_OFF] != d->config[FDMA_MSIX_CAP_OFF])) {
		pr_err("%s: resume: interrupt capability 0x%02x at 0x%02x, "
		       "this device has 0x%02x at 0x%02x (same --irq-mode on "
		       "both sides?)", d->name, s->config[FDMA_MSIX_CAP_OFF],
		       s->config[0x34], d->config[FDMA_MSIX_CAP_OFF],
		       d->config[0x34]);
		return -EINVAL;
	}
	if (s->halted > 1 || s->inflight_valid > 1 ||
	    (s->msix_pba >> fdma_irq_count(d)) ||
	    (d->cfg.irq_mode == FERRY_DMA_IRQ_MODE_INTX && s->msix_pba)) {
		pr_err("%s: resume: device state flags out of range "
		       "(halted %u in-flight %u pba 0x%x)", d->name,
		       s->halted, s->inflight_valid, s->msix_pba);
		return -EINVAL;
	}
	if (!s->inflight_valid)
		return 0;
	if (s->inflight_status != 0 &&
	    s->inflight_status != FERRY_DMA_ST_EFAULT &&
	    s->inflight_status != FERRY_DMA_ST_EINVAL) {
		pr_err("%s: resume: in-flight status %d invalid", d->name,
		       s->inflight_status);
		return -EINVAL;
	}
	/* The engine trusts a descriptor it has checked; a restored one
	 * must pass the same check before the engine sees it. */
	if (s->inflight_status == 0 &&
	    fdma_desc_check(d, &desc) != 0) {
		pr_err("%s: resume: in-flight descriptor invalid (op %u len %"
		       PRIu64 ")", d->name, s->inflight_desc.op,
		       s->inflight_desc.len);
		return -EINVAL;
	}
	if (s->inflight_done > s->inflight_desc.len) {
		pr_err("%s: resume: in-flight progress %" PRIu64 " beyond "
		       "length %" PRIu64, d->name, s->inflight_done,
		       s->inflight_desc.len);
		return -EINVAL;
	}
	/* A failed descriptor only waits for its completion (the engine
	 * sets done = len with the status); any progress left to make
	 * would move data for a descriptor that was never checked. */
	if (s->inflight_status != 0 &&
	    s->inflight_done != s->inflight_desc.len) {
		pr_err("%s: resume: in-flight status %d with %" PRIu64 " of %"
		       PRIu64 " bytes left", d->name, s->inflight_status,
		       s->inflight_desc.len - s->inflight_done,
		       s->inflight_desc.len);
		return -EINVAL;
	}
	return 0;
}

static int load_rec(struct ferry_dma *d)
{
	struct fdma_mig_rec rec;
	const uint8_t *payload = d->load.in + REC_HDR;
	uint32_t crc;

	memcpy(&rec, d->load.in, sizeof(rec));
	crc = rec_crc(&rec, payload);
	if (crc != rec.crc) {
		pr_err("%s: resume: record %u (type %u) CRC 0x%08x, computed "
		       "0x%08x", d->name, rec.seq, rec.type, rec.crc, crc);
		return load_fail(d);
	}
	switch (rec.type) {
	case FDMA_REC_DEVMEM:
		memcpy(d->devmem + rec.offset, payload, rec.len);
		break;
	case FDMA_REC_STATE:
		if (fdma_state_check(d, (const struct fdma_mig_state *)payload))
			return load_fail(d);
		memcpy(d->load.state, payload, rec.len);
		d->load.have_state = true;
		break;
	case FDMA_REC_END:
		d->load.complete = true;
		break;
	}
	d->load.next_seq++;
	d->load.in_len = 0;
	d->load.in_need = REC_HDR;
	return 0;
}

static void load_latency(struct ferry_dma *d)
{
	struct timespec ts = {
		.tv_sec = d->cfg.load_latency_ms / 1000,
		.tv_nsec = (long)(d->cfg.load_latency_ms % 1000) * 1000000L,
	};

	if (!d->cfg.load_latency_ms)
		return;
	/* Stands for a device allocating resources for the incoming
	 * state; nothing else waits on the lock in RESUMING. */
	pthread_mutex_unlock(&d->lock);
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
	pthread_mutex_lock(&d->lock);
}

/* One completed unit in load.in: the header, a record header, or a
 * whole record. */
static int load_unit(struct ferry_dma *d)
{
	struct fdma_load *l = &d->load;
	struct fdma_mig_rec rec;
	int ret;

	if (!l->hdr_done) {
		ret = load_hdr(d);
		if (ret)
			return ret;
		l->hdr_done = true;
		l->in_len = 0;
		l->in_need = REC_HDR;
		load_latency(d);
		return 0;
	}
	if (l->in_need == REC_HDR) {
		memcpy(&rec, l->in, sizeof(rec));
		ret = load_rec_hdr(d, &rec);
		if (ret)
			return ret;
		if (rec.len) {
			l->in_need = REC_HDR + rec.len;
			return 0;
		}
	}
	return load_rec(d);
}

static ssize_t fdma_write_data(void *dev, const void *buf, size_t len)
{
	struct ferry_dma *d = dev;
	struct fdma_load *l = &d->load;
	const uint8_t *p = buf;
	size_t pos = 0;
	int ret = 0;

	pthread_mutex_lock(&d->lock);
	if (!l->active) {
		ret = -EINVAL;
		goto out_unlock;
	}
	if (l->err) {
		ret = l->err;
		goto out_unlock;
	}
	while (pos < len) {
		size_t n;

		if (l->complete) {
			pr_err("%s: resume: %zu bytes after the end record "
			       "(stream offset %" PRIu64 ")", d->name,
			       len - pos, l->total);
			ret = load_fail(d);
			goto out_unlock;
		}
		n = MIN(len - pos, l->in_need - l->in_len);
		memcpy(l->in + l->in_len, p + pos, n);
		l->in_len += n;
		l->total += n;
		pos += n;
		if (l->in_len < l->in_need)
			break;
		ret = load_unit(d);
		if (ret)
			goto out_unlock;
	}
out_unlock:
	pthread_mutex_unlock(&d->lock);
	return ret ? ret : (ssize_t)len;
}

void fdma_state_apply(struct ferry_dma *d, const struct fdma_mig_state *s)
{
	struct fdma_regs *r = &d->regs;
	struct fdma_inflight *f = &d->inflight;
	unsigned int i;

	r->ctrl = s->ctrl & FERRY_DMA_CTRL_ENABLE;
	r->ring_size = s->ring_size;
	r->ring_base = s->ring_base;
	r->ring_head = s->ring_head;
	r->ring_tail = s->ring_tail;
	r->irq_status = s->irq_status;
	r->irq_mask = s->irq_mask;
	r->irq_pending = s->irq_pending;
	r->errors = s->errors;
	r->completed = s->completed;
	r->bytes = s->bytes;
	r->irqs_raised = s->irqs_raised;
	r->running_crc = s->running_crc;
	r->scratch = s->scratch;
	memcpy(r->latch, s->latch, sizeof(r->latch));
	r->halted = s->halted;
	f->valid = s->inflight_valid;
	f->status = s->inflight_status;
	f->crc = s->inflight_crc;
	f->run_crc = s->inflight_run_crc;
	f->done = s->inflight_done;
	f->desc = s->inflight_desc;
	d->msix_pba = s->msix_pba;
	d->resets = s->resets;
	memcpy(d->msix_table, s->msix_table, sizeof(d->msix_table));
	/* Only what the guest could have written; identity stays ours. */
	for (i = 0; i < FDMA_CONFIG_SAVED; i++) {
		uint8_t wm = d->config_wmask[i];

		d->config[i] = (uint8_t)((d->config[i] & ~wm) |
					 (s->config[i] & wm));
	}
}

static int load_finish(struct ferry_dma *d)
{
	struct fdma_load *l = &d->load;

	if (l->err) {
		pr_err("%s: resume: refusing RESUMING->STOP after a bad "
		       "stream (reset the device to recover)", d->name);
		return l->err;
	}
	if (!l->complete) {
		pr_err("%s: resume: incomplete stream: %" PRIu64 " bytes, "
		       "%u records, no end record", d->name, l->total,
		       l->next_seq);
		l->err = -EINVAL;
		return -EINVAL;
	}
	fdma_state_apply(d, (const struct fdma_mig_state *)l->state);
	load_end(d);
	fdma_devmem_clear_all(d);
	return 0;
}

/* ---- state machine ------------------------------------------------- */

static int fdma_set_state(void *dev, enum vfu_mig_state from,
			  enum vfu_mig_state to)
{
	struct ferry_dma *d = dev;
	int ret = 0;

	pthread_mutex_lock(&d->lock);
	if (from != d->mig_state)
		pr_warn("%s: migration arc %s->%s but device is in %s",
			d->name, vfu_mig_state_name(from),
			vfu_mig_state_name(to),
			vfu_mig_state_name(d->mig_state));

	/* Data sessions: saving starts on entering the saving group and
	 * ends on leaving it; resuming likewise. */
	if ((to == VFU_MIG_STATE_PRE_COPY ||
	     to == VFU_MIG_STATE_PRE_COPY_P2P) && !is_saving(from))
		ret = save_begin(d, false);
	else if (to == VFU_MIG_STATE_STOP_COPY && from == VFU_MIG_STATE_STOP)
		ret = save_begin(d, true);
	else if (to == VFU_MIG_STATE_STOP_COPY)
		d->save.stop_copy = true;
	else if (is_saving(from) && !is_saving(to))
		save_end(d);
	else if (to == VFU_MIG_STATE_RESUMING)
		ret = load_begin(d);
	else if (from == VFU_MIG_STATE_RESUMING)
		ret = load_finish(d);
	if (ret)
		goto out_unlock;

	d->mig_state = to;
	if (state_is_running(from) && !state_is_running(to)) {
		/* Finish the current slice; the descriptor stays in flight. */
		fdma_engine_quiesce(d);
	} else if (!state_is_running(from) && state_is_running(to)) {
		fdma_irq_flush(d);
		fdma_engine_kick(d);
	}
out_unlock:
	pthread_mutex_unlock(&d->lock);
	return ret;
}

bool fdma_mig_session_open(const struct ferry_dma *d)
{
	return d->save.active || d->load.active;
}

void fdma_mig_reset(struct ferry_dma *d)
{
	save_end(d);
	load_end(d);
	d->mig_state = VFU_MIG_STATE_RUNNING;
}

const struct vfu_mig_ops fdma_mig_ops = {
	.flags = VFU_MIGRATION_STOP_COPY | VFU_MIGRATION_P2P |
		 VFU_MIGRATION_PRE_COPY,
	.set_state = fdma_set_state,
	.read_data = fdma_read_data,
	.write_data = fdma_write_data,
	.precopy_info = fdma_precopy_info,
	.data_size = fdma_data_size,
};

/* --no-precopy: the same device, saved only once stopped. */
const struct vfu_mig_ops fdma_mig_ops_stop_copy = {
	.flags = VFU_MIGRATION_STOP_COPY | VFU_MIGRATION_P2P,
	.set_state = fdma_set_state,
	.read_data = fdma_read_data,
	.write_data = fdma_write_data,
	.data_size = fdma_data_size,
};
