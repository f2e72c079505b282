/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * vfio-user wire format, as ferry speaks it.
 *
 * These are ferry's own packed structs. Nothing from <linux/vfio.h> is put
 * on the wire: the kernel's DMA-logging structs carry user pointers, and
 * Debian 12's header lacks the PRE_COPY constants. Byte order is the host's
 * (little-endian x86-64), as the vfio-user specification says.
 *
 * Every struct here is a fixed prefix; variable data (JSON, region data,
 * capability chains, bitmaps) follows it in the same message. Parsers must
 * check msg_size against the prefix before reading any field (see
 * vfu_codec.h).
 */
#ifndef FERRY_VFIO_USER_H
#define FERRY_VFIO_USER_H

#include <stdint.h>

#define VFU_PACKED __attribute__((packed))

/* Protocol version ferry implements (libvfio-user speaks 0.2). */
#define VFU_VERSION_MAJOR	0
#define VFU_VERSION_MINOR	2

/* Commands (vfio-user spec, command table). 14 was v1 DIRTY_PAGES. */
enum vfu_cmd {
	VFU_CMD_VERSION			= 1,
	VFU_CMD_DMA_MAP			= 2,
	VFU_CMD_DMA_UNMAP		= 3,
	VFU_CMD_DEVICE_GET_INFO		= 4,
	VFU_CMD_DEVICE_GET_REGION_INFO	= 5,
	VFU_CMD_DEVICE_GET_REGION_IO_FDS = 6,
	VFU_CMD_DEVICE_GET_IRQ_INFO	= 7,
	VFU_CMD_DEVICE_SET_IRQS		= 8,
	VFU_CMD_REGION_READ		= 9,
	VFU_CMD_REGION_WRITE		= 10,
	VFU_CMD_DMA_READ		= 11,
	VFU_CMD_DMA_WRITE		= 12,
	VFU_CMD_DEVICE_RESET		= 13,
	VFU_CMD_REGION_WRITE_MULTI	= 15,
	VFU_CMD_DEVICE_FEATURE		= 16,
	VFU_CMD_MIG_DATA_READ		= 17,
	VFU_CMD_MIG_DATA_WRITE		= 18,
	VFU_CMD_MAX			= 19,
};

/* Header flags: bits 0-3 are the message type. */
#define VFU_F_TYPE_MASK		0xfu
#define VFU_F_TYPE_COMMAND	0x0u
#define VFU_F_TYPE_REPLY	0x1u
#define VFU_F_NO_REPLY		0x10u
#define VFU_F_ERROR		0x20u

struct vfu_hdr {
	uint16_t msg_id;
	uint16_t cmd;
	uint32_t msg_size;	/* whole message, header included */
	uint32_t flags;
	uint32_t error_no;	/* valid in replies with VFU_F_ERROR */
} VFU_PACKED;

#define VFU_HDR_SIZE		16u

/*
 * Limits. A message larger than VFU_MAX_MSG_SIZE is refused before its
 * payload is read, so a peer cannot make us allocate without bound. The
 * largest legitimate message is a data transfer of max_data_xfer_size plus
 * its 16-byte access header plus the message header.
 */
#define VFU_DEFAULT_MAX_DATA_XFER	(1u << 20)
#define VFU_MAX_DATA_XFER_LIMIT		(8u << 20)
#define VFU_MAX_MSG_SIZE		(VFU_MAX_DATA_XFER_LIMIT + 4096u)
#define VFU_DEFAULT_MAX_MSG_FDS		1u
#define VFU_MAX_MSG_FDS_LIMIT		64u	/* fds accepted in one message */
#define VFU_DEFAULT_MAX_DMA_MAPS	65535u
#define VFU_DEFAULT_PGSIZES		4096u
#define VFU_MAX_JSON_LEN		4096u
#define VFU_MAX_ERRNO			4096u	/* errno values sent/accepted */
/* A client refuses servers that claim more than this (defends memory). */
#define VFU_CLIENT_MAX_REGIONS		100u
#define VFU_CLIENT_MAX_IRQS		50u

/* VFU_CMD_VERSION payload, request and reply; NUL-terminated JSON follows. */
struct vfu_version {
	uint16_t major;
	uint16_t minor;
	/* char json[]; */
} VFU_PACKED;

/* DMA_MAP (2): an optional fd rides in SCM_RIGHTS. */
#define VFU_DMA_FLAG_READ	(1u << 0)
#define VFU_DMA_FLAG_WRITE	(1u << 1)
#define VFU_DMA_MAP_FLAGS_ALL	(VFU_DMA_FLAG_READ | VFU_DMA_FLAG_WRITE)
struct vfu_dma_map {
	uint32_t argsz;
	uint32_t flags;
	uint64_t offset;	/* offset into the passed fd */
	uint64_t addr;		/* IOVA */
	uint64_t size;
} VFU_PACKED;

/* DMA_UNMAP (3): reply echoes the struct. */
#define VFU_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP	(1u << 0)	/* v1, refused */
#define VFU_DMA_UNMAP_FLAG_ALL			(1u << 1)
struct vfu_dma_unmap {
	uint32_t argsz;
	uint32_t flags;
	uint64_t addr;
	uint64_t size;
} VFU_PACKED;

/* DEVICE_GET_INFO (4) */
#define VFU_DEVICE_FLAGS_RESET	(1u << 0)
#define VFU_DEVICE_FLAGS_PCI	(1u << 1)
struct vfu_device_info {
	uint32_t argsz;
	uint32_t flags;
	uint32_t num_regions;
	uint32_t num_irqs;
} VFU_PACKED;

/* DEVICE_GET_REGION_INFO (5); capability chain follows, offsets relative
 * to the start of this struct. With MMAP set the reply carries one fd. */
#define VFU_REGION_FLAG_READ	(1u << 0)
#define VFU_REGION_FLAG_WRITE	(1u << 1)
#define VFU_REGION_FLAG_MMAP	(1u << 2)
#define VFU_REGION_FLAG_CAPS	(1u << 3)
struct vfu_region_info {
	uint32_t argsz;
	uint32_t flags;
	uint32_t index;
	uint32_t cap_offset;
	uint64_t size;
	uint64_t offset;	/* mmap offset in the passed fd */
} VFU_PACKED;

struct vfu_cap_hdr {
	uint16_t id;
	uint16_t version;
	uint32_t next;		/* 0 ends the chain */
} VFU_PACKED;

#define VFU_REGION_CAP_SPARSE_MMAP	1
#define VFU_REGION_CAP_TYPE		2
struct vfu_sparse_area {
	uint64_t offset;
	uint64_t size;
} VFU_PACKED;
struct vfu_cap_sparse_mmap {
	struct vfu_cap_hdr hdr;
	uint32_t nr_areas;
	uint32_t reserved;
	/* struct vfu_sparse_area areas[nr_areas]; */
} VFU_PACKED;

/*
 * ferry extension (docs/vfio-user-extensions.md): the mmap'able areas a
 * device must see accesses to while its state is being saved. A client
 * that migrates the device switches these areas to trapped access
 * (REGION_READ/WRITE) before entering a saving state and back afterwards.
 * Same layout as the sparse-mmap capability. Capability ids from 0xfe00
 * are ferry's; a client that does not know the id skips it.
 */
#define VFU_REGION_CAP_FERRY_TRAP_WHILE_SAVING	0xfe01

/* PCI region indexes. */
enum {
	VFU_PCI_BAR0_REGION_INDEX = 0,
	VFU_PCI_BAR1_REGION_INDEX,
	VFU_PCI_BAR2_REGION_INDEX,
	VFU_PCI_BAR3_REGION_INDEX,
	VFU_PCI_BAR4_REGION_INDEX,
	VFU_PCI_BAR5_REGION_INDEX,
	VFU_PCI_ROM_REGION_INDEX,
	VFU_PCI_CONFIG_REGION_INDEX,
	VFU_PCI_VGA_REGION_INDEX,
	VFU_PCI_NUM_REGIONS,
};

/* DEVICE_GET_REGION_IO_FDS (6) */
struct vfu_region_io_fds_req {
	uint32_t argsz;
	uint32_t flags;
	uint32_t index;
	uint32_t count;
} VFU_PACKED;

/* DEVICE_GET_IRQ_INFO (7) */
#define VFU_IRQ_INFO_EVENTFD	(1u << 0)
#define VFU_IRQ_INFO_MASKABLE	(1u << 1)
#define VFU_IRQ_INFO_AUTOMASKED	(1u << 2)
#define VFU_IRQ_INFO_NORESIZE	(1u << 3)
struct vfu_irq_info {
	uint32_t argsz;
	uint32_t flags;
	uint32_t index;
	uint32_t count;
} VFU_PACKED;

enum {
	VFU_PCI_INTX_IRQ_INDEX = 0,
	VFU_PCI_MSI_IRQ_INDEX,
	VFU_PCI_MSIX_IRQ_INDEX,
	VFU_PCI_ERR_IRQ_INDEX,
	VFU_PCI_REQ_IRQ_INDEX,
	VFU_PCI_NUM_IRQS,
};

/* DEVICE_SET_IRQS (8) */
#define VFU_IRQ_SET_DATA_NONE		(1u << 0)
#define VFU_IRQ_SET_DATA_BOOL		(1u << 1)
#define VFU_IRQ_SET_DATA_EVENTFD	(1u << 2)
#define VFU_IRQ_SET_ACTION_MASK		(1u << 3)
#define VFU_IRQ_SET_ACTION_UNMASK	(1u << 4)
#define VFU_IRQ_SET_ACTION_TRIGGER	(1u << 5)
#define VFU_IRQ_SET_DATA_MASK \
	(VFU_IRQ_SET_DATA_NONE | VFU_IRQ_SET_DATA_BOOL | VFU_IRQ_SET_DATA_EVENTFD)
#define VFU_IRQ_SET_ACTION_MASK_ALL \
	(VFU_IRQ_SET_ACTION_MASK | VFU_IRQ_SET_ACTION_UNMASK | \
	 VFU_IRQ_SET_ACTION_TRIGGER)
struct vfu_irq_set {
	uint32_t argsz;
	uint32_t flags;
	uint32_t index;
	uint32_t start;
	uint32_t count;
	/* uint8_t data[]; bools for DATA_BOOL */
} VFU_PACKED;

/* REGION_READ (9) / REGION_WRITE (10): data follows (write req, read reply). */
struct vfu_region_access {
	uint64_t offset;
	uint32_t region;
	uint32_t count;
} VFU_PACKED;

/* REGION_WRITE_MULTI (15) */
#define VFU_WRITE_MULTI_DATA_MAX	8u
#define VFU_WRITE_MULTI_MAX		200u
struct vfu_write_multi_entry {
	uint64_t offset;
	uint32_t region;
	uint32_t count;
	uint8_t data[VFU_WRITE_MULTI_DATA_MAX];
} VFU_PACKED;

/*
 * DMA_READ (11) / DMA_WRITE (12), server to client. count is u64 as in the
 * spec's request table and libvfio-user; the DMA_WRITE reply echoes this
 * 16-byte struct.
 */
struct vfu_dma_access {
	uint64_t addr;
	uint64_t count;
} VFU_PACKED;

/* DEVICE_FEATURE (16) */
#define VFU_FEATURE_MASK		0xffffu
#define VFU_FEATURE_GET			(1u << 16)
#define VFU_FEATURE_SET			(1u << 17)
#define VFU_FEATURE_PROBE		(1u << 18)
struct vfu_device_feature {
	uint32_t argsz;		/* max reply size, this header included */
	uint32_t flags;
	/* uint8_t data[]; */
} VFU_PACKED;

enum {
	VFU_FEATURE_MIGRATION		= 1,
	VFU_FEATURE_MIG_DEVICE_STATE	= 2,
	VFU_FEATURE_DMA_LOGGING_START	= 6,
	VFU_FEATURE_DMA_LOGGING_STOP	= 7,
	VFU_FEATURE_DMA_LOGGING_REPORT	= 8,
	/* Kernel number and semantics; not in the vfio-user spec. */
	VFU_FEATURE_MIG_DATA_SIZE	= 9,
	/* ferry extension: the kernel's PRECOPY_INFO ioctl as a feature. */
	VFU_FEATURE_FERRY_PRECOPY_INFO	= 0x4001,
};

#define VFU_MIGRATION_STOP_COPY		(1ull << 0)
#define VFU_MIGRATION_P2P		(1ull << 1)
#define VFU_MIGRATION_PRE_COPY		(1ull << 2)
struct vfu_feature_migration {
	uint64_t flags;
} VFU_PACKED;

enum vfu_mig_state {
	VFU_MIG_STATE_ERROR		= 0,
	VFU_MIG_STATE_STOP		= 1,
	VFU_MIG_STATE_RUNNING		= 2,
	VFU_MIG_STATE_STOP_COPY		= 3,
	VFU_MIG_STATE_RESUMING		= 4,
	VFU_MIG_STATE_RUNNING_P2P	= 5,
	VFU_MIG_STATE_PRE_COPY		= 6,
	VFU_MIG_STATE_PRE_COPY_P2P	= 7,
	VFU_MIG_STATE_NR		= 8,
};

struct vfu_feature_mig_state {
	uint32_t device_state;
	uint32_t data_fd;	/* unused on vfio-user; 0xffffffff */
} VFU_PACKED;

struct vfu_dma_log_range {
	uint64_t iova;
	uint64_t length;
} VFU_PACKED;

/* Ranges follow inline (unlike the kernel's pointer). 0 ranges = all. */
#define VFU_DMA_LOG_MAX_RANGES		256u
struct vfu_dma_log_control {
	uint64_t page_size;
	uint32_t num_ranges;
	uint32_t reserved;
	/* struct vfu_dma_log_range ranges[num_ranges]; */
} VFU_PACKED;

/* Reply appends the bitmap inline: bit n (word n/64, bit n%64) is page
 * iova + n * page_size. Read-and-clear. */
struct vfu_dma_log_report {
	uint64_t iova;
	uint64_t length;
	uint64_t page_size;
} VFU_PACKED;

struct vfu_feature_mig_data_size {
	uint64_t stop_copy_length;
} VFU_PACKED;

/*
 * ferry PRECOPY_INFO (GET only, valid in PRE_COPY and PRE_COPY_P2P,
 * otherwise EINVAL), mirroring struct vfio_precopy_info: initial_bytes
 * starts non-zero and only decreases; dirty_bytes is what has been
 * re-dirtied since. REINIT says new initial data appeared.
 */
#define VFU_PRECOPY_INFO_REINIT		(1u << 0)
struct vfu_feature_precopy_info {
	uint64_t initial_bytes;
	uint64_t dirty_bytes;
	uint32_t flags;
	uint32_t reserved;
} VFU_PACKED;

/* MIG_DATA_READ (17) request; reply appends size bytes (size may be less
 * than requested; 0 means no data now, permanent in STOP_COPY). */
struct vfu_mig_data {
	uint32_t argsz;
	uint32_t size;
	/* uint8_t data[]; */
} VFU_PACKED;

_Static_assert(sizeof(struct vfu_hdr) == 16, "header");
_Static_assert(sizeof(struct vfu_dma_map) == 32, "dma_map");
_Static_assert(sizeof(struct vfu_dma_unmap) == 24, "dma_unmap");
_Static_assert(sizeof(struct vfu_region_info) == 32, "region_info");
_Static_assert(sizeof(struct vfu_irq_set) == 20, "irq_set");
_Static_assert(sizeof(struct vfu_region_access) == 16, "region_access");
_Static_assert(sizeof(struct vfu_write_multi_entry) == 24, "write_multi");
_Static_assert(sizeof(struct vfu_dma_log_control) == 16, "log_control");
_Static_assert(sizeof(struct vfu_dma_log_report) == 24, "log_report");

const char *vfu_cmd_name(uint16_t cmd);
const char *vfu_mig_state_name(uint32_t state);

#endif /* FERRY_VFIO_USER_H */
