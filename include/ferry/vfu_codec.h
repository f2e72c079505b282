/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * vfio-user request validation: one pure function per command payload.
 *
 * Each takes the payload (the bytes after the 16-byte header), its length
 * and the number of fds that came with it, checks every size, count,
 * index, flag and offset+count sum (overflow-safe) before any field is
 * trusted, and on success fills a host-aligned copy of the fixed part
 * plus pointers into the payload for variable data. Nothing here touches
 * device or server state, so the server, the fuzzer and the unit tests
 * share exactly the same rules.
 *
 * Return 0 or a negative errno: -EINVAL for malformed input (the common
 * case), -E2BIG when a count exceeds a protocol limit that a well-formed
 * but greedy peer could hit (log ranges, bitmap size). An absent region
 * is malformed input too (-EINVAL).
 */
#ifndef FERRY_VFU_CODEC_H
#define FERRY_VFU_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/vfio_user.h"

/* The page size granularity of dirty logging we accept. */
#define VFU_DMA_LOG_MIN_PGSIZE		4096ull
#define VFU_DMA_LOG_MAX_PGSIZE		(1ull << 30)

/* Per-connection limits the validators check against. */
struct vfu_codec_limits {
	uint32_t max_data_xfer_size;	/* REGION_*, MIG_DATA_*, bitmaps */
	uint64_t max_dma_size;		/* one DMA_MAP */
	/* size of each region (0: absent), indexed by region number */
	uint64_t region_size[VFU_PCI_NUM_REGIONS];
	/* vectors per IRQ index */
	uint32_t irq_count[VFU_PCI_NUM_IRQS];
};

/* VERSION: json points at the NUL-terminated text (NULL if none). */
int vfu_codec_version(const void *p, size_t len, size_t nr_fds,
		      struct vfu_version *out, const char **json,
		      size_t *json_len);

/* DMA_MAP: known flags only, size > 0 and <= max_dma_size, addr+size and
 * offset+size must not wrap, at most one fd. */
int vfu_codec_dma_map(const void *p, size_t len, size_t nr_fds,
		      const struct vfu_codec_limits *lim,
		      struct vfu_dma_map *out);

/* DMA_UNMAP: flags 0 or ALL (then addr == size == 0); GET_DIRTY_BITMAP
 * (v1) is refused; no fds. */
int vfu_codec_dma_unmap(const void *p, size_t len, size_t nr_fds,
			struct vfu_dma_unmap *out);

/* DEVICE_GET_INFO */
int vfu_codec_device_info(const void *p, size_t len, size_t nr_fds,
			  struct vfu_device_info *out);

/* GET_REGION_INFO: index must name a present region. */
int vfu_codec_region_info(const void *p, size_t len, size_t nr_fds,
			  const struct vfu_codec_limits *lim,
			  struct vfu_region_info *out);

/* GET_REGION_IO_FDS: index must name a present region. */
int vfu_codec_region_io_fds(const void *p, size_t len, size_t nr_fds,
			    const struct vfu_codec_limits *lim,
			    struct vfu_region_io_fds_req *out);

/* GET_IRQ_INFO */
int vfu_codec_irq_info(const void *p, size_t len, size_t nr_fds,
		       struct vfu_irq_info *out);

/*
 * SET_IRQS: exactly one DATA and one ACTION flag; MASK/UNMASK only for
 * INTx vector 0, count 1 (the only maskable vector), and DATA_EVENTFD
 * only with UNMASK (the resample fd). count 0 only as DATA_NONE|TRIGGER
 * (disable the
 * index); otherwise [start, start+count) must fit the index. DATA_BOOL
 * carries count bytes (*bools set); DATA_EVENTFD carries count fds, or 0
 * fds to de-assign; other forms carry nothing.
 */
int vfu_codec_set_irqs(const void *p, size_t len, size_t nr_fds,
		       const struct vfu_codec_limits *lim,
		       struct vfu_irq_set *out, const uint8_t **bools);

/* REGION_READ/REGION_WRITE: present region, offset+count inside it,
 * count <= max_data_xfer_size; a write carries exactly count bytes
 * (*data set), a read carries none. */
int vfu_codec_region_access(const void *p, size_t len, size_t nr_fds,
			    bool is_write, const struct vfu_codec_limits *lim,
			    struct vfu_region_access *out, const void **data);

/* REGION_WRITE_MULTI: 1..VFU_WRITE_MULTI_MAX entries, each checked like a
 * REGION_WRITE of at most 8 bytes. *entries points into p (packed). */
int vfu_codec_write_multi(const void *p, size_t len, size_t nr_fds,
			  const struct vfu_codec_limits *lim, uint64_t *count,
			  const struct vfu_write_multi_entry **entries);

/* DEVICE_RESET: no payload, no fds. */
int vfu_codec_device_reset(const void *p, size_t len, size_t nr_fds);

/*
 * DEVICE_FEATURE header: argsz >= 8, at least one operation, no unknown
 * operation bits, GET and SET together only with PROBE. data/data_len
 * describe the bytes after the 8-byte feature header.
 */
int vfu_codec_feature(const void *p, size_t len, size_t nr_fds,
		      struct vfu_device_feature *out, const void **data,
		      size_t *data_len);

/* MIG_DEVICE_STATE SET data: a state number < VFU_MIG_STATE_NR. */
int vfu_codec_mig_state(const void *data, size_t len,
			struct vfu_feature_mig_state *out);

/*
 * DMA_LOGGING_START data: page_size a power of two in
 * [VFU_DMA_LOG_MIN_PGSIZE, VFU_DMA_LOG_MAX_PGSIZE], num_ranges <=
 * VFU_DMA_LOG_MAX_RANGES (-E2BIG) with exactly that many ranges inline,
 * each non-empty, page-aligned, not wrapping, and none overlapping.
 */
int vfu_codec_dma_log_start(const void *data, size_t len,
			    struct vfu_dma_log_control *out,
			    const struct vfu_dma_log_range **ranges);

/*
 * DMA_LOGGING_REPORT data: page_size as for START, iova and length
 * page-aligned, length > 0, iova+length not wrapping, bitmap (8-byte
 * words) no larger than max_data_xfer_size (-E2BIG). *bitmap_bytes gets
 * the reply bitmap size.
 */
int vfu_codec_dma_log_report(const void *data, size_t len,
			     const struct vfu_codec_limits *lim,
			     struct vfu_dma_log_report *out,
			     size_t *bitmap_bytes);

/* MIG_DATA_READ: size <= max_data_xfer_size and argsz >= 8 + size. */
int vfu_codec_mig_data_read(const void *p, size_t len, size_t nr_fds,
			    const struct vfu_codec_limits *lim,
			    struct vfu_mig_data *out);

/* MIG_DATA_WRITE: size <= max_data_xfer_size, exactly size bytes. */
int vfu_codec_mig_data_write(const void *p, size_t len, size_t nr_fds,
			     const struct vfu_codec_limits *lim,
			     struct vfu_mig_data *out, const void **data);

#endif /* FERRY_VFU_CODEC_H */
