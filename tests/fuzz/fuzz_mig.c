// SPDX-License-Identifier: BSD-3-Clause
/*
 * The small VM, the in-process device and the memory channels of the
 * migration fuzz target and the corpus generator (see fuzz_mig.h).
 */
#include <errno.h>
#include <json-c/json.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ferry/crc32c.h"
#include "ferry/log.h"
#include "ferry/mig_stream.h"
#include "ferry/util.h"
#include "ferry/vfu_server.h"
#include "ferry_dma.h"
#include "fuzz.h"
#include "fuzz_mig.h"

#define FZ_VM_NAME	"fuzz-vm"
#define FZ_VCPU_MAGIC	0x55504356u	/* "VCPU" */

/* Bits of fz_host.loaded */
enum {
	FZ_LOADED_VCPU0		= 1u << 0,	/* ... one per vCPU */
	FZ_LOADED_IRQCHIP	= 1u << 8,
	FZ_LOADED_CLOCK		= 1u << 9,
	FZ_LOADED_SERIAL	= 1u << 10,
	FZ_LOADED_PCI		= 1u << 11,
};

/* ---- the host ---- */

int fz_host_init(struct fz_host *h)
{
	memset(h, 0, sizeof(*h));
	h->vcpus = FZ_VCPUS;
	h->mem = MAP_FAILED;
	h->mem_fd = memfd_create("fuzz-ram", MFD_CLOEXEC);
	if (h->mem_fd < 0 || ftruncate(h->mem_fd, FZ_RAM_SIZE) < 0)
		return -errno;
	h->mem = mmap(NULL, FZ_RAM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
		      h->mem_fd, 0);
	if (h->mem == MAP_FAILED) {
		h->mem = NULL;
		return -errno;
	}
	return 0;
}

void fz_host_fini(struct fz_host *h)
{
	if (h->mem)
		munmap(h->mem, FZ_RAM_SIZE);
	h->mem = NULL;
	close_safely(&h->mem_fd);
}

int fz_host_attach(struct fz_host *h, struct vdev *dev)
{
	int ret;

	/* As ferry-vmm maps RAM for a device: the memfd, so the device's
	 * writes land in guest RAM directly. */
	ret = vdev_dma_map(dev, FZ_LO_GPA, FZ_RANGE_SIZE, h->mem_fd, 0,
			   VFU_DMA_FLAG_READ | VFU_DMA_FLAG_WRITE, h->mem);
	if (!ret)
		ret = vdev_dma_map(dev, FZ_HI_GPA, FZ_RANGE_SIZE, h->mem_fd,
				   FZ_RANGE_SIZE, VFU_DMA_FLAG_READ |
				   VFU_DMA_FLAG_WRITE, h->mem + FZ_RANGE_SIZE);
	if (!ret)
		h->dev = dev;
	return ret;
}

static int host_ram_describe(void *opaque, struct mig_ram *ram)
{
	struct fz_host *h = opaque;

	memset(ram, 0, sizeof(*ram));
	for (unsigned i = 0; i < 2; i++)
		ram->r[i] = (struct mig_ram_range){
			.gpa = i ? FZ_HI_GPA : FZ_LO_GPA,
			.size = FZ_RANGE_SIZE,
			.hva = h->mem + i * FZ_RANGE_SIZE,
			.has_fd = true,
			.fd = h->mem_fd,
			.fd_offset = i * FZ_RANGE_SIZE,
		};
	ram->nr = 2;
	ram->pages = 2 * FZ_RANGE_PAGES;
	return 0;
}

static int host_dirty_log_start(void *opaque)
{
	return 0;
}

/* Nothing runs in this VM: no vCPU ever dirties a page. */
static int host_dirty_log_sync(void *opaque, uint64_t *bitmap)
{
	return 0;
}

static void host_dirty_log_stop(void *opaque)
{
}

static bool host_running(void *opaque)
{
	return true;
}

static void host_pause(void *opaque)
{
}

static void host_resume(void *opaque)
{
}

static int host_set_saving_traps(void *opaque, bool trap)
{
	return 0;
}

static struct json_object *host_config(void *opaque)
{
	struct fz_host *h = opaque;
	struct json_object *cfg = json_object_new_object();

	if (!cfg)
		return NULL;
	json_object_object_add(cfg, "vm", json_object_new_string(FZ_VM_NAME));
	json_object_object_add(cfg, "vcpus", json_object_new_int(h->vcpus));
	return cfg;
}

static int host_config_check(void *opaque, struct json_object *src,
			     char *err, size_t errlen)
{
	struct fz_host *h = opaque;
	struct json_object *v;

	if (!json_object_object_get_ex(src, "vm", &v) ||
	    !json_object_is_type(v, json_type_string) ||
	    strcmp(json_object_get_string(v), FZ_VM_NAME)) {
		snprintf(err, errlen, "configuration mismatch: vm is \"%s\" "
			 "on the source", v ? json_object_get_string(v) :
			 "(none)");
		return -EINVAL;
	}
	if (!json_object_object_get_ex(src, "vcpus", &v) ||
	    !json_object_is_type(v, json_type_int) ||
	    json_object_get_int64(v) != h->vcpus) {
		snprintf(err, errlen, "configuration mismatch: %lld vCPUs on "
			 "the source, %u here",
			 v ? (long long)json_object_get_int64(v) : -1LL,
			 h->vcpus);
		return -EINVAL;
	}
	return 0;
}

static int host_state_save(void *opaque, mig_put_fn put, void *ctx,
			   char *err, size_t errlen)
{
	struct fz_host *h = opaque;
	uint8_t buf[FZ_PCI_LEN];
	int ret = 0;

	for (uint32_t i = 0; !ret && i < h->vcpus; i++) {
		uint32_t magic = FZ_VCPU_MAGIC;

		memset(buf, (int)(0x10 + i), FZ_VCPU_LEN);
		memcpy(buf, &magic, sizeof(magic));
		memcpy(buf + 4, &i, sizeof(i));
		ret = put(ctx, MIG_SEC_VCPU, i, buf, FZ_VCPU_LEN);
	}
	memset(buf, 0x5a, sizeof(buf));
	if (!ret)
		ret = put(ctx, MIG_SEC_IRQCHIP, 0, buf, FZ_IRQCHIP_LEN);
	if (!ret)
		ret = put(ctx, MIG_SEC_CLOCK, 0, buf, FZ_CLOCK_LEN);
	if (!ret)
		ret = put(ctx, MIG_SEC_SERIAL, 0, buf, FZ_SERIAL_LEN);
	if (!ret && h->dev)
		ret = put(ctx, MIG_SEC_PCI_DEV, 0, buf, FZ_PCI_LEN);
	if (ret)
		snprintf(err, errlen, "VMM state: %s", strerror(-ret));
	return ret;
}

/* Like a VMM's: known types only, each with its id range and size. */
static int host_state_load(void *opaque, uint16_t type, uint32_t id,
			   const void *data, size_t len, char *err,
			   size_t errlen)
{
	struct fz_host *h = opaque;
	uint32_t ids = 1, want, magic;
	unsigned bit;

	switch (type) {
	case MIG_SEC_VCPU:
		ids = h->vcpus;
		want = FZ_VCPU_LEN;
		bit = FZ_LOADED_VCPU0 << (id < FZ_VCPUS ? id : 0);
		break;
	case MIG_SEC_IRQCHIP:
		want = FZ_IRQCHIP_LEN;
		bit = FZ_LOADED_IRQCHIP;
		break;
	case MIG_SEC_CLOCK:
		want = FZ_CLOCK_LEN;
		bit = FZ_LOADED_CLOCK;
		break;
	case MIG_SEC_SERIAL:
		want = FZ_SERIAL_LEN;
		bit = FZ_LOADED_SERIAL;
		break;
	case MIG_SEC_PCI_DEV:
		ids = h->dev ? 1 : 0;
		want = FZ_PCI_LEN;
		bit = FZ_LOADED_PCI;
		break;
	default:
		return -ENOENT;
	}
	if (id >= ids || len != want) {
		snprintf(err, errlen, "%s section: id %u, %zu bytes (want id < "
			 "%u, %u bytes)", mig_section_name(type), id, len, ids,
			 want);
		return -EBADMSG;
	}
	if (type == MIG_SEC_VCPU) {
		memcpy(&magic, data, sizeof(magic));
		if (magic != FZ_VCPU_MAGIC) {
			snprintf(err, errlen, "vCPU %u: bad magic 0x%08x", id,
				 magic);
			return -EBADMSG;
		}
		memcpy(h->vcpu[id], data, FZ_VCPU_LEN);
	}
	h->loaded |= bit;
	return 0;
}

static int host_state_apply(void *opaque, char *err, size_t errlen)
{
	struct fz_host *h = opaque;
	unsigned need = FZ_LOADED_IRQCHIP | FZ_LOADED_CLOCK;

	for (uint32_t i = 0; i < h->vcpus; i++)
		need |= FZ_LOADED_VCPU0 << i;
	if (h->dev)
		need |= FZ_LOADED_PCI;
	if ((h->loaded & need) != need) {
		snprintf(err, errlen, "VMM state incomplete: have 0x%x, need "
			 "0x%x", h->loaded, need);
		return -EBADMSG;
	}
	h->applied = true;
	return 0;
}

static void host_state_discard(void *opaque)
{
	struct fz_host *h = opaque;

	h->loaded = 0;
}

static int host_start(void *opaque, bool run)
{
	((struct fz_host *)opaque)->started = true;
	return 0;
}

static void host_nop(void *opaque)
{
}

static void host_load_failed(void *opaque)
{
	((struct fz_host *)opaque)->failed = true;
}

const struct mig_host_ops fz_host_ops = {
	.ram_describe = host_ram_describe,
	.dirty_log_start = host_dirty_log_start,
	.dirty_log_sync = host_dirty_log_sync,
	.dirty_log_stop = host_dirty_log_stop,
	.running = host_running,
	.pause = host_pause,
	.resume = host_resume,
	.set_saving_traps = host_set_saving_traps,
	.config = host_config,
	.config_check = host_config_check,
	.state_save = host_state_save,
	.state_load = host_state_load,
	.state_apply = host_state_apply,
	.state_discard = host_state_discard,
	.start = host_start,
	.handed_over = host_nop,
	.hold_paused = host_nop,
	.outcome_unknown = host_nop,
	.load_failed = host_load_failed,
};

/* ---- the device ---- */

struct fz_dev {
	struct ferry_dma *dma;
	struct vfu_server *srv;
	struct vdev *vdev;
	pthread_t thread;
	bool thread_started;
	char path[PATH_MAX];
};

/* The model's host ops bound to the server, as in ferry-dev. */
static int dev_dma_read(void *host, uint64_t iova, void *buf, size_t len)
{
	return vfu_server_dma_read(((struct fz_dev *)host)->srv, iova, buf,
				   len);
}

static int dev_dma_write(void *host, uint64_t iova, const void *buf,
			 size_t len)
{
	return vfu_server_dma_write(((struct fz_dev *)host)->srv, iova, buf,
				    len);
}

static int dev_irq_trigger(void *host, uint32_t index, uint32_t vector)
{
	return vfu_server_irq_trigger(((struct fz_dev *)host)->srv, index,
				      vector);
}

static const struct ferry_dma_host_ops dev_host_ops = {
	.dma_read = dev_dma_read,
	.dma_write = dev_dma_write,
	.irq_trigger = dev_irq_trigger,
};

static void *dev_thread(void *arg)
{
	struct fz_dev *d = arg;

	vfu_server_run(d->srv);
	return NULL;
}

struct ferry_dma *fz_dev_model(struct fz_dev *d)
{
	return d->dma;
}

const char *fz_dev_path(struct fz_dev *d)
{
	return d->path;
}

void fz_dev_stop(struct fz_dev *d)
{
	if (!d)
		return;
	vdev_close(d->vdev);
	if (d->thread_started) {
		vfu_server_stop(d->srv);
		pthread_join(d->thread, NULL);
	}
	/* The model's threads may call into the server: model first. */
	if (d->dma)
		ferry_dma_destroy(d->dma);
	if (d->srv)
		vfu_server_destroy(d->srv);
	free(d);
}

int fz_dev_start(const char *name, struct fz_dev **out, struct vdev **vdev)
{
	struct ferry_dma_config cfg = {
		.name = name,
		.devmem_size = FZ_DEVMEM,
	};
	struct vfu_device_desc desc;
	struct fz_dev *d;
	char err[256];
	int ret;

	d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	fuzz_tmp_path(d->path, sizeof(d->path), name);
	ret = ferry_dma_create(&cfg, &dev_host_ops, d, &d->dma);
	if (ret)
		goto err;
	ferry_dma_describe(d->dma, &desc);
	ret = -ENOMEM;
	d->srv = vfu_server_create(&desc, NULL);
	if (!d->srv)
		goto err;
	ret = vfu_server_listen(d->srv, d->path, NULL);
	if (ret)
		goto err;
	ret = -pthread_create(&d->thread, NULL, dev_thread, d);
	if (ret)
		goto err;
	d->thread_started = true;
	if (vdev) {
		ret = vdev_vfio_user_open(name, d->path, &d->vdev, err,
					  sizeof(err));
		if (ret) {
			fprintf(stderr, "fuzz: opening %s: %s\n", d->path,
				err);
			goto err;
		}
		*vdev = d->vdev;
	}
	*out = d;
	return 0;

err:
	fz_dev_stop(d);
	return ret;
}

/* ---- channels ---- */

struct fz_rchan {
	struct mig_channel ch;	/* first: mig_channel_close() frees it */
	const uint8_t *buf;
	size_t len, pos;
	bool shut;
};

static int rchan_read(struct mig_channel *ch, void *buf, size_t len)
{
	struct fz_rchan *c = (struct fz_rchan *)ch;

	size_t n;

	if (c->shut)
		return -EPIPE;
	/* Like a socket at EOF: what there is lands in buf first. */
	n = MIN(len, c->len - c->pos);
	memcpy(buf, c->buf + c->pos, n);
	c->pos += n;
	ch->bytes_read += n;
	ch->last_io_ns = clock_ns();
	return n == len ? 0 : -EPIPE;
}

/* The return path goes nowhere (nobody would answer it anyway: the
 * answers are in the input). */
static int rchan_write(struct mig_channel *ch, const void *buf, size_t len)
{
	struct fz_rchan *c = (struct fz_rchan *)ch;

	if (c->shut)
		return -EPIPE;
	ch->bytes_written += len;
	return 0;
}

static void rchan_shutdown(struct mig_channel *ch)
{
	((struct fz_rchan *)ch)->shut = true;
}

static void chan_close(struct mig_channel *ch)
{
}

static const struct mig_channel_ops rchan_ops = {
	.name = "fuzz-input",
	.read_full = rchan_read,
	.write_full = rchan_write,
	.shutdown = rchan_shutdown,
	.close = chan_close,
};

struct mig_channel *fz_chan_reader(const uint8_t *buf, size_t len,
				   bool return_path)
{
	struct fz_rchan *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->ch.ops = &rchan_ops;
	c->ch.fd = -1;
	c->ch.has_return_path = return_path;
	c->buf = buf;
	c->len = len;
	return &c->ch;
}

int fz_buf_put(struct fz_buf *b, const void *data, size_t len)
{
	if (len > b->cap - b->len) {
		size_t cap = MAX(b->cap * 2, b->len + len + 4096);
		uint8_t *p = realloc(b->p, cap);

		if (!p)
			return -ENOMEM;
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, data, len);
	b->len += len;
	return 0;
}

struct fz_wchan {
	struct mig_channel ch;
	struct fz_buf *out;
};

static int wchan_read(struct mig_channel *ch, void *buf, size_t len)
{
	return -EPIPE;
}

static int wchan_write(struct mig_channel *ch, const void *buf, size_t len)
{
	struct fz_wchan *c = (struct fz_wchan *)ch;
	int ret = fz_buf_put(c->out, buf, len);

	if (!ret)
		ch->bytes_written += len;
	return ret;
}

static void wchan_shutdown(struct mig_channel *ch)
{
}

static const struct mig_channel_ops wchan_ops = {
	.name = "fuzz-output",
	.read_full = wchan_read,
	.write_full = wchan_write,
	.shutdown = wchan_shutdown,
	.close = chan_close,
};

struct mig_channel *fz_chan_writer(struct fz_buf *out)
{
	struct fz_wchan *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->ch.ops = &wchan_ops;
	c->ch.fd = -1;
	c->out = out;
	return &c->ch;
}

void fz_stream_fix_crcs(uint8_t *buf, size_t len)
{
	size_t off = MIG_STREAM_HDR_SIZE;
	uint32_t crc;

	if (len < MIG_STREAM_HDR_SIZE)
		return;
	crc = crc32c(buf, 12);
	memcpy(buf + 12, &crc, 4);
	while (len - off >= MIG_SECTION_HDR_SIZE) {
		struct mig_section sec;
		size_t avail = len - off - MIG_SECTION_HDR_SIZE;
		size_t plen;

		memcpy(&sec, buf + off, sizeof(sec));
		plen = sec.length < avail ? (size_t)sec.length : avail;
		sec.payload_crc = crc32c(buf + off + sizeof(sec), plen);
		sec.hdr_crc = crc32c(&sec, offsetof(struct mig_section,
						    hdr_crc));
		memcpy(buf + off, &sec, sizeof(sec));
		off += sizeof(sec) + plen;
	}
}
