/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Device state over multifd (seed 004's design; engine-private): at the
 * switchover every device's STOP_COPY stream is cut into packets {device,
 * index, flags} that travel on whichever multifd channel is free, the
 * last one flagged LAST.
 *
 * Source: mig_devstate_save() runs a save thread per device, reading its
 * stream and queueing the packets, and returns when every device's LAST
 * is queued.
 *
 * Destination: a reassembler per device keeps the packets that arrived
 * ahead of their turn (at most max-queued bytes of them, if bounded),
 * and a load thread per device writes them to the device strictly in
 * index order -- but only once the main channel's own device data is all
 * loaded (mig_devstate_main_done()), and a LAST that came first waits
 * for the packets before it. A packet that never comes is found when
 * every channel has ended.
 */
#ifndef FERRY_LIB_MIG_DEVSTATE_H
#define FERRY_LIB_MIG_DEVSTATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MIG_DEVPKT_F_LAST	(1u << 0)

struct mig_engine;
struct mf_set;
struct mig_devstate;

int mig_devstate_save(struct mig_engine *e, struct mf_set *mf);

int mig_devstate_load_create(struct mig_engine *e, unsigned nr_channels,
			     struct mig_devstate **out);
/* A packet from a channel: data is base + off, len bytes; base (malloc'd)
 * is taken whatever happens. -errno (reported) on a bad packet or the
 * queue bound. */
int mig_devstate_push(struct mig_devstate *ds, uint32_t dev, uint32_t idx,
		      uint32_t flags, void *base, size_t off, size_t len);
void mig_devstate_main_done(struct mig_devstate *ds);
void mig_devstate_channel_ended(struct mig_devstate *ds);
/* Every device loaded up to its LAST packet: 0, or -errno. */
int mig_devstate_wait(struct mig_devstate *ds);
/* Stop the load threads (a failure elsewhere), join, free. */
void mig_devstate_destroy(struct mig_devstate *ds);

#endif /* FERRY_LIB_MIG_DEVSTATE_H */
