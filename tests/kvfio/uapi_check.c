/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * ferry spells the VFIO/iommufd uAPI newer than the build host's headers
 * itself (lib/kvfio_uapi.h). tests/kvfio/run.sh compiles this file
 * against the kernel's own 6.12 uapi headers: any value or layout that
 * differs stops the build.
 */
#include "kvfio_uapi.h"
#include <linux/iommufd.h>
#include <stddef.h>
#define EQ(a,b) _Static_assert((a)==(b), #a)
#define SZ(a,b) _Static_assert(sizeof(struct a)==sizeof(struct b), #a)
EQ(KVFIO_MIGRATION_PRE_COPY, VFIO_MIGRATION_PRE_COPY);
EQ(KVFIO_FEATURE_MIG_DATA_SIZE, VFIO_DEVICE_FEATURE_MIG_DATA_SIZE);
EQ(KVFIO_MIG_GET_PRECOPY_INFO, VFIO_MIG_GET_PRECOPY_INFO);
EQ(KVFIO_DEVICE_BIND_IOMMUFD, VFIO_DEVICE_BIND_IOMMUFD);
EQ(KVFIO_DEVICE_ATTACH_IOMMUFD_PT, VFIO_DEVICE_ATTACH_IOMMUFD_PT);
EQ(KVFIO_IOMMU_DESTROY, IOMMU_DESTROY);
EQ(KVFIO_IOMMU_IOAS_ALLOC, IOMMU_IOAS_ALLOC);
EQ(KVFIO_IOMMU_IOAS_MAP, IOMMU_IOAS_MAP);
EQ(KVFIO_IOMMU_IOAS_UNMAP, IOMMU_IOAS_UNMAP);
EQ(KVFIO_IOAS_MAP_FIXED_IOVA, IOMMU_IOAS_MAP_FIXED_IOVA);
EQ(KVFIO_IOAS_MAP_WRITEABLE, IOMMU_IOAS_MAP_WRITEABLE);
EQ(KVFIO_IOAS_MAP_READABLE, IOMMU_IOAS_MAP_READABLE);
SZ(kvfio_mig_data_size, vfio_device_feature_mig_data_size);
SZ(kvfio_precopy_info, vfio_precopy_info);
SZ(kvfio_bind_iommufd, vfio_device_bind_iommufd);
SZ(kvfio_attach_pt, vfio_device_attach_iommufd_pt);
SZ(kvfio_iommu_destroy, iommu_destroy);
SZ(kvfio_ioas_alloc, iommu_ioas_alloc);
SZ(kvfio_ioas_map, iommu_ioas_map);
SZ(kvfio_ioas_unmap, iommu_ioas_unmap);
EQ(offsetof(struct kvfio_ioas_map, iova), offsetof(struct iommu_ioas_map, iova));
EQ(offsetof(struct kvfio_bind_iommufd, out_devid), offsetof(struct vfio_device_bind_iommufd, out_devid));
int main(void){return 0;}
