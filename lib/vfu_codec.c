/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * vfio-user request validation (see vfu_codec.h). Every function copies
 * the fixed part out of the payload with memcpy only after checking the
 * payload is long enough, so unaligned or short input is never read past.
 */
#include <errno.h>
#include <string.h>

#include "ferry/util.h"
#include "ferry/vfu_codec.h"

/* Fixed-size request: exactly sz bytes, no fds. */
static int codec_fixed(const void *p, size_t len, size_t nr_fds, size_t sz,
		       void *out)
{
	if (len != sz || nr_fds)
		return -EINVAL;
	memcpy(out, p, sz);
	return 0;
}

static bool region_present(const struct vfu_codec_limits *lim, uint32_t index)
{
	return index < VFU_PCI_NUM_REGIONS && lim->region_size[index];
}

int vfu_codec_version(const void *p, size_t len, size_t nr_fds,
		      struct vfu_version *out, const char **json,
		      size_t *json_len)
{
	if (len < sizeof(*out) || nr_fds)
		return -EINVAL;
	memcpy(out, p, sizeof(*out));
	*json = NULL;
	*json_len = len - sizeof(*out);
	if (*json_len) {
		/* The caps parser checks NUL placement and the size limit. */
		if (*json_len > VFU_MAX_JSON_LEN)
			return -EINVAL;
		*json = (const char *)p + sizeof(*out);
	}
	return 0;
}

int vfu_codec_dma_map(const void *p, size_t len, size_t nr_fds,
		      const struct vfu_codec_limits *lim,
		      struct vfu_dma_map *out)
{
	uint64_t end;

	if (len != sizeof(*out) || nr_fds > 1)
		return -EINVAL;
	memcpy(out, p, sizeof(*out));
	if (out->argsz < sizeof(*out))
		return -EINVAL;
	if (out->flags & ~VFU_DMA_MAP_FLAGS_ALL)
		return -EINVAL;
	if (!out->size || out->size > lim->max_dma_size)
		return -EINVAL;
	if (check_add_overflow(out->addr, out->size, &end))
		return -EINVAL;
	if (nr_fds && check_add_overflow(out->offset, out->size, &end))
		return -EINVAL;
	return 0;
}

int vfu_codec_dma_unmap(const void *p, size_t len, size_t nr_fds,
			struct vfu_dma_unmap *out)
{
	uint64_t end;

	if (len != sizeof(*out) || nr_fds)
		return -EINVAL;
	memcpy(out, p, sizeof(*out));
	if (out->argsz < sizeof(*out))
		return -EINVAL;
	/* The v1 dirty-bitmap-on-unmap is replaced by DMA logging. */
	if (out->flags & ~VFU_DMA_UNMAP_FLAG_ALL)
		return -EINVAL;
	if (out->flags & VFU_DMA_UNMAP_FLAG_ALL)
		return (out->addr || out->size) ? -EINVAL : 0;
	if (!out->size || check_add_overflow(out->addr, out->size, &end))
		return -EINVAL;
	return 0;
}

int vfu_codec_device_info(const void *p, size_t len, size_t nr_fds,
			  struct vfu_device_info *out)
{
	int ret = codec_fixed(p, len, nr_fds, sizeof(*out), out);

	if (ret)
		return ret;
	return out->argsz < sizeof(*out) ? -EINVAL : 0;
}

int vfu_codec_region_info(const void *p, size_t len, size_t nr_fds,
			  const struct vfu_codec_limits *lim,
			  struct vfu_region_info *out)
{
	int ret = codec_fixed(p, len, nr_fds, sizeof(*out), out);

	if (ret)
		return ret;
	/* An absent region below num_regions has info (size 0, flags 0),
	 * as kernel VFIO and libvfio-user answer: QEMU's client treats an
	 * error for BAR0-5 as fatal. */
	if (out->argsz < sizeof(*out) || out->index >= VFU_PCI_NUM_REGIONS)
		return -EINVAL;
	return 0;
}

int vfu_codec_region_io_fds(const void *p, size_t len, size_t nr_fds,
			    const struct vfu_codec_limits *lim,
			    struct vfu_region_io_fds_req *out)
{
	int ret = codec_fixed(p, len, nr_fds, sizeof(*out), out);

	if (ret)
		return ret;
	if (out->argsz < sizeof(*out) || !region_present(lim, out->index))
		return -EINVAL;
	return 0;
}

int vfu_codec_irq_info(const void *p, size_t len, size_t nr_fds,
		       struct vfu_irq_info *out)
{
	int ret = codec_fixed(p, len, nr_fds, sizeof(*out), out);

	if (ret)
		return ret;
	if (out->argsz < sizeof(*out) || out->index >= VFU_PCI_NUM_IRQS)
		return -EINVAL;
	return 0;
}

/* Exactly one bit of mask set in v. */
static bool one_bit_of(uint32_t v, uint32_t mask)
{
	v &= mask;
	return v && !(v & (v - 1));
}

int vfu_codec_set_irqs(const void *p, size_t len, size_t nr_fds,
		       const struct vfu_codec_limits *lim,
		       struct vfu_irq_set *out, const uint8_t **bools)
{
	uint32_t data, end;
	size_t want = sizeof(*out);

	*bools = NULL;
	if (len < sizeof(*out))
		return -EINVAL;
	memcpy(out, p, sizeof(*out));
	if (out->argsz < sizeof(*out))
		return -EINVAL;
	if (out->flags & ~(VFU_IRQ_SET_DATA_MASK | VFU_IRQ_SET_ACTION_MASK_ALL))
		return -EINVAL;
	if (!one_bit_of(out->flags, VFU_IRQ_SET_DATA_MASK) ||
	    !one_bit_of(out->flags, VFU_IRQ_SET_ACTION_MASK_ALL))
		return -EINVAL;
	if (out->index >= VFU_PCI_NUM_IRQS)
		return -EINVAL;
	data = out->flags & VFU_IRQ_SET_DATA_MASK;
	/*
	 * Only INTx is maskable (GET_IRQ_INFO says MASKABLE for it alone),
	 * and only as a whole: vector 0, count 1. An eventfd rides only
	 * with UNMASK (the resample fd, or none to drop it), as in
	 * vfio-pci, which has no MASK eventfd either.
	 */
	if (!(out->flags & VFU_IRQ_SET_ACTION_TRIGGER) &&
	    (out->index != VFU_PCI_INTX_IRQ_INDEX || out->start ||
	     out->count != 1 || !lim->irq_count[out->index] ||
	     ((out->flags & VFU_IRQ_SET_ACTION_MASK) &&
	      data == VFU_IRQ_SET_DATA_EVENTFD)))
		return -EINVAL;

	if (out->count == 0) {
		/* Disable the whole index; nothing else may ride along. */
		if (data != VFU_IRQ_SET_DATA_NONE || out->start ||
		    len != sizeof(*out) || nr_fds)
			return -EINVAL;
		return 0;
	}
	if (check_add_overflow(out->start, out->count, &end) ||
	    end > lim->irq_count[out->index])
		return -EINVAL;

	switch (data) {
	case VFU_IRQ_SET_DATA_BOOL:
		want += out->count;
		if (len != want || nr_fds)
			return -EINVAL;
		*bools = (const uint8_t *)p + sizeof(*out);
		break;
	case VFU_IRQ_SET_DATA_EVENTFD:
		if (len != want || (nr_fds && nr_fds != out->count))
			return -EINVAL;
		break;
	default:	/* DATA_NONE */
		if (len != want || nr_fds)
			return -EINVAL;
		break;
	}
	return 0;
}

static int codec_check_access(const struct vfu_codec_limits *lim,
			      uint32_t region, uint64_t offset, uint32_t count,
			      uint32_t max_count)
{
	if (!region_present(lim, region))
		return -EINVAL;
	if (count > max_count)
		return -EINVAL;
	if (!range_within(offset, count, lim->region_size[region]))
		return -EINVAL;
	return 0;
}

int vfu_codec_region_access(const void *p, size_t len, size_t nr_fds,
			    bool is_write, const struct vfu_codec_limits *lim,
			    struct vfu_region_access *out, const void **data)
{
	size_t want;
	int ret;

	*data = NULL;
	if (len < sizeof(*out) || nr_fds)
		return -EINVAL;
	memcpy(out, p, sizeof(*out));
	ret = codec_check_access(lim, out->region, out->offset, out->count,
				 lim->max_data_xfer_size);
	if (ret)
		return ret;
	/* count <= max_data_xfer_size (u32), so this cannot wrap a size_t. */
	want = sizeof(*out) + (is_write ? out->count : 0);
	if (len != want)
		return -EINVAL;
	if (is_write)
		*data = (const uint8_t *)p + sizeof(*out);
	return 0;
}

int vfu_codec_write_multi(const void *p, size_t len, size_t nr_fds,
			  const struct vfu_codec_limits *lim, uint64_t *count,
			  const struct vfu_write_multi_entry **entries)
{
	const uint8_t *base = p;
	uint64_t n;

	if (len < sizeof(n) || nr_fds)
		return -EINVAL;
	memcpy(&n, p, sizeof(n));
	if (n == 0 || n > VFU_WRITE_MULTI_MAX)
		return -EINVAL;
	/* n <= VFU_WRITE_MULTI_MAX keeps the product small. */
	if (len != sizeof(n) + n * sizeof(struct vfu_write_multi_entry))
		return -EINVAL;
	for (uint64_t i = 0; i < n; i++) {
		struct vfu_write_multi_entry e;
		int ret;

		memcpy(&e, base + sizeof(n) + i * sizeof(e), sizeof(e));
		ret = codec_check_access(lim, e.region, e.offset, e.count,
					 VFU_WRITE_MULTI_DATA_MAX);
		if (ret)
			return ret;
	}
	*count = n;
	*entries = (const struct vfu_write_multi_entry *)(base + sizeof(n));
	return 0;
}

int vfu_codec_device_reset(const void *p, size_t len, size_t nr_fds)
{
	(void)p;
	return (len || nr_fds) ? -EINVAL : 0;
}

int vfu_codec_feature(const void *p, size_t len, size_t nr_fds,
		      struct vfu_device_feature *out, const void **data,
		      size_t *data_len)
{
	const uint32_t ops = VFU_FEATURE_GET | VFU_FEATURE_SET |
			     VFU_FEATURE_PROBE;

	if (len < sizeof(*out) || nr_fds)
		return -EINVAL;
	memcpy(out, p, sizeof(*out));
	if (out->argsz < sizeof(*out))
		return -EINVAL;
	if (out->flags & ~(VFU_FEATURE_MASK | ops))
		return -EINVAL;
	if (!(out->flags & ops))
		return -EINVAL;
	if ((out->flags & VFU_FEATURE_GET) && (out->flags & VFU_FEATURE_SET) &&
	    !(out->flags & VFU_FEATURE_PROBE))
		return -EINVAL;
	*data = (const uint8_t *)p + sizeof(*out);
	*data_len = len - sizeof(*out);
	return 0;
}

int vfu_codec_mig_state(const void *data, size_t len,
			struct vfu_feature_mig_state *out)
{
	if (len != sizeof(*out))
		return -EINVAL;
	memcpy(out, data, sizeof(*out));
	return out->device_state < VFU_MIG_STATE_NR ? 0 : -EINVAL;
}

static bool log_pgsize_ok(uint64_t pgsize)
{
	return IS_POW2(pgsize) && pgsize >= VFU_DMA_LOG_MIN_PGSIZE &&
	       pgsize <= VFU_DMA_LOG_MAX_PGSIZE;
}

int vfu_codec_dma_log_start(const void *data, size_t len,
			    struct vfu_dma_log_control *out,
			    const struct vfu_dma_log_range **ranges)
{
	const uint8_t *base = data;

	if (len < sizeof(*out))
		return -EINVAL;
	memcpy(out, data, sizeof(*out));
	if (!log_pgsize_ok(out->page_size))
		return -EINVAL;
	if (out->num_ranges > VFU_DMA_LOG_MAX_RANGES)
		return -E2BIG;
	if (len != sizeof(*out) +
		   (size_t)out->num_ranges * sizeof(struct vfu_dma_log_range))
		return -EINVAL;
	for (uint32_t i = 0; i < out->num_ranges; i++) {
		struct vfu_dma_log_range r;
		uint64_t end;

		memcpy(&r, base + sizeof(*out) + i * sizeof(r), sizeof(r));
		if (!r.length || !IS_ALIGNED(r.iova, out->page_size) ||
		    !IS_ALIGNED(r.length, out->page_size) ||
		    check_add_overflow(r.iova, r.length, &end))
			return -EINVAL;
		/* At most 256 ranges: a quadratic overlap check is cheap. */
		for (uint32_t j = 0; j < i; j++) {
			struct vfu_dma_log_range q;

			memcpy(&q, base + sizeof(*out) + j * sizeof(q),
			       sizeof(q));
			if (ranges_overlap(r.iova, r.length, q.iova, q.length))
				return -EINVAL;
		}
	}
	*ranges = (const struct vfu_dma_log_range *)(base + sizeof(*out));
	return 0;
}

int vfu_codec_dma_log_report(const void *data, size_t len,
			     const struct vfu_codec_limits *lim,
			     struct vfu_dma_log_report *out,
			     size_t *bitmap_bytes)
{
	uint64_t end, pages, bytes;

	if (len != sizeof(*out))
		return -EINVAL;
	memcpy(out, data, sizeof(*out));
	if (!log_pgsize_ok(out->page_size) || !out->length ||
	    !IS_ALIGNED(out->iova, out->page_size) ||
	    !IS_ALIGNED(out->length, out->page_size) ||
	    check_add_overflow(out->iova, out->length, &end))
		return -EINVAL;
	pages = out->length / out->page_size;
	bytes = DIV_ROUND_UP(pages, 64) * sizeof(uint64_t);
	if (bytes > lim->max_data_xfer_size)
		return -E2BIG;
	*bitmap_bytes = (size_t)bytes;
	return 0;
}

int vfu_codec_mig_data_read(const void *p, size_t len, size_t nr_fds,
			    const struct vfu_codec_limits *lim,
			    struct vfu_mig_data *out)
{
	int ret = codec_fixed(p, len, nr_fds, sizeof(*out), out);

	if (ret)
		return ret;
	if (out->size > lim->max_data_xfer_size)
		return -EINVAL;
	/* argsz bounds the reply: the 8-byte struct plus the data. */
	if ((uint64_t)out->argsz < sizeof(*out) + (uint64_t)out->size)
		return -EINVAL;
	return 0;
}

int vfu_codec_mig_data_write(const void *p, size_t len, size_t nr_fds,
			     const struct vfu_codec_limits *lim,
			     struct vfu_mig_data *out, const void **data)
{
	*data = NULL;
	if (len < sizeof(*out) || nr_fds)
		return -EINVAL;
	memcpy(out, p, sizeof(*out));
	if (out->argsz < sizeof(*out))
		return -EINVAL;
	if (out->size > lim->max_data_xfer_size ||
	    len != sizeof(*out) + (size_t)out->size)
		return -EINVAL;
	*data = (const uint8_t *)p + sizeof(*out);
	return 0;
}
