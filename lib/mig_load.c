/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The destination side of a migration (ferry/mig_engine.h): check that
 * this VMM was configured like the source before loading anything, load
 * RAM and device data while the source iterates (acking the switchover
 * once every device holds its initial data), and run the guest only when
 * the whole stream arrived intact and every device took its state.
 */
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/log.h"
#include "ferry/mig_stream.h"
#include "ferry/util.h"
#include "mig_cpr.h"
#include "mig_devstate.h"
#include "mig_door.h"
#include "mig_engine_priv.h"
#include "mig_multifd.h"

/*
 * Multifd: both sides must say the same. The source's CONFIG names its
 * channels and the migration's id; device state travels as the source
 * decided.
 */
static int load_check_multifd(struct mig_engine *e, struct json_object *src)
{
	const struct mig_params *p = &e->run_params;
	struct json_object *mf = NULL, *v;
	unsigned n = 0;
	const char *id;

	json_object_object_get_ex(src, "multifd", &mf);
	if (mf && json_object_object_get_ex(mf, "channels", &v))
		n = (unsigned)json_object_get_int(v);
	if (!mf && !p->multifd)
		return 0;
	if (!mf || !p->multifd || n != p->multifd_channels)
		return mig_fail(e, -EINVAL, "configuration mismatch: the source "
				"uses %s%u multifd channels, this destination "
				"%s%u (migrate-set-capabilities multifd, "
				"migrate-set-parameters multifd-channels)",
				mf ? "" : "no multifd: ", n,
				p->multifd ? "" : "no multifd: ",
				p->multifd ? p->multifd_channels : 0);
	if (!json_object_object_get_ex(mf, "id", &v) ||
	    !(id = json_object_get_string(v)) ||
	    strlen(id) != 2 * sizeof(e->mf_id))
		return mig_fail(e, -EINVAL, "configuration: multifd without a "
				"migration id");
	for (size_t i = 0; i < sizeof(e->mf_id); i++) {
		unsigned byte;

		if (sscanf(id + 2 * i, "%2x", &byte) != 1)
			return mig_fail(e, -EINVAL, "configuration: bad "
					"multifd id");
		e->mf_id[i] = (uint8_t)byte;
	}
	e->mf_devstate = json_object_object_get_ex(mf, "device-state", &v) &&
			 json_object_get_boolean(v);
	e->mf_channels = n;
	return 0;
}

/* The engine's share of the compatibility check: RAM and its own
 * flags; the host checks the rest. */
static int load_check_config(struct mig_engine *e, const char *json,
			     size_t len)
{
	uint64_t ram = e->ram.pages * MIG_PAGE_SIZE;
	struct json_object *src, *v;
	char err[512] = "";
	int ret;

	if (!len || json[len - 1] != '\0')
		return mig_fail(e, -EINVAL, "configuration section is not a "
				"string");
	src = json_tokener_parse(json);
	if (!src || !json_object_is_type(src, json_type_object)) {
		json_object_put(src);
		return mig_fail(e, -EINVAL, "configuration section is not "
				"valid JSON");
	}
	json_object_object_get_ex(src, "switchover_ack", &v);
	e->want_ack = v && json_object_get_boolean(v);
	if (!json_object_object_get_ex(src, "ram_size", &v) ||
	    json_object_get_int64(v) != (int64_t)ram) {
		ret = mig_fail(e, -EINVAL, "configuration mismatch: source RAM "
			       "is %lld bytes, destination has %llu",
			       v ? (long long)json_object_get_int64(v) : -1LL,
			       (unsigned long long)ram);
		goto out_put;
	}
	ret = mig_cpr_check_config(e, src);
	if (ret)
		goto out_put;
	ret = load_check_multifd(e, src);
	if (ret)
		goto out_put;
	ret = e->host_ops->config_check(e->host, src, err, sizeof(err));
	if (ret)
		mig_fail(e, ret, "%s", err[0] ? err : "configuration mismatch");
out_put:
	json_object_put(src);
	return ret;
}

static int load_ack_if_ready(struct mig_engine *e)
{
	int ret;

	/* A live update's source waits for the ack whatever it asked:
	 * it means this VMM is built and checked, ready to take over. */
	if ((!e->want_ack && !mig_is_cpr(e)) || e->acked ||
	    !e->ch->has_return_path)
		return 0;
	for (unsigned i = 0; i < e->devs.nr; i++)
		if (!e->init_done[i])
			return 0;
	e->acked = true;
	pr_info("migration: every device loaded its initial data; "
		"acknowledging switchover");
	ret = mig_section_write(e->ch, MIG_RP_SWITCHOVER_ACK, 0, 0, NULL, 0,
				NULL, 0);
	if (ret)
		return mig_fail(e, ret, "sending the switchover-ack: %s",
				strerror(-ret));
	return 0;
}

/* Every connection of this migration is in: whoever else waits at the
 * door is refused, and no one new gets in. */
static void load_close_door(struct mig_engine *e)
{
	struct mig_listener *l;

	pthread_mutex_lock(&e->lock);
	l = e->listener;
	e->listener = NULL;
	pthread_mutex_unlock(&e->lock);
	if (!l)
		return;
	mig_door_refuse(mig_listener_door(l), "another source came first");
	mig_listener_close(l);
}

static int load_config(struct mig_engine *e, const void *p, size_t len)
{
	struct mf_set *mf;
	int ret = load_check_config(e, p, len);

	if (ret)
		return ret;
	pr_info("migration: configuration matches; loading");
	mig_set_status(e, MIG_STATUS_ACTIVE);
	/* The device takes its state in RESUMING -- unless it was kept
	 * (live update): then it never stops. */
	ret = mig_is_cpr(e) ? 0 :
	      mig_devs_set_all(&e->devs, VFU_MIG_STATE_RESUMING);
	if (!ret)
		ret = load_ack_if_ready(e);
	if (!ret && !e->mf_channels)
		load_close_door(e);
	if (ret || !e->mf_channels)
		return ret;
	/* The extra channels come through the same door. */
	if (e->mf_devstate) {
		ret = mig_devstate_load_create(e, e->mf_channels, &e->ds);
		if (ret)
			return ret;
	}
	ret = mf_load_open(e, e->listener, e->mf_id, e->mf_channels, e->ds,
			   &mf);
	if (ret)
		return ret;
	pthread_mutex_lock(&e->lock);
	e->mf = mf;
	pthread_mutex_unlock(&e->lock);
	pr_info("migration: %u multifd channels joined", e->mf_channels);
	load_close_door(e);
	return 0;
}

/*
 * The hand-over: tell the source that everything is loaded and checked
 * (READY) and run the guest only on its COMMIT. A source that never
 * commits -- it rolled back, or the path is cut -- keeps the guest.
 */
static int load_wait_commit(struct mig_engine *e)
{
	struct mig_section sec;
	char err[256];
	void *p = NULL;
	int ret;

	ret = mig_section_write(e->ch, MIG_RP_READY, 0, 0, NULL, 0, NULL, 0);
	if (ret)
		return mig_fail(e, ret, "sending READY: %s", strerror(-ret));
	ret = mig_section_read(e->ch, &sec, &p, err, sizeof(err));
	free(p);
	if (ret)
		return mig_fail(e, ret, "the source did not hand the guest "
				"over: %s", err);
	if (sec.type != MIG_SEC_COMMIT)
		return mig_fail(e, -EBADMSG, "%s after READY, expected COMMIT",
				mig_section_name(sec.type));
	return 0;
}

/* Apply everything in the order the hardware needs it, then run. */
static int load_finish(struct mig_engine *e, const void *p, size_t len)
{
	uint64_t t0 = clock_ns();
	char err[256] = "";
	uint32_t run;
	int ret;

	if (len != sizeof(run))
		return mig_fail(e, -EBADMSG, "END section is %zu bytes, want "
				"%zu", len, sizeof(run));
	memcpy(&run, p, sizeof(run));
	/* Everything the channels carry comes before END: all of it must
	 * be in, and every device's packets written, before the devices
	 * are asked whether their stream is whole. */
	if (e->mf) {
		ret = mf_load_finish(e->mf);
		if (ret)
			return mig_fail(e, ret, "a multifd channel ended before "
					"its MF_END");
	}
	if (e->ds) {
		ret = mig_devstate_wait(e->ds);
		if (ret)
			return mig_fail(e, ret, "device state over multifd: %s",
					strerror(-ret));
	}
	/* Device state first: RESUMING -> STOP validates the stream. */
	ret = mig_is_cpr(e) ? 0 : mig_devs_set_all(&e->devs,
						   VFU_MIG_STATE_STOP);
	if (ret)
		return ret;
	/* The VMM's state: irqchip and vCPUs (LAPIC) before any device may
	 * interrupt, device config (MSI-X routes, eventfds) last. */
	ret = e->host_ops->state_apply(e->host, err, sizeof(err));
	if (ret)
		return mig_fail(e, ret, "%s", err[0] ? err : strerror(-ret));
	pr_debug("incoming: state applied in %.1f ms",
		 (clock_ns() - t0) / 1e6);
	/* Sources before stream 1.1 run the guest as soon as it is here. */
	if (e->peer_minor >= 1 && e->ch->has_return_path) {
		ret = load_wait_commit(e);
		if (ret)
			return ret;
	}
	ret = mig_is_cpr(e) ? mig_cpr_activate(e) :
	      mig_devs_set_all(&e->devs, VFU_MIG_STATE_RUNNING);
	if (ret)
		return ret;
	e->guest_may_run = true;
	ret = e->host_ops->start(e->host, run != 0);
	if (ret)
		return mig_fail(e, ret, "starting vCPUs: %s", strerror(-ret));
	return 0;
}

/* Sections that name a device must name one this VMM has. */
static bool load_section_names_device(uint16_t type)
{
	return type == MIG_SEC_DEV_DATA || type == MIG_SEC_DEV_INIT_DONE ||
	       type == MIG_SEC_DEV_END;
}

/* One section: 0 to go on, 1 after END was applied, or -errno. */
static int load_section(struct mig_engine *e, const struct mig_section *sec,
			const void *p)
{
	char err[256] = "";
	int ret;

	if (load_section_names_device(sec->type) && sec->id >= e->devs.nr)
		return mig_fail(e, -EBADMSG, "section %s for unknown index %u",
				mig_section_name(sec->type), sec->id);
	switch (sec->type) {
	case MIG_SEC_CONFIG:
		return mig_fail(e, -EBADMSG, "second configuration section");
	case MIG_SEC_DEV_DATA:
		return mig_devs_load(&e->devs, sec->id, p, sec->length);
	case MIG_SEC_DEV_INIT_DONE:
		e->init_done[sec->id] = true;
		return load_ack_if_ready(e);
	case MIG_SEC_DEV_END:
	case MIG_SEC_ITER_END:
		return 0;
	case MIG_SEC_DEV_MAIN_DONE:
		/* The main channel's device data is all in: the devices may
		 * now take their multifd packets. */
		if (!e->ds)
			return mig_fail(e, -EBADMSG, "DEV_MAIN_DONE without "
					"device state over multifd");
		mig_devstate_main_done(e->ds);
		return 0;
	case MIG_SEC_END:
		ret = load_finish(e, p, sec->length);
		return ret ? ret : 1;
	default:
		break;
	}
	ret = e->host_ops->state_load(e->host, sec->type, sec->id, p,
				      sec->length, err, sizeof(err));
	if (ret == -ENOENT) {
		if (sec->flags & MIG_SEC_F_OPTIONAL)
			return 0;
		return mig_fail(e, -EBADMSG, "unknown required section type "
				"%u", sec->type);
	}
	if (ret)
		return mig_fail(e, ret, "%s", err[0] ? err : strerror(-ret));
	return 0;
}

static int load_stream(struct mig_engine *e)
{
	char err[256];
	int ret;

	if (!e->header_read) {
		ret = mig_stream_read_header(e->ch, &e->peer_minor, err,
					     sizeof(err));
		if (ret)
			return mig_fail(e, ret, "%s", err);
	}
	/* A live update takes devices that keep running: none resumes. */
	ret = mig_is_cpr(e) ? 0 : mig_engine_devs_init(e);
	if (!ret && !mig_is_cpr(e))
		ret = mig_devs_resume_prepare(&e->devs);
	if (ret)
		return ret;
	mig_publish(e);
	for (bool got_config = false;;) {
		struct mig_section sec;
		void *p;

		ret = mig_section_read_header(e->ch, &sec, err, sizeof(err));
		if (!ret && sec.type == MIG_SEC_RAM && mig_is_cpr(e))
			return mig_fail(e, -EBADMSG, "RAM in a live update: "
					"this guest's memory is the source's");
		if (!ret && got_config && sec.type == MIG_SEC_RAM) {
			/* The bulk of the stream: straight into guest RAM. */
			ret = mig_ram_load_from(&e->ram, e->ch, &sec, err,
						sizeof(err));
			if (ret)
				return mig_fail(e, ret, "%s", err);
			continue;
		}
		if (!ret)
			ret = mig_section_read_payload(e->ch, &sec, &p, err,
						       sizeof(err));
		if (ret)
			return mig_fail(e, ret, "%s", err);
		if (!got_config) {
			ret = sec.type == MIG_SEC_CONFIG ?
			      load_config(e, p, sec.length) :
			      mig_fail(e, -EBADMSG, "stream does not start "
				       "with its configuration");
			got_config = true;
		} else {
			ret = load_section(e, &sec, p);
		}
		free(p);
		if (ret)
			return ret < 0 ? ret : 0;
	}
}

/* RESUMED tells the source that the guest runs here. */
static void load_confirm(struct mig_engine *e)
{
	int ret;

	if (e->ch->has_return_path) {
		ret = mig_section_write(e->ch, MIG_RP_RESUMED, 0, 0, NULL, 0,
					NULL, 0);
		if (ret && e->peer_minor >= 1) {
			/*
			 * The source sent COMMIT: it never runs the guest again
			 * on its own, it holds it paused until told where it
			 * runs. Stopping here would leave it running nowhere.
			 */
			pr_warn("migration: could not confirm to the source "
				"(%s); the guest runs here, the source holds it "
				"paused until told so (x-migrate-outcome "
				"destination)", strerror(-ret));
		} else if (ret) {
			/*
			 * A 1.0 source never hears that the guest runs here,
			 * so it resumes the guest itself: this copy must not
			 * run on, or the guest would live twice.
			 */
			e->host_ops->load_failed(e->host);
			mig_fail(e, ret, "could not confirm to the source (%s)",
				 strerror(-ret));
			pr_err("incoming migration failed: could not confirm to "
			       "the source (%s); the source keeps the guest, "
			       "stopping it here", strerror(-ret));
			mig_set_status(e, MIG_STATUS_FAILED);
			return;
		}
	}
	pr_info("migration: guest state loaded; the guest runs here now");
	mig_set_status(e, MIG_STATUS_COMPLETED);
}

static void load_failed(struct mig_engine *e, int ret)
{
	char why[512];

	if (!mig_has_error(e))
		mig_fail(e, ret, "incoming migration failed (%s)",
			 strerror(-ret));
	mig_error_copy(e, why, sizeof(why));
	/* ERROR tells a source that may have committed that the guest is
	 * its own again: only true if no vCPU was ever started here. */
	if (e->guest_may_run) {
		pr_err("incoming migration failed: %s; the vCPUs may have run: "
		       "not telling the source it keeps the guest", why);
	} else {
		pr_err("incoming migration failed: %s; no guest code ran "
		       "here", why);
		if (e->ch->has_return_path)
			mig_section_write(e->ch, MIG_RP_ERROR, 0, 0, why,
					  strlen(why) + 1, NULL, 0);
	}
	/* A device must not keep a half-loaded stream. */
	mig_devs_abort_resume(&e->devs);
	mig_set_status(e, MIG_STATUS_FAILED);
	e->host_ops->load_failed(e->host);
}

/*
 * At the door: a file is what it is (its header is read as part of the
 * stream); a socket waits for a source with a valid hello, refusing
 * strangers. 0, -EBADF when the wait was ended (destroy), -errno.
 */
static int load_accept(struct mig_engine *e)
{
	struct mig_channel *ch = NULL;
	int ret;

	if (mig_listener_uri(e->listener)->kind == MIG_URI_FILE) {
		ret = mig_listener_accept(e->listener, 0, &ch);
	} else {
		ret = mig_accept_source(e->listener, false,
					MIG_HELLO_TIMEOUT_MS, 0, &ch,
					&e->peer_minor);
		e->header_read = !ret;
	}
	if (ret)
		return ret;
	/* Capabilities and parameters set while the door was open
	 * (--incoming URI, then QMP) count: this migration starts now. */
	pthread_mutex_lock(&e->lock);
	e->ch = ch;
	e->run_params = e->params;
	pthread_mutex_unlock(&e->lock);
	mig_set_status(e, MIG_STATUS_SETUP);
	return 0;
}

void *mig_load_thread(void *arg)
{
	struct mig_engine *e = arg;
	int ret = -ENOMEM;

	if (!e->ch) {
		ret = load_accept(e);
		if (ret == -EBADF || ret == -EINTR) {
			mig_thread_end(e);	/* the wait was called off */
			return NULL;
		}
		if (ret) {
			mig_fail(e, ret, "accepting the migration stream: %s",
				 strerror(-ret));
			pr_err("incoming migration failed: accepting the "
			       "migration stream: %s; no guest code ran here",
			       strerror(-ret));
			mig_set_status(e, MIG_STATUS_FAILED);
			e->host_ops->load_failed(e->host);
			mig_thread_end(e);
			return NULL;
		}
	}
	e->ch->read_timeout_ms = mig_io_timeout(e, MIG_READ_TIMEOUT_MS);
	/* This VM's RAM is fresh: all zero until a page is loaded. */
	e->ram.loaded = calloc(bitmap_words(e->ram.pages), sizeof(uint64_t));
	if (e->ram.loaded)
		ret = load_stream(e);
	e->cnt.total_ns = clock_ns() - e->cnt.start_ns;
	/* All channels, as the source counts what it sent. */
	e->cnt.transferred = e->ch->bytes_read;
	for (unsigned i = 0; e->mf && i < e->mf->n; i++)
		if (e->mf->chan[i].ch)
			e->cnt.transferred += e->mf->chan[i].ch->bytes_read;
	mig_publish(e);
	if (ret)
		load_failed(e, ret);
	else
		load_confirm(e);
	e->host_ops->state_discard(e->host);
	free(e->ram.loaded);
	e->ram.loaded = NULL;
	mig_thread_end(e);
	return NULL;
}
