// SPDX-License-Identifier: BSD-3-Clause
/*
 * ferry-dma: object lifetime, the vfu_device_ops table and the region /
 * IRQ layout the server advertises.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dma_internal.h"
#include "ferry/crc32c.h"
#include "ferry/log.h"
#include "ferry/util.h"

int ferry_dma_config_check(const struct ferry_dma_config *cfg,
			   char *err, size_t errlen)
{
	uint64_t size = cfg->devmem_size ? cfg->devmem_size :
			FERRY_DMA_DEVMEM_DEFAULT;
	uint32_t vec = cfg->msix_vectors ? cfg->msix_vectors :
		       FERRY_DMA_DEFAULT_VECTORS;

	if (!IS_POW2(size) || size < FERRY_DMA_DEVMEM_MIN) {
		snprintf(err, errlen, "device memory size %llu must be a power "
			 "of two >= %u", (unsigned long long)size,
			 FERRY_DMA_DEVMEM_MIN);
		return -EINVAL;
	}
	if ((unsigned int)cfg->irq_mode >= FERRY_DMA_IRQ_MODE_NR) {
		snprintf(err, errlen, "interrupt mode %u unknown",
			 (unsigned int)cfg->irq_mode);
		return -EINVAL;
	}
	if (vec > FERRY_DMA_MAX_VECTORS) {
		snprintf(err, errlen, "MSI-X vector count %u must be 1..%u",
			 vec, FERRY_DMA_MAX_VECTORS);
		return -EINVAL;
	}
	return 0;
}

/* A device object with its locks, no memory and no threads yet. */
int fdma_new(const struct ferry_dma_config *cfg,
	     const struct ferry_dma_host_ops *host_ops, void *host,
	     struct ferry_dma **out)
{
	struct ferry_dma *d;
	char err[128];
	int ret;

	ret = ferry_dma_config_check(cfg, err, sizeof(err));
	if (ret) {
		pr_err("ferry-dma: %s", err);
		return ret;
	}
	d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	d->cfg = *cfg;
	if (!d->cfg.devmem_size)
		d->cfg.devmem_size = FERRY_DMA_DEVMEM_DEFAULT;
	if (!d->cfg.msix_vectors)
		d->cfg.msix_vectors = FERRY_DMA_DEFAULT_VECTORS;
	snprintf(d->name, sizeof(d->name), "%s",
		 cfg->name ? cfg->name : "ferry-dma");
	d->cfg.name = d->name;
	d->host_ops = host_ops;
	d->host = host;
	d->devmem_fd = -1;
	d->mig_state = VFU_MIG_STATE_RUNNING;
	pthread_mutex_init(&d->lock, NULL);
	pthread_cond_init(&d->cond, NULL);
	*out = d;
	return 0;
}

void fdma_free(struct ferry_dma *d)
{
	pthread_cond_destroy(&d->cond);
	pthread_mutex_destroy(&d->lock);
	free(d);
}

/* The engine and the dirtier; on failure neither runs. */
int fdma_start(struct ferry_dma *d)
{
	int ret;

	ret = fdma_engine_start(d);
	if (ret)
		return ret;
	ret = fdma_dirty_start(d);
	if (ret)
		goto err_stop_engine;
	return 0;

err_stop_engine:
	pthread_mutex_lock(&d->lock);
	d->stopping = true;
	pthread_cond_broadcast(&d->cond);
	pthread_mutex_unlock(&d->lock);
	fdma_engine_join(d);
	d->stopping = false;
	return ret;
}

int ferry_dma_create(const struct ferry_dma_config *cfg,
		     const struct ferry_dma_host_ops *host_ops, void *host,
		     struct ferry_dma **out)
{
	struct ferry_dma *d;
	int ret;

	ret = fdma_new(cfg, host_ops, host, &d);
	if (ret)
		return ret;
	ret = fdma_devmem_init(d);
	if (ret)
		goto err_free;
	fdma_config_init(d);
	fdma_regs_soft_reset(d);
	ret = fdma_start(d);
	if (ret)
		goto err_devmem;
	*out = d;
	return 0;

err_devmem:
	fdma_devmem_fini(d);
err_free:
	fdma_free(d);
	return ret;
}

void ferry_dma_destroy(struct ferry_dma *d)
{
	if (!d)
		return;
	pthread_mutex_lock(&d->lock);
	d->stopping = true;
	pthread_cond_broadcast(&d->cond);
	pthread_mutex_unlock(&d->lock);
	fdma_engine_join(d);
	fdma_dirty_join(d);
	fdma_mig_reset(d);
	fdma_devmem_fini(d);
	fdma_free(d);
}

static ssize_t fdma_region_access(void *dev, uint32_t index, uint64_t offset,
				  void *buf, uint32_t count, bool is_write)
{
	struct ferry_dma *d = dev;

	switch (index) {
	case VFU_PCI_CONFIG_REGION_INDEX:
		return fdma_config_access(d, offset, buf, count, is_write);
	case VFU_PCI_BAR0_REGION_INDEX:
		return fdma_bar0_access(d, offset, buf, count, is_write);
	case VFU_PCI_BAR2_REGION_INDEX:
		return fdma_bar2_access(d, offset, buf, count, is_write);
	default:
		return -EINVAL;
	}
}

/* DEVICE_RESET: power-on state, engine idle, migration state RUNNING. */
static int fdma_reset(void *dev)
{
	struct ferry_dma *d = dev;

	pthread_mutex_lock(&d->lock);
	/* Park the engine between steps before the state goes away. */
	d->mig_state = VFU_MIG_STATE_STOP;
	fdma_engine_quiesce(d);
	fdma_mig_reset(d);
	fdma_regs_soft_reset(d);
	fdma_config_init(d);
	memset(d->msix_table, 0, sizeof(d->msix_table));
	fdma_devmem_zero(d);
	fdma_devmem_clear_all(d);
	d->resets++;
	pthread_cond_broadcast(&d->cond);
	pthread_mutex_unlock(&d->lock);
	pr_info("%s: device reset", d->name);
	return 0;
}

static void fdma_irqs_changed(void *dev, uint32_t index)
{
	struct ferry_dma *d = dev;

	/* INTx: an eventfd assigned, or the server unmasked the line (the
	 * guest's EOI): signal again if the level is still up. */
	if (index != fdma_irq_index(d))
		return;
	pthread_mutex_lock(&d->lock);
	fdma_irq_flush(d);
	pthread_mutex_unlock(&d->lock);
}

const struct vfu_device_ops ferry_dma_vfu_ops = {
	.region_access = fdma_region_access,
	.reset = fdma_reset,
	.irqs_changed = fdma_irqs_changed,
	.mig = &fdma_mig_ops,
};

static const struct vfu_device_ops ferry_dma_vfu_ops_stop_copy = {
	.region_access = fdma_region_access,
	.reset = fdma_reset,
	.irqs_changed = fdma_irqs_changed,
	.mig = &fdma_mig_ops_stop_copy,
};

void ferry_dma_describe(struct ferry_dma *d, struct vfu_device_desc *desc)
{
	struct vfu_region_desc *r;
	uint64_t half = d->cfg.devmem_size / 2;

	memset(desc, 0, sizeof(*desc));
	desc->name = d->name;
	desc->device_flags = VFU_DEVICE_FLAGS_RESET | VFU_DEVICE_FLAGS_PCI;
	for (unsigned int i = 0; i < VFU_PCI_NUM_REGIONS; i++)
		desc->regions[i].fd = -1;

	r = &desc->regions[VFU_PCI_CONFIG_REGION_INDEX];
	r->size = FDMA_CONFIG_SIZE;
	r->flags = VFU_REGION_FLAG_READ | VFU_REGION_FLAG_WRITE;

	r = &desc->regions[VFU_PCI_BAR0_REGION_INDEX];
	r->size = FERRY_DMA_BAR0_SIZE;
	r->flags = VFU_REGION_FLAG_READ | VFU_REGION_FLAG_WRITE;

	/* Device memory: mmap'able in two halves (exercises sparse mmap),
	 * all of it trapped while saving so pre-copy sees guest writes. */
	r = &desc->regions[VFU_PCI_BAR2_REGION_INDEX];
	r->size = d->cfg.devmem_size;
	r->flags = VFU_REGION_FLAG_READ | VFU_REGION_FLAG_WRITE |
		   VFU_REGION_FLAG_MMAP;
	r->fd = d->devmem_fd;
	r->fd_offset = 0;
	r->sparse[0] = (struct vfu_sparse_area){ .offset = 0, .size = half };
	r->sparse[1] = (struct vfu_sparse_area){ .offset = half, .size = half };
	r->nr_sparse = 2;
	r->trap_while_saving[0] = r->sparse[0];
	r->trap_while_saving[1] = r->sparse[1];
	r->nr_trap_while_saving = 2;

	/* One kind of interrupt per mode, the one it raises: a pin the
	 * device never drove would leave a guest that falls back to INTx
	 * waiting forever. */
	desc->irq_count[VFU_PCI_INTX_IRQ_INDEX] =
		d->cfg.irq_mode == FERRY_DMA_IRQ_MODE_INTX ? 1 : 0;
	desc->irq_count[VFU_PCI_MSI_IRQ_INDEX] =
		d->cfg.irq_mode == FERRY_DMA_IRQ_MODE_MSI ? FDMA_MSI_VECTORS : 0;
	desc->irq_count[VFU_PCI_MSIX_IRQ_INDEX] =
		d->cfg.irq_mode == FERRY_DMA_IRQ_MODE_MSIX ?
		d->cfg.msix_vectors : 0;
	desc->ops = d->cfg.no_precopy ? &ferry_dma_vfu_ops_stop_copy :
					&ferry_dma_vfu_ops;
	desc->dev = d;
}

uint64_t ferry_dma_devmem_size(struct ferry_dma *d)
{
	return d->cfg.devmem_size;
}

uint32_t ferry_dma_devmem_crc(struct ferry_dma *d)
{
	return crc32c(d->devmem, d->cfg.devmem_size);
}

void *ferry_dma_devmem(struct ferry_dma *d)
{
	return d->devmem;
}
