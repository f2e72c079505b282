// SPDX-License-Identifier: BSD-3-Clause
/*
 * libFuzzer target: bytes fed to an in-process ferry-dma's resume path
 * (STOP->RESUMING, write_data in pieces, RESUMING->STOP, then RUNNING
 * when it loaded). Must never crash, hang or leak; a rejected stream must
 * leave a device that DEVICE_RESET recovers.
 *
 * The first input byte picks how the stream is split into writes, so the
 * reassembly of headers and records across writes is explored too. The
 * seeds are valid streams produced by the same device model: the
 * committed corpus (gen_corpus.c) and, for the standalone driver, the
 * head of one made in-process (ferry_fuzz_seeds()).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/log.h"
#include "ferry/util.h"
#include "ferry_dma.h"
#include "fuzz.h"

#define FUZZ_DEVMEM	(64u * 1024u)
#define FUZZ_GUEST	(64u * 1024u)
#define FUZZ_SEED_MAX	(4u * 1024u)

static uint8_t guest[FUZZ_GUEST];

static int f_read(void *h, uint64_t iova, void *buf, size_t len)
{
	if (!range_within(iova, len, sizeof(guest)))
		return -EFAULT;
	memcpy(buf, guest + iova, len);
	return 0;
}

static int f_write(void *h, uint64_t iova, const void *buf, size_t len)
{
	if (!range_within(iova, len, sizeof(guest)))
		return -EFAULT;
	memcpy(guest + iova, buf, len);
	return 0;
}

static int f_irq(void *h, uint32_t index, uint32_t vector)
{
	return 1;
}

static const struct ferry_dma_host_ops fuzz_ops = {
	.dma_read = f_read,
	.dma_write = f_write,
	.irq_trigger = f_irq,
};

static struct ferry_dma *dev;

static void fuzz_init(void)
{
	struct ferry_dma_config cfg = {
		.name = "fuzz",
		.devmem_size = FUZZ_DEVMEM,
	};

	fuzz_log_init();
	if (ferry_dma_create(&cfg, &fuzz_ops, NULL, &dev))
		abort();
}

static uint8_t seed_buf[FUZZ_DEVMEM * 2];
static struct ferry_fuzz_seed seed;

/* A valid stream: selector byte, then what a saving device produces. */
static void make_seed(void)
{
	const struct vfu_mig_ops *m = ferry_dma_vfu_ops.mig;
	size_t len = 1;
	ssize_t n;

	seed_buf[0] = 0;	/* split selector: one write */
	memset(ferry_dma_devmem(dev), 0xa5, 4096);
	m->set_state(dev, VFU_MIG_STATE_RUNNING, VFU_MIG_STATE_STOP);
	m->set_state(dev, VFU_MIG_STATE_STOP, VFU_MIG_STATE_STOP_COPY);
	while ((n = m->read_data(dev, seed_buf + len,
				 sizeof(seed_buf) - len)) > 0)
		len += (size_t)n;
	m->set_state(dev, VFU_MIG_STATE_STOP_COPY, VFU_MIG_STATE_STOP);
	ferry_dma_vfu_ops.reset(dev);
	seed.data = seed_buf;
	/* A whole stream (> 64 KiB) is longer than the standalone driver's
	 * input cap, and its mutator misbehaves near that cap; the seed
	 * keeps the header and the start of the first record, which is where
	 * the framing checks are. */
	seed.len = MIN(len, (size_t)FUZZ_SEED_MAX);
}

size_t ferry_fuzz_seeds(const struct ferry_fuzz_seed **out)
{
	if (!dev) {
		fuzz_init();
		make_seed();
	}
	*out = &seed;
	return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const struct vfu_mig_ops *m = ferry_dma_vfu_ops.mig;
	size_t pos = 1, piece;

	if (!dev) {
		fuzz_init();
		make_seed();
	}
	if (size < 1)
		return 0;
	piece = data[0] ? (size_t)data[0] * 13 : size;

	m->set_state(dev, VFU_MIG_STATE_RUNNING, VFU_MIG_STATE_STOP);
	m->set_state(dev, VFU_MIG_STATE_STOP, VFU_MIG_STATE_RESUMING);
	while (pos < size) {
		size_t n = MIN(piece, size - pos);

		if (m->write_data(dev, data + pos, n) < 0)
			break;
		pos += n;
	}
	if (m->set_state(dev, VFU_MIG_STATE_RESUMING,
			 VFU_MIG_STATE_STOP) == 0) {
		/* A loaded state must run without harm; then go back. */
		m->set_state(dev, VFU_MIG_STATE_STOP, VFU_MIG_STATE_RUNNING);
		ferry_dma_wait_idle(dev, 1000);
		m->set_state(dev, VFU_MIG_STATE_RUNNING, VFU_MIG_STATE_STOP);
		m->set_state(dev, VFU_MIG_STATE_STOP, VFU_MIG_STATE_RUNNING);
	}
	ferry_dma_vfu_ops.reset(dev);
	return 0;
}
