/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * ferry-dma device model: the public face used by ferry-dev, the tests and
 * the fuzzer. The model implements struct vfu_device_ops (regions,
 * reset, IRQ changes, migration) but never calls the vfio-user server
 * itself: everything it needs from the outside world goes through a
 * small host-ops table, so a test can instantiate the device in-process
 * with guest memory in a plain buffer.
 *
 * Threads. The model runs an engine thread (descriptor processing) and,
 * with a dirty rate configured, a thread that dirties device memory.
 * Both call host ops; host ops must not call back into the model.
 * Every vfu_device_ops callback may be called from any one thread at a
 * time (the server's dispatcher).
 */
#ifndef FERRY_DMA_H
#define FERRY_DMA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/ferry_dma_hw.h"
#include "ferry/vfu_server.h"

struct ferry_dma;

struct ferry_dma_host_ops {
	/* Guest memory access at an IOVA: 0 or -errno (-EFAULT unmapped). */
	int (*dma_read)(void *host, uint64_t iova, void *buf, size_t len);
	int (*dma_write)(void *host, uint64_t iova, const void *buf,
			 size_t len);
	/* Signal vector `vector` of IRQ index `index` (VFU_PCI_*_IRQ_INDEX,
	 * the one of the configured ferry_dma_irq_mode): 1 delivered, 0 not
	 * (no eventfd, or INTx masked: the device keeps it pending and
	 * signals again when told through irqs_changed), -errno. */
	int (*irq_trigger)(void *host, uint32_t index, uint32_t vector);
};

/* How the device interrupts (docs/ferry-dma.md "Interrupts"). */
enum ferry_dma_irq_mode {
	FERRY_DMA_IRQ_MODE_MSIX,	/* MSI-X capability (the default) */
	FERRY_DMA_IRQ_MODE_MSI,		/* plain MSI capability, 2 vectors */
	FERRY_DMA_IRQ_MODE_INTX,	/* no capability: level INTA# only */
	FERRY_DMA_IRQ_MODE_NR,
};

struct ferry_dma_config {
	const char *name;		/* for logs; NULL: "ferry-dma" */
	uint64_t devmem_size;		/* 0: FERRY_DMA_DEVMEM_DEFAULT */
	uint32_t msix_vectors;		/* 0: FERRY_DMA_DEFAULT_VECTORS */
	uint64_t dirty_rate;		/* device-internal dirtying, bytes/s */
	uint32_t load_latency_ms;	/* sleep after loading the header */
	/* Offer no PRE_COPY: all of the state at the switchover, as a
	 * device without pre-copy support does. */
	bool no_precopy;
	enum ferry_dma_irq_mode irq_mode;
};

/* Validate a configuration: 0 or -EINVAL with a reason in err. */
int ferry_dma_config_check(const struct ferry_dma_config *cfg,
			   char *err, size_t errlen);

int ferry_dma_create(const struct ferry_dma_config *cfg,
		     const struct ferry_dma_host_ops *host_ops, void *host,
		     struct ferry_dma **out);
void ferry_dma_destroy(struct ferry_dma *d);

/* Fill a server device description: regions, IRQ counts, ops, dev. */
void ferry_dma_describe(struct ferry_dma *d, struct vfu_device_desc *desc);

/* The ops table (also reachable through ferry_dma_describe()). */
extern const struct vfu_device_ops ferry_dma_vfu_ops;

/* Introspection for tests and tools. */
uint64_t ferry_dma_devmem_size(struct ferry_dma *d);
/* CRC32C of the whole device memory (call while the device is stopped
 * for a stable value). */
uint32_t ferry_dma_devmem_crc(struct ferry_dma *d);
/* Direct pointer to device memory (tests). */
void *ferry_dma_devmem(struct ferry_dma *d);
/* Wait until the engine has nothing to do or timeout_ms passes: 0 idle,
 * -ETIMEDOUT. */
int ferry_dma_wait_idle(struct ferry_dma *d, uint32_t timeout_ms);

/*
 * Live update (ferry-dev --takeover): the device moves to a new process
 * with no reset and nothing lost.
 *
 * pause: the engine ends the step it is in (one 64 KiB slice at most; a
 * descriptor stays in flight with its progress, as when the device stops
 * for migration) and takes no new one; the internal dirtier stops too.
 * 0, or -ETIMEDOUT if the step did not end within timeout_ms (nothing is
 * paused then). A paused device raises no interrupt of its own.
 * unpause: signal what became deliverable and run again.
 *
 * save: while paused, and with the server held so that no request
 * changes the device under it: the state as a versioned blob (malloc'd),
 * for adopt. -EBUSY while a migration data session is open (PRE_COPY,
 * STOP_COPY, RESUMING: the stream position is not carried; update the
 * server before or after a migration, not during it).
 *
 * adopt: a device rebuilt from a saved state over the old process's
 * device memory (devmem_fd, the memfd of ferry_dma_devmem_fd(): the same
 * pages, mapped again, no copy; ours from here on, closed on failure).
 * It starts paused: nothing runs, no interrupt is signalled and device
 * memory is not written until ferry_dma_unpause(). cfg must describe the
 * same device (memory size, vectors, pre-copy or not); the knobs (dirty
 * rate, load latency, name) may change. Every field of the blob is
 * checked; err says what was refused.
 */
int ferry_dma_pause(struct ferry_dma *d, uint32_t timeout_ms);
void ferry_dma_unpause(struct ferry_dma *d);
int ferry_dma_save(struct ferry_dma *d, void **blob, size_t *len);
int ferry_dma_devmem_fd(struct ferry_dma *d);
enum vfu_mig_state ferry_dma_mig_state(struct ferry_dma *d);

/* Debug only: state a broken live update would lose, for the negative
 * controls of the tests (the field is left as a fresh device has it). */
#define FERRY_DMA_X_LOSE_IRQ_PENDING	(1u << 0)	/* pending causes, PBA */
#define FERRY_DMA_X_LOSE_RING_TAIL	(1u << 1)

struct ferry_dma_adopt {
	int devmem_fd;
	const void *blob;
	size_t len;
	uint32_t x_lose;		/* FERRY_DMA_X_LOSE_*: tests only */
};

int ferry_dma_adopt(const struct ferry_dma_config *cfg,
		    const struct ferry_dma_host_ops *host_ops, void *host,
		    const struct ferry_dma_adopt *from, char *err,
		    size_t errlen, struct ferry_dma **out);

/* Migration stream format constants (docs/ferry-dma.md). */
#define FERRY_DMA_MIG_MAGIC		0x314d47494d414446ull	/* "FDAMIGM1" */
/* 2.0: RESETS in the STATE record (1.x streams are refused). */
#define FERRY_DMA_MIG_MAJOR		2u
#define FERRY_DMA_MIG_MINOR		0u
#define FERRY_DMA_MIG_CHUNK		(64u * 1024u)

#endif /* FERRY_DMA_H */
