/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The parts of the Linux VFIO and iommufd uAPI newer than the build
 * host's headers (Debian 12 ships 6.1's; the device cdev, iommufd, the
 * pre-copy info ioctl and MIG_DATA_SIZE came later). Values and layouts
 * are the kernel's ABI (include/uapi/linux/vfio.h and iommufd.h of
 * Linux 6.12), under ferry's own names so they never clash with a newer
 * <linux/vfio.h>. The older parts (group, container, type1, device
 * info, regions, IRQs, the feature multiplexer, DMA logging) come from
 * <linux/vfio.h> itself.
 */
#ifndef FERRY_KVFIO_UAPI_H
#define FERRY_KVFIO_UAPI_H

#include <linux/ioctl.h>
#include <linux/types.h>
#include <linux/vfio.h>

/* vfio.h, Linux 6.2+: migration data sizes */
#define KVFIO_MIGRATION_PRE_COPY		(1u << 2)
#define KVFIO_FEATURE_MIG_DATA_SIZE		9
struct kvfio_mig_data_size {
	__aligned_u64 stop_copy_length;
};
/* on the migration data fd, in PRE_COPY and PRE_COPY_P2P only */
#define KVFIO_MIG_GET_PRECOPY_INFO		_IO(VFIO_TYPE, VFIO_BASE + 21)
struct kvfio_precopy_info {
	__u32 argsz;
	__u32 flags;
	__aligned_u64 initial_bytes;
	__aligned_u64 dirty_bytes;
};

/* vfio.h, Linux 6.6+: the device cdev (/dev/vfio/devices/vfioN) */
#define KVFIO_DEVICE_BIND_IOMMUFD		_IO(VFIO_TYPE, VFIO_BASE + 18)
struct kvfio_bind_iommufd {
	__u32 argsz;
	__u32 flags;
	__s32 iommufd;
	__u32 out_devid;
};
#define KVFIO_DEVICE_ATTACH_IOMMUFD_PT		_IO(VFIO_TYPE, VFIO_BASE + 19)
struct kvfio_attach_pt {
	__u32 argsz;
	__u32 flags;
	__u32 pt_id;
};

/* iommufd.h, Linux 6.2+ (/dev/iommu); every command is _IO(';', nr) */
#define KVFIO_IOMMUFD_TYPE			(';')
#define KVFIO_IOMMU_DESTROY			_IO(KVFIO_IOMMUFD_TYPE, 0x80)
#define KVFIO_IOMMU_IOAS_ALLOC			_IO(KVFIO_IOMMUFD_TYPE, 0x81)
#define KVFIO_IOMMU_IOAS_MAP			_IO(KVFIO_IOMMUFD_TYPE, 0x85)
#define KVFIO_IOMMU_IOAS_UNMAP			_IO(KVFIO_IOMMUFD_TYPE, 0x86)
/* Linux 6.15+: move an IOAS's pinned pages to the calling process
 * (live update); probed, never present in 6.12. */
#define KVFIO_IOMMU_IOAS_CHANGE_PROCESS		_IO(KVFIO_IOMMUFD_TYPE, 0x92)

struct kvfio_iommu_destroy {
	__u32 size;
	__u32 id;
};
struct kvfio_ioas_alloc {
	__u32 size;
	__u32 flags;
	__u32 out_ioas_id;
};
#define KVFIO_IOAS_MAP_FIXED_IOVA		(1u << 0)
#define KVFIO_IOAS_MAP_WRITEABLE		(1u << 1)
#define KVFIO_IOAS_MAP_READABLE			(1u << 2)
struct kvfio_ioas_map {
	__u32 size;
	__u32 flags;
	__u32 ioas_id;
	__u32 reserved;
	__aligned_u64 user_va;
	__aligned_u64 length;
	__aligned_u64 iova;
};
struct kvfio_ioas_unmap {
	__u32 size;
	__u32 ioas_id;
	__aligned_u64 iova;
	__aligned_u64 length;
};

#endif /* FERRY_KVFIO_UAPI_H */
