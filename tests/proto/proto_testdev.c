/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * proto-testdev: a small device served through vfu_server.h, for the
 * proto suite. Usage: proto-testdev SOCKET [--no-extras] [--max-maps=N]
 * (--no-extras: no PRECOPY_INFO / MIG_DATA_SIZE support; --max-maps:
 * the server's DMA map limit). The register
 * map is in proto_testdev.h. SIGTERM stops it cleanly.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ferry/crc32c.h"
#include "ferry/log.h"
#include "ferry/util.h"
#include "ferry/vfu_server.h"
#include "proto_testdev.h"

#define TESTDEV_MIG_MAX		(1u << 20)

struct mig_rec {
	uint32_t magic;
	uint32_t kind;
	uint32_t len;
} __attribute__((packed));

struct testdev {
	struct vfu_server *srv;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	uint64_t regs[TESTDEV_BAR0_SIZE / 8];
	uint8_t config[TESTDEV_CONFIG_SIZE];
	uint8_t *bar2;
	int bar2_fd;

	/* device DMA engine */
	pthread_t worker;
	bool go_pending;
	bool quit;

	/* migration */
	enum vfu_mig_state state;
	uint8_t *out;
	size_t out_len, out_pos;
	uint8_t *in;
	size_t in_len;
};

static struct vfu_server *volatile the_srv;

static void on_sigterm(int sig)
{
	if (the_srv)
		vfu_server_stop(the_srv);
}

static void *dma_worker(void *arg)
{
	struct testdev *d = arg;

	pthread_mutex_lock(&d->lock);
	for (;;) {
		uint64_t addr, len, op;
		uint8_t pattern;
		uint8_t *buf;
		int ret;

		while (!d->go_pending && !d->quit)
			pthread_cond_wait(&d->cond, &d->lock);
		if (d->quit)
			break;
		d->go_pending = false;
		addr = d->regs[TESTDEV_REG_DMA_ADDR / 8];
		len = d->regs[TESTDEV_REG_DMA_LEN / 8];
		op = d->regs[TESTDEV_REG_DMA_GO / 8];
		pattern = (uint8_t)d->regs[TESTDEV_REG_DMA_PATTERN / 8];
		pthread_mutex_unlock(&d->lock);

		/* DMA happens unlocked: it may wait on the client. */
		buf = len <= TESTDEV_MAX_DMA ? malloc(len ? len : 1) : NULL;
		if (!buf) {
			ret = -EINVAL;
		} else if (op == TESTDEV_GO_WRITE) {
			memset(buf, pattern, len);
			ret = vfu_server_dma_write(d->srv, addr, buf, len);
		} else if (op == TESTDEV_GO_READ) {
			ret = vfu_server_dma_read(d->srv, addr, buf, len);
			if (!ret) {
				pthread_mutex_lock(&d->lock);
				d->regs[TESTDEV_REG_DMA_CRC / 8] =
					crc32c(buf, len);
				pthread_mutex_unlock(&d->lock);
			}
		} else {
			ret = -EINVAL;
		}
		free(buf);

		pthread_mutex_lock(&d->lock);
		d->regs[TESTDEV_REG_DMA_STATUS / 8] = (uint64_t)(int64_t)ret;
	}
	pthread_mutex_unlock(&d->lock);
	return NULL;
}

/* A write to BAR0 landed in the shadow; act on it. d->lock held. */
static void bar0_written(struct testdev *d, uint64_t off, uint32_t count)
{
	d->regs[TESTDEV_REG_ID / 8] = TESTDEV_ID;
	if (ranges_overlap(off, count, TESTDEV_REG_DMA_GO, 8)) {
		d->regs[TESTDEV_REG_DMA_STATUS / 8] = TESTDEV_STATUS_BUSY;
		d->go_pending = true;
		pthread_cond_signal(&d->cond);
	}
	if (ranges_overlap(off, count, TESTDEV_REG_IRQ_TRIGGER, 8)) {
		uint64_t n = d->regs[TESTDEV_REG_IRQ_TRIGGER / 8];

		d->regs[TESTDEV_REG_IRQ_RESULT / 8] = (uint64_t)(int64_t)
			vfu_server_irq_trigger(d->srv, VFU_PCI_MSIX_IRQ_INDEX,
					       (uint32_t)n);
	}
}

static ssize_t testdev_access(void *dev, uint32_t index, uint64_t offset,
			      void *buf, uint32_t count, bool is_write)
{
	struct testdev *d = dev;
	uint8_t *base;

	pthread_mutex_lock(&d->lock);
	switch (index) {
	case VFU_PCI_BAR0_REGION_INDEX:
		base = (uint8_t *)d->regs;
		break;
	case VFU_PCI_BAR2_REGION_INDEX:
		base = d->bar2;
		break;
	case VFU_PCI_CONFIG_REGION_INDEX:
		base = d->config;
		break;
	default:
		pthread_mutex_unlock(&d->lock);
		return -EINVAL;
	}
	if (is_write) {
		memcpy(base + offset, buf, count);
		if (index == VFU_PCI_BAR0_REGION_INDEX)
			bar0_written(d, offset, count);
	} else {
		memcpy(buf, base + offset, count);
	}
	d->regs[TESTDEV_REG_ACCESSES / 8]++;
	pthread_mutex_unlock(&d->lock);
	return count;
}

static int testdev_reset(void *dev)
{
	struct testdev *d = dev;

	pthread_mutex_lock(&d->lock);
	memset(d->regs, 0, sizeof(d->regs));
	d->regs[TESTDEV_REG_ID / 8] = TESTDEV_ID;
	d->state = VFU_MIG_STATE_RUNNING;
	pthread_mutex_unlock(&d->lock);
	return 0;
}

/* Append one record to the outgoing stream. d->lock held. */
static int out_append(struct testdev *d, uint32_t kind)
{
	size_t body = TESTDEV_BAR2_SIZE + (kind == TESTDEV_MIG_FINAL ? 8 : 0);
	struct mig_rec r = { TESTDEV_MIG_MAGIC, kind, (uint32_t)body };
	uint8_t *p = realloc(d->out, d->out_len + sizeof(r) + body);

	if (!p)
		return -ENOMEM;
	d->out = p;
	p += d->out_len;
	memcpy(p, &r, sizeof(r));
	p += sizeof(r);
	if (kind == TESTDEV_MIG_FINAL) {
		memcpy(p, &d->regs[TESTDEV_REG_SCRATCH / 8], 8);
		p += 8;
	}
	memcpy(p, d->bar2, TESTDEV_BAR2_SIZE);
	d->out_len += sizeof(r) + body;
	return 0;
}

/* Check and apply the received stream. d->lock held. */
static int in_apply(struct testdev *d)
{
	size_t pos = 0;
	bool final = false;

	while (pos < d->in_len) {
		struct mig_rec r;
		const uint8_t *body;

		if (!range_within(pos, sizeof(r), d->in_len))
			return -EINVAL;
		memcpy(&r, d->in + pos, sizeof(r));
		pos += sizeof(r);
		if (r.magic != TESTDEV_MIG_MAGIC ||
		    !range_within(pos, r.len, d->in_len))
			return -EINVAL;
		body = d->in + pos;
		if (r.kind == TESTDEV_MIG_PRECOPY &&
		    r.len == TESTDEV_BAR2_SIZE) {
			memcpy(d->bar2, body, TESTDEV_BAR2_SIZE);
		} else if (r.kind == TESTDEV_MIG_FINAL &&
			   r.len == TESTDEV_BAR2_SIZE + 8) {
			memcpy(&d->regs[TESTDEV_REG_SCRATCH / 8], body, 8);
			memcpy(d->bar2, body + 8, TESTDEV_BAR2_SIZE);
			final = true;
		} else {
			return -EINVAL;
		}
		pos += r.len;
	}
	return final ? 0 : -EINVAL;
}

static int testdev_set_state(void *dev, enum vfu_mig_state from,
			     enum vfu_mig_state to)
{
	struct testdev *d = dev;
	int ret = 0;

	pthread_mutex_lock(&d->lock);
	switch (to) {
	case VFU_MIG_STATE_PRE_COPY:
		ret = out_append(d, TESTDEV_MIG_PRECOPY);
		break;
	case VFU_MIG_STATE_STOP_COPY:
		ret = out_append(d, TESTDEV_MIG_FINAL);
		break;
	case VFU_MIG_STATE_RESUMING:
		free(d->in);
		d->in = NULL;
		d->in_len = 0;
		break;
	default:
		if (from == VFU_MIG_STATE_RESUMING)
			ret = in_apply(d);
		free(d->out);
		d->out = NULL;
		d->out_len = d->out_pos = 0;
		break;
	}
	if (!ret)
		d->state = to;
	pthread_mutex_unlock(&d->lock);
	return ret;
}

static ssize_t testdev_read_data(void *dev, void *buf, size_t len)
{
	struct testdev *d = dev;
	size_t n;

	pthread_mutex_lock(&d->lock);
	n = MIN(len, d->out_len - d->out_pos);
	memcpy(buf, d->out + d->out_pos, n);
	d->out_pos += n;
	pthread_mutex_unlock(&d->lock);
	return (ssize_t)n;
}

static ssize_t testdev_write_data(void *dev, const void *buf, size_t len)
{
	struct testdev *d = dev;
	uint8_t *p;

	pthread_mutex_lock(&d->lock);
	if (d->in_len + len > TESTDEV_MIG_MAX) {
		pthread_mutex_unlock(&d->lock);
		return -EFBIG;
	}
	p = realloc(d->in, d->in_len + len);
	if (!p) {
		pthread_mutex_unlock(&d->lock);
		return -ENOMEM;
	}
	memcpy(p + d->in_len, buf, len);
	d->in = p;
	d->in_len += len;
	pthread_mutex_unlock(&d->lock);
	return (ssize_t)len;
}

static int testdev_precopy_info(void *dev,
				struct vfu_feature_precopy_info *info)
{
	struct testdev *d = dev;
	int ret = 0;

	pthread_mutex_lock(&d->lock);
	if (d->state != VFU_MIG_STATE_PRE_COPY &&
	    d->state != VFU_MIG_STATE_PRE_COPY_P2P) {
		ret = -EINVAL;
	} else {
		memset(info, 0, sizeof(*info));
		info->initial_bytes = d->out_len - d->out_pos;
	}
	pthread_mutex_unlock(&d->lock);
	return ret;
}

static int testdev_data_size(void *dev, uint64_t *len)
{
	*len = sizeof(struct mig_rec) + 8 + TESTDEV_BAR2_SIZE;
	return 0;
}

static const struct vfu_mig_ops testdev_mig_ops = {
	.flags = VFU_MIGRATION_STOP_COPY | VFU_MIGRATION_P2P |
		 VFU_MIGRATION_PRE_COPY,
	.set_state = testdev_set_state,
	.read_data = testdev_read_data,
	.write_data = testdev_write_data,
	.precopy_info = testdev_precopy_info,
	.data_size = testdev_data_size,
};

static const struct vfu_mig_ops testdev_mig_ops_basic = {
	.flags = VFU_MIGRATION_STOP_COPY | VFU_MIGRATION_P2P |
		 VFU_MIGRATION_PRE_COPY,
	.set_state = testdev_set_state,
	.read_data = testdev_read_data,
	.write_data = testdev_write_data,
};

static const struct vfu_device_ops testdev_ops = {
	.region_access = testdev_access,
	.reset = testdev_reset,
	.mig = &testdev_mig_ops,
};

static const struct vfu_device_ops testdev_ops_basic = {
	.region_access = testdev_access,
	.reset = testdev_reset,
	.mig = &testdev_mig_ops_basic,
};

int main(int argc, char **argv)
{
	struct vfu_device_desc desc = {
		.name = "proto-testdev",
		.device_flags = VFU_DEVICE_FLAGS_RESET | VFU_DEVICE_FLAGS_PCI,
	};
	struct vfu_region_desc *bar2 = &desc.regions[VFU_PCI_BAR2_REGION_INDEX];
	struct sigaction sa = { .sa_handler = on_sigterm };
	struct vfu_server_config cfg = { 0 };
	struct testdev d = { .bar2_fd = -1, .state = VFU_MIG_STATE_RUNNING };
	int ret = 1;

	log_init(argv[0]);
	if (argc < 2) {
		fprintf(stderr, "usage: %s SOCKET [--no-extras] [--max-maps=N]\n",
			argv[0]);
		return 2;
	}
	pthread_mutex_init(&d.lock, NULL);
	pthread_cond_init(&d.cond, NULL);
	d.regs[TESTDEV_REG_ID / 8] = TESTDEV_ID;
	d.bar2_fd = memfd_create("testdev-bar2", MFD_CLOEXEC);
	if (d.bar2_fd < 0 || ftruncate(d.bar2_fd, TESTDEV_BAR2_SIZE) < 0) {
		perror("memfd");
		return 1;
	}
	d.bar2 = mmap(NULL, TESTDEV_BAR2_SIZE, PROT_READ | PROT_WRITE,
		      MAP_SHARED, d.bar2_fd, 0);
	if (d.bar2 == MAP_FAILED) {
		perror("mmap");
		return 1;
	}

	desc.regions[VFU_PCI_BAR0_REGION_INDEX] = (struct vfu_region_desc) {
		.size = TESTDEV_BAR0_SIZE,
		.flags = VFU_REGION_FLAG_READ | VFU_REGION_FLAG_WRITE,
		.fd = -1,
	};
	desc.regions[VFU_PCI_CONFIG_REGION_INDEX] = (struct vfu_region_desc) {
		.size = TESTDEV_CONFIG_SIZE,
		.flags = VFU_REGION_FLAG_READ | VFU_REGION_FLAG_WRITE,
		.fd = -1,
	};
	bar2->size = TESTDEV_BAR2_SIZE;
	bar2->flags = VFU_REGION_FLAG_READ | VFU_REGION_FLAG_WRITE |
		      VFU_REGION_FLAG_MMAP;
	bar2->fd = d.bar2_fd;
	bar2->sparse[0] = (struct vfu_sparse_area) {
		TESTDEV_SPARSE0_OFF, TESTDEV_SPARSE0_SIZE };
	bar2->sparse[1] = (struct vfu_sparse_area) {
		TESTDEV_SPARSE1_OFF, TESTDEV_SPARSE1_SIZE };
	bar2->nr_sparse = 2;
	bar2->trap_while_saving[0] = (struct vfu_sparse_area) {
		TESTDEV_TRAP_OFF, TESTDEV_TRAP_SIZE };
	bar2->nr_trap_while_saving = 1;
	for (int i = VFU_PCI_BAR0_REGION_INDEX; i < VFU_PCI_NUM_REGIONS; i++)
		if (!desc.regions[i].size)
			desc.regions[i].fd = -1;
	desc.irq_count[VFU_PCI_MSIX_IRQ_INDEX] = TESTDEV_MSIX_VECTORS;
	desc.ops = &testdev_ops;
	for (int i = 2; i < argc; i++) {
		if (!strcmp(argv[i], "--no-extras"))
			desc.ops = &testdev_ops_basic;
		else if (!strncmp(argv[i], "--max-maps=", 11))
			cfg.max_dma_maps = (uint32_t)strtoul(argv[i] + 11,
							     NULL, 0);
	}
	desc.dev = &d;

	d.srv = vfu_server_create(&desc, &cfg);
	if (!d.srv) {
		fprintf(stderr, "vfu_server_create failed\n");
		goto out_unmap;
	}
	if (vfu_server_listen(d.srv, argv[1], NULL)) {
		fprintf(stderr, "cannot listen on %s\n", argv[1]);
		goto out_destroy;
	}
	if (pthread_create(&d.worker, NULL, dma_worker, &d))
		goto out_destroy;
	the_srv = d.srv;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	ret = vfu_server_run(d.srv) ? 1 : 0;
	the_srv = NULL;

	pthread_mutex_lock(&d.lock);
	d.quit = true;
	pthread_cond_signal(&d.cond);
	pthread_mutex_unlock(&d.lock);
	pthread_join(d.worker, NULL);
out_destroy:
	vfu_server_destroy(d.srv);
	unlink(argv[1]);
out_unmap:
	munmap(d.bar2, TESTDEV_BAR2_SIZE);
	close(d.bar2_fd);
	free(d.out);
	free(d.in);
	return ret;
}
