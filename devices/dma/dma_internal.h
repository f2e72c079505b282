/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * ferry-dma model internals shared by regs.c, engine.c, devmem.c,
 * migration.c and device.c. Not for users of the model.
 *
 * Locking: d->lock protects every field below except devmem contents and
 * the dirty bitmap (atomics, see devmem.c). The engine drops the lock
 * while it does DMA (a host op may block); it sets engine_busy for that
 * window, and whoever needs a still engine (quiesce, reset) waits on
 * d->cond for engine_busy to clear.
 */
#ifndef FERRY_DMA_INTERNAL_H
#define FERRY_DMA_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "ferry_dma.h"

#define FDMA_CONFIG_SIZE	4096u
#define FDMA_CONFIG_SAVED	256u	/* standard header + our capability */
#define FDMA_MSIX_CAP_OFF	0x40u	/* MSI-X or MSI: the one capability */
#define FDMA_MSI_QMASK		1u	/* MSI Multiple Message Capable: */
#define FDMA_MSI_VECTORS	(1u << FDMA_MSI_QMASK)	/* 2 vectors */
#define FDMA_SLICE		(64u * 1024u)	/* engine work unit */
#define FDMA_PAGE		4096u

/* Pairs of 64-bit registers whose HI half is latched by reading LO. */
enum {
	FDMA_LATCH_COMPLETED,
	FDMA_LATCH_BYTES,
	FDMA_LATCH_DEVMEM_SIZE,
	FDMA_LATCH_IRQS_RAISED,
	FDMA_LATCH_NR,
};

/* The descriptor being processed; survives a stop and a migration. */
struct fdma_inflight {
	bool valid;
	struct ferry_dma_desc desc;
	uint64_t done;		/* bytes of desc.len processed */
	int32_t status;		/* 0 so far, else FERRY_DMA_ST_E*: the
				 * completion is all that is left to do */
	uint32_t crc;		/* CRC32C state over this descriptor's bytes */
	uint32_t run_crc;	/* RUNNING_CRC state continued over them */
};

/* Engine-visible register file (BAR0 registers). */
struct fdma_regs {
	uint32_t ctrl;
	uint64_t ring_base;
	uint32_t ring_size;
	uint32_t ring_head;
	uint32_t ring_tail;
	uint32_t irq_status;
	uint32_t irq_mask;
	uint32_t irq_pending;	/* causes raised while masked in IRQ_MASK */
	uint64_t completed;
	uint64_t bytes;
	uint32_t running_crc;	/* CRC32C state; register shows final() */
	uint32_t errors;
	uint64_t irqs_raised;
	uint32_t scratch;
	uint32_t latch[FDMA_LATCH_NR];
	bool halted;		/* ring fetch failed: stop until reset */
};

/*
 * The device state as the migration stream's STATE record carries it
 * (docs/ferry-dma.md), and inside a live update's state too. Packed:
 * its layout is the wire format.
 */
struct fdma_mig_state {
	uint32_t ctrl;
	uint32_t ring_size;
	uint64_t ring_base;
	uint32_t ring_head;
	uint32_t ring_tail;
	uint32_t irq_status;
	uint32_t irq_mask;
	uint32_t irq_pending;
	uint32_t errors;
	uint64_t completed;
	uint64_t bytes;
	uint64_t irqs_raised;
	uint32_t running_crc;
	uint32_t scratch;
	uint32_t latch[FDMA_LATCH_NR];
	uint32_t halted;
	uint32_t inflight_valid;
	int32_t inflight_status;
	uint32_t inflight_crc;
	uint32_t inflight_run_crc;
	uint32_t msix_pba;
	uint64_t inflight_done;
	struct ferry_dma_desc inflight_desc;
	uint8_t msix_table[FERRY_DMA_MAX_VECTORS * PCI_MSIX_ENTRY_SIZE];
	uint8_t config[FDMA_CONFIG_SAVED];
	uint32_t resets;	/* stream 2.0 */
} __attribute__((packed));

struct fdma_save {
	bool active;
	bool stop_copy;		/* STOP_COPY: state + end follow the memory */
	bool hdr_done;
	bool state_done;
	bool end_done;
	uint64_t init_cursor;	/* next chunk of the initial pass */
	uint64_t dirty_cursor;	/* where the dirty scan resumes */
	uint32_t seq;		/* next record sequence number */
	uint8_t *out;		/* one encoded record */
	size_t out_len;
	size_t out_pos;
	bool out_initial;	/* out holds initial (not re-dirtied) data */
	uint64_t initial_total;
	uint64_t initial_read;
};

struct fdma_load {
	bool active;
	bool hdr_done;
	bool complete;		/* END record seen */
	bool have_state;
	int err;		/* sticky: first error, negative errno */
	uint32_t next_seq;
	uint8_t *in;		/* accumulating header or record */
	size_t in_len;
	size_t in_need;
	uint64_t total;		/* bytes consumed, for messages */
	uint8_t *state;		/* the decoded STATE payload */
};

struct ferry_dma {
	char name[64];
	struct ferry_dma_config cfg;
	const struct ferry_dma_host_ops *host_ops;
	void *host;

	pthread_mutex_t lock;
	pthread_cond_t cond;

	/* Device memory (BAR2): memfd, mapping, chunk dirty bitmap. */
	int devmem_fd;
	uint8_t *devmem;
	uint64_t nr_chunks;
	uint64_t *dirty;	/* bit per FERRY_DMA_MIG_CHUNK, atomics */

	uint8_t config[FDMA_CONFIG_SIZE];
	uint8_t config_wmask[FDMA_CONFIG_SIZE];
	uint8_t msix_table[FERRY_DMA_MAX_VECTORS * PCI_MSIX_ENTRY_SIZE];
	uint32_t msix_pba;	/* MSI-X/MSI vectors waiting for an eventfd
				 * (INTx: always 0, the level is the state) */

	struct fdma_regs regs;
	struct fdma_inflight inflight;

	enum vfu_mig_state mig_state;
	struct fdma_save save;
	struct fdma_load load;

	uint32_t resets;	/* RESETS: survives every reset */

	pthread_t engine_thread;
	bool engine_started;
	bool engine_busy;
	bool reset_pending;	/* CTRL_RESET while the engine was busy */
	bool stopping;		/* destroy: threads exit */
	/* Live update: engine and dirtier take no new step (takeover.c). */
	bool paused;

	pthread_t dirty_thread;
	bool dirty_started;
	uint64_t dirty_seed;
	uint64_t dirty_counter;
};

/* device.c */
bool fdma_is_running(const struct ferry_dma *d);
int fdma_new(const struct ferry_dma_config *cfg,
	     const struct ferry_dma_host_ops *host_ops, void *host,
	     struct ferry_dma **out);
int fdma_start(struct ferry_dma *d);
void fdma_free(struct ferry_dma *d);

/* regs.c */
void fdma_config_init(struct ferry_dma *d);
void fdma_regs_soft_reset(struct ferry_dma *d);
ssize_t fdma_config_access(struct ferry_dma *d, uint64_t off, void *buf,
			   uint32_t count, bool is_write);
ssize_t fdma_bar0_access(struct ferry_dma *d, uint64_t off, void *buf,
			 uint32_t count, bool is_write);
/* The IRQ index (VFU_PCI_*_IRQ_INDEX) of the interrupt mode, and the
 * vectors it has (INTx: 1). */
uint32_t fdma_irq_index(const struct ferry_dma *d);
uint32_t fdma_irq_count(const struct ferry_dma *d);
/* Raise interrupt causes (FERRY_DMA_IRQ_*): status, mask, vectors. */
void fdma_irq_raise(struct ferry_dma *d, uint32_t causes);
/* Signal what became deliverable (unmask, eventfd assigned, resume). */
void fdma_irq_flush(struct ferry_dma *d);

/* engine.c */
int fdma_engine_start(struct ferry_dma *d);
void fdma_engine_join(struct ferry_dma *d);
/* Called with d->lock held: wait until the engine is between slices. */
void fdma_engine_quiesce(struct ferry_dma *d);
void fdma_engine_kick(struct ferry_dma *d);
bool fdma_engine_has_work(const struct ferry_dma *d);
/* 0 or the FERRY_DMA_ST_* a descriptor completes with without any DMA. */
int32_t fdma_desc_check(const struct ferry_dma *d,
			const struct ferry_dma_desc *desc);

/* devmem.c */
int fdma_devmem_init(struct ferry_dma *d);
void fdma_devmem_fini(struct ferry_dma *d);
void fdma_devmem_mark(struct ferry_dma *d, uint64_t off, uint64_t len);
bool fdma_devmem_test_clear(struct ferry_dma *d, uint64_t chunk);
uint64_t fdma_devmem_count_dirty(struct ferry_dma *d, uint64_t below);
void fdma_devmem_clear_all(struct ferry_dma *d);
int fdma_devmem_zero(struct ferry_dma *d);
ssize_t fdma_bar2_access(struct ferry_dma *d, uint64_t off, void *buf,
			 uint32_t count, bool is_write);
int fdma_dirty_start(struct ferry_dma *d);
void fdma_dirty_join(struct ferry_dma *d);

int fdma_devmem_adopt(struct ferry_dma *d, int fd, char *err, size_t errlen);

/* migration.c */
extern const struct vfu_mig_ops fdma_mig_ops;
extern const struct vfu_mig_ops fdma_mig_ops_stop_copy;
void fdma_mig_reset(struct ferry_dma *d);
/* Lock held. A saving or resuming session is open (PRE_COPY, STOP_COPY,
 * RESUMING...): state that only a migration stream carries. */
bool fdma_mig_session_open(const struct ferry_dma *d);
/* The device state in and out of struct fdma_mig_state; check validates
 * what apply trusts (pr_err says why; -EINVAL). Lock held. */
void fdma_state_capture(struct ferry_dma *d, struct fdma_mig_state *s);
int fdma_state_check(struct ferry_dma *d, const struct fdma_mig_state *s);
void fdma_state_apply(struct ferry_dma *d, const struct fdma_mig_state *s);

#endif /* FERRY_DMA_INTERNAL_H */
