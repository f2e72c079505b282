// SPDX-License-Identifier: BSD-3-Clause
/*
 * Fuzz target: the migration stream loader. The input is a migration
 * stream, loaded by the real engine (mig_load_start()) into a small VM
 * (fuzz_mig.h) with a real ferry-dma device reached over vfio-user, so
 * that DEV_DATA sections end up in the device model's resume parser and
 * END drives the device through RESUMING -> STOP -> RUNNING.
 *
 * Input: one option byte (FZ_OPT_*), then the stream.
 *	bit 0	the channel has a return path (the loader sends READY,
 *		the switchover-ack and RESUMED to nowhere and waits for
 *		COMMIT, which must be in the input)
 *	bit 1	recompute the stream's CRCs first (fz_stream_fix_crcs),
 *		so that mutations get past the framing checks
 *	bit 2	a VM without devices
 * The channel returns EOF at the end of the input, so every input ends
 * quickly; the device is set up once per process and reset after each
 * input.
 *
 * Beyond memory safety the target checks the engine's promises: a
 * failed load never started the guest and leaves no device outside
 * RUNNING; a completed one applied the VMM state and started the guest.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/mig_engine.h"
#include "ferry/vdev.h"
#include "fuzz.h"
#include "fuzz_mig.h"

/* Generous for this VM: every read is from memory and the device is in
 * this process; only a hang would take this long. */
#define IO_TIMEOUT_MS		2000u

static struct fz_host host;
static struct fz_dev *dev;
static struct vdev *vdev;
static struct mig_engine *engine;

static void teardown(void)
{
	mig_engine_destroy(engine);
	fz_dev_stop(dev);
	fz_host_fini(&host);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	struct mig_params p;
	char err[256];

	fuzz_log_init();
	signal(SIGPIPE, SIG_IGN);
	if (fz_host_init(&host) || fz_dev_start("mig-load-dev", &dev, &vdev) ||
	    fz_host_attach(&host, vdev) ||
	    mig_engine_create(&fz_host_ops, &host, &engine)) {
		fprintf(stderr, "fuzz-mig-load: set-up failed\n");
		abort();
	}
	mig_engine_get_params(engine, &p);
	p.io_timeout_ms = IO_TIMEOUT_MS;
	if (mig_engine_set_params(engine, &p, err, sizeof(err))) {
		fprintf(stderr, "fuzz-mig-load: %s\n", err);
		abort();
	}
	atexit(teardown);
	return 0;
}

static void check(bool ok, const char *what)
{
	if (!ok) {
		fprintf(stderr, "fuzz-mig-load: broken promise: %s\n", what);
		abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct mig_channel *ch;
	struct mig_stats st;
	uint8_t *copy = NULL;
	const uint8_t *stream;
	char err[256];
	bool with_dev;
	uint8_t opt;

	if (!engine)
		LLVMFuzzerInitialize(NULL, NULL);
	if (size < 1)
		return 0;
	opt = data[0];
	stream = data + 1;
	size--;
	if (opt & FZ_OPT_FIX_CRCS) {
		copy = malloc(size ? size : 1);
		if (!copy)
			abort();
		memcpy(copy, stream, size);
		fz_stream_fix_crcs(copy, size);
		stream = copy;
	}
	with_dev = !(opt & FZ_OPT_NO_DEVICE);
	if (mig_engine_set_devices(engine, &vdev, with_dev ? 1 : 0))
		abort();
	/* A fresh VM each time: RAM all zero, nothing loaded or run. */
	memset(host.mem, 0, FZ_RAM_SIZE);
	host.dev = with_dev ? vdev : NULL;
	host.loaded = 0;
	host.applied = host.started = host.failed = false;

	ch = fz_chan_reader(stream, size, opt & FZ_OPT_RETURN_PATH);
	if (!ch)
		abort();
	/* Only the set-up can fail here (the engine takes ch either way);
	 * everything the input does happens on the engine's thread. */
	if (mig_load_start(engine, ch, err, sizeof(err))) {
		fprintf(stderr, "fuzz-mig-load: cannot start: %s\n", err);
		abort();
	}
	mig_engine_wait(engine);
	mig_engine_stats(engine, &st);

	if (st.status == MIG_STATUS_COMPLETED) {
		check(host.applied && host.started, "completed without "
		      "applying the VMM state and starting the guest");
		check(!with_dev || vdev->mig_state == VFU_MIG_STATE_RUNNING,
		      "completed with the device not RUNNING");
	} else {
		check(st.status == MIG_STATUS_FAILED, "load neither completed "
		      "nor failed");
		check(!host.started, "a failed load started the guest");
		check(host.failed, "a failed load did not tell the host");
		check(!with_dev || vdev->mig_state == VFU_MIG_STATE_RUNNING,
		      "a failed load left the device outside RUNNING");
	}
	/* Power-on state for the next input: a device that took a stream
	 * runs with it (and may be DMAing into this RAM). */
	if (with_dev) {
		vdev->ops->reset(vdev);
		vdev->mig_state = VFU_MIG_STATE_RUNNING;
	}
	free(copy);
	return 0;
}
