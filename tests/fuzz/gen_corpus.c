// SPDX-License-Identifier: BSD-3-Clause
/*
 * gen-corpus: writes the seed corpora of the fuzz targets into
 * DIR/<target>/ (tests/fuzz/corpus/ via `ninja -C build fuzz-corpus`),
 * every seed produced by the project's own code rather than written by
 * hand, and checks that what it wrote is valid where that can be said:
 *
 *  mig-load	streams of real migrations: a source engine (fuzz_mig.h's
 *		VM, with and without a ferry-dma device) saving to memory,
 *		and one migrating live to a destination engine with the
 *		return path and switchover-ack on (the bytes the source
 *		sent, recorded); plus re-encodings of them (an optional
 *		unknown section, an older stream minor) with
 *		mig_section_write(). Each must load in a fresh destination
 *		as the fuzz target loads it.
 *  dma-resume	a ferry-dma model's own saved stream.
 *  server,	vfio-user sessions between libferry's client and server
 *  vfu-client	(a ferry-dma device), recorded by a proxy in between: what
 *		the client sent (for the server target) and what the
 *		server answered (for the client target), normalised.
 *  qmp		QMP command streams, as the JSON strings clients send.
 *  multiboot	tiny multiboot ELF kernels built in memory.
 *
 * Files are named gen-*; other files in the directories (regression
 * inputs) are left alone. Exit status 0 when every seed was written and
 * checked.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <elf.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "ferry/crc32c.h"
#include "ferry/ferry_dma_hw.h"
#include "ferry/log.h"
#include "ferry/mig_channel.h"
#include "ferry/mig_engine.h"
#include "ferry/mig_stream.h"
#include "ferry/util.h"
#include "ferry/vfu_client.h"
#include "ferry/vfu_transport.h"
#include "ferry_dma.h"
#include "fuzz.h"
#include "fuzz_mig.h"
#include "fuzz_vfu.h"

#define GEN_TIMEOUT_MS		5000u
#define GEN_MAX_FDS		64u

static const char *outdir;
static int failures;

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fprintf(stderr, "gen-corpus: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	failures++;
}

static void put_file(const char *target, const char *name,
		     const void *a, size_t alen, const void *b, size_t blen)
{
	char path[4096];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", outdir, target);
	if (mkdir(outdir, 0755) && errno != EEXIST)
		goto err;
	if (mkdir(path, 0755) && errno != EEXIST)
		goto err;
	snprintf(path, sizeof(path), "%s/%s/gen-%s", outdir, target, name);
	f = fopen(path, "wb");
	if (!f)
		goto err;
	if ((alen && fwrite(a, 1, alen, f) != alen) ||
	    (blen && fwrite(b, 1, blen, f) != blen)) {
		fclose(f);
		goto err;
	}
	if (fclose(f))
		goto err;
	printf("%s/gen-%s: %zu bytes\n", target, name, alen + blen);
	return;
err:
	fail("%s: %s", path, strerror(errno));
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

/* ---- a device with some state ---- */

static int reg_write(struct vdev *d, uint32_t off, uint32_t v)
{
	return vdev_region_write(d, VFU_PCI_BAR0_REGION_INDEX, off, &v, 4);
}

static int reg_read(struct vdev *d, uint32_t off, uint32_t *v)
{
	return vdev_region_read(d, VFU_PCI_BAR0_REGION_INDEX, off, v, 4);
}

/*
 * Give the device something to migrate: device memory written, a ring in
 * guest RAM with one FILL descriptor done (completion, counters, running
 * CRC, a pending interrupt nobody listens to), the scratch register.
 */
static int dev_populate(struct fz_host *h, struct vdev *d)
{
	const uint64_t ring = FZ_LO_GPA + 2 * FZ_PAGE;
	struct ferry_dma_desc desc = {
		.op = FERRY_DMA_OP_FILL,
		.flags = FERRY_DMA_DESC_F_IRQ,
		.dst = FZ_LO_GPA + 3 * FZ_PAGE,
		.len = 256,
		.pattern = 0x0123456789abcdefull,
		.completion = ring + 0x800,
		.cookie = 0xc0de,
	};
	uint8_t buf[512];
	uint32_t tail = 0;
	int ret;

	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (uint8_t)(i * 7 + 1);
	ret = vdev_region_write(d, VFU_PCI_BAR2_REGION_INDEX, 0x100, buf,
				sizeof(buf));
	if (!ret)
		ret = vdev_region_write(d, VFU_PCI_BAR2_REGION_INDEX,
					FZ_DEVMEM - 8, "lastword", 8);
	memcpy(h->mem + (ring - FZ_LO_GPA), &desc, sizeof(desc));
	if (!ret)
		ret = reg_write(d, FERRY_DMA_REG_SCRATCH, 0x5eed5eed);
	if (!ret)
		ret = reg_write(d, FERRY_DMA_REG_RING_BASE_LO, (uint32_t)ring);
	if (!ret)
		ret = reg_write(d, FERRY_DMA_REG_RING_BASE_HI,
				(uint32_t)(ring >> 32));
	if (!ret)
		ret = reg_write(d, FERRY_DMA_REG_RING_SIZE, 4);
	if (!ret)
		ret = reg_write(d, FERRY_DMA_REG_CTRL, FERRY_DMA_CTRL_ENABLE);
	if (!ret)
		ret = reg_write(d, FERRY_DMA_REG_RING_HEAD, 1);
	for (unsigned i = 0; !ret && tail != 1 && i < GEN_TIMEOUT_MS; i++) {
		ret = reg_read(d, FERRY_DMA_REG_RING_TAIL, &tail);
		sleep_ms(1);
	}
	if (!ret && tail != 1)
		ret = -ETIMEDOUT;
	return ret;
}

/* Guest RAM with data in one page, zero elsewhere. */
static void ram_populate(struct fz_host *h)
{
	/* One page (in the range above 4 GiB): each costs 4 KiB of every
	 * seed. */
	for (unsigned j = 0; j < FZ_PAGE; j++)
		h->mem[(FZ_RANGE_PAGES + 1) * FZ_PAGE + j] = (uint8_t)(j / 16);
}

/* ---- migration streams ---- */

/* A channel that records what is written to another channel. */
struct tee_chan {
	struct mig_channel ch;
	struct mig_channel *in;
	struct fz_buf *out;
};

static int tee_read(struct mig_channel *ch, void *buf, size_t len)
{
	struct tee_chan *t = (struct tee_chan *)ch;
	int ret = mig_read(t->in, buf, len);

	if (!ret)
		ch->bytes_read += len;
	return ret;
}

static int tee_write(struct mig_channel *ch, const void *buf, size_t len)
{
	struct tee_chan *t = (struct tee_chan *)ch;
	int ret = fz_buf_put(t->out, buf, len);

	if (!ret)
		ret = mig_write(t->in, buf, len);
	if (!ret)
		ch->bytes_written += len;
	return ret;
}

static void tee_shutdown(struct mig_channel *ch)
{
	mig_channel_shutdown(((struct tee_chan *)ch)->in);
}

static void tee_close(struct mig_channel *ch)
{
	mig_channel_close(((struct tee_chan *)ch)->in);
}

static const struct mig_channel_ops tee_ops = {
	.name = "tee",
	.read_full = tee_read,
	.write_full = tee_write,
	.shutdown = tee_shutdown,
	.close = tee_close,
};

static struct mig_channel *tee_chan(struct mig_channel *in,
				    struct fz_buf *out)
{
	struct tee_chan *t = calloc(1, sizeof(*t));

	if (!t)
		return NULL;
	t->ch.ops = &tee_ops;
	t->ch.fd = in->fd;
	t->ch.has_return_path = in->has_return_path;
	t->in = in;
	t->out = out;
	return &t->ch;
}

static int engine_for(struct fz_host *h, struct vdev *dev,
		      bool switchover_ack, struct mig_engine **e)
{
	struct mig_params p;
	char err[256];
	int ret;

	h->dev = dev;
	ret = mig_engine_create(&fz_host_ops, h, e);
	if (ret)
		return ret;
	mig_engine_get_params(*e, &p);
	p.switchover_ack = switchover_ack;
	p.io_timeout_ms = GEN_TIMEOUT_MS;
	ret = mig_engine_set_params(*e, &p, err, sizeof(err));
	if (!ret)
		ret = mig_engine_set_devices(*e, &dev, dev ? 1 : 0);
	return ret;
}

static enum mig_status finish(struct mig_engine *e, const char *who)
{
	struct mig_stats st;

	mig_engine_wait(e);
	mig_engine_stats(e, &st);
	if (st.status != MIG_STATUS_COMPLETED)
		fail("%s: migration %s: %s", who, mig_status_name(st.status),
		     st.error);
	return st.status;
}

/* src (and its device) to memory, as to a file. */
static int save_to_memory(struct fz_host *src, struct vdev *dev,
			  struct fz_buf *out)
{
	struct mig_engine *e;
	char err[256];
	int ret = engine_for(src, dev, false, &e);

	if (!ret)
		ret = mig_save_start_channel(e, fz_chan_writer(out), err,
					     sizeof(err));
	if (!ret && finish(e, "save to memory") != MIG_STATUS_COMPLETED)
		ret = -EIO;
	mig_engine_destroy(e);
	return ret;
}

/* src to dst live, both ways over a socketpair; out gets what src sent. */
static int migrate_live(struct fz_host *src, struct vdev *sdev,
			struct fz_host *dst, struct vdev *ddev,
			struct fz_buf *out)
{
	struct mig_channel *sch, *dch;
	struct mig_engine *se = NULL, *de = NULL;
	char err[256];
	int sv[2], ret;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
		return -errno;
	ret = mig_channel_from_fd(sv[0], true, GEN_TIMEOUT_MS, &sch);
	if (ret) {
		close(sv[1]);
		return ret;
	}
	ret = mig_channel_from_fd(sv[1], true, GEN_TIMEOUT_MS, &dch);
	if (ret) {
		mig_channel_close(sch);
		return ret;
	}
	sch->read_timeout_ms = dch->read_timeout_ms = GEN_TIMEOUT_MS;
	ret = engine_for(dst, ddev, true, &de);
	if (!ret)
		ret = engine_for(src, sdev, true, &se);
	if (ret) {
		mig_channel_close(sch);
		mig_channel_close(dch);
		goto out;
	}
	ret = mig_load_start(de, dch, err, sizeof(err));
	if (ret) {
		fail("live: destination: %s", err);
		mig_channel_close(sch);
		goto out;
	}
	ret = mig_save_start_channel(se, tee_chan(sch, out), err,
				     sizeof(err));
	if (ret)
		fail("live: source: %s", err);
	if (!ret && (finish(se, "live source") != MIG_STATUS_COMPLETED ||
		     finish(de, "live destination") != MIG_STATUS_COMPLETED))
		ret = -EIO;
out:
	mig_engine_destroy(se);
	mig_engine_destroy(de);
	return ret;
}

/*
 * Re-encode a stream section by section (mig_section_read, then
 * mig_section_write): runs of ITER_END collapse into one (how many pass
 * while a source waits for the switchover-ack depends on timing), a
 * section of type insert_type goes in before END, and the header gets
 * minor as its minor version (with its CRC).
 */
static int reencode(const struct fz_buf *in, struct fz_buf *out,
		    uint16_t minor, int insert_type, bool drop_commit)
{
	struct mig_channel *r = fz_chan_reader(in->p, in->len, false);
	struct mig_channel *w = fz_chan_writer(out);
	uint16_t last = 0;
	uint8_t hdr[MIG_STREAM_HDR_SIZE];
	char err[256];
	uint32_t crc;
	int ret = -ENOMEM;

	if (!r || !w || in->len < sizeof(hdr))
		goto out;
	memcpy(hdr, in->p, sizeof(hdr));
	memcpy(hdr + 10, &minor, sizeof(minor));
	crc = crc32c(hdr, 12);
	memcpy(hdr + 12, &crc, sizeof(crc));
	ret = fz_buf_put(out, hdr, sizeof(hdr));
	if (!ret)
		ret = mig_read(r, hdr, sizeof(hdr));
	while (!ret) {
		struct mig_section sec;
		void *p;

		ret = mig_section_read(r, &sec, &p, err, sizeof(err));
		if (ret == -EPIPE && r->bytes_read == in->len) {
			ret = 0;
			break;
		}
		if (ret) {
			fail("re-encoding: %s", err);
			break;
		}
		if (sec.type == MIG_SEC_END && insert_type >= 0)
			ret = mig_section_write(w, (uint16_t)insert_type,
						MIG_SEC_F_OPTIONAL, 7, "fuzz",
						5, NULL, 0);
		if (!ret && !(sec.type == MIG_SEC_ITER_END &&
			      last == MIG_SEC_ITER_END) &&
		    !(drop_commit && sec.type == MIG_SEC_COMMIT))
			ret = mig_section_write(w, sec.type, sec.flags, sec.id,
						p, sec.length, NULL, 0);
		last = sec.type;
		free(p);
	}
out:
	mig_channel_close(r);
	mig_channel_close(w);
	return ret;
}

/* Load opt + stream as the fuzz target does; true if it completed. */
static bool loads(struct fz_host *h, struct vdev *dev, uint8_t opt,
		  const struct fz_buf *s, const char *what)
{
	struct mig_engine *e;
	struct mig_stats st;
	char err[256];
	int ret;

	memset(h->mem, 0, FZ_RAM_SIZE);
	h->loaded = 0;
	h->applied = h->started = h->failed = false;
	ret = engine_for(h, opt & FZ_OPT_NO_DEVICE ? NULL : dev, false, &e);
	if (!ret)
		ret = mig_load_start(e, fz_chan_reader(s->p, s->len, opt &
						       FZ_OPT_RETURN_PATH),
				     err, sizeof(err));
	if (ret) {
		fail("%s: cannot load: %s", what, strerror(-ret));
		mig_engine_destroy(e);
		return false;
	}
	mig_engine_wait(e);
	mig_engine_stats(e, &st);
	mig_engine_destroy(e);
	if (dev) {
		dev->ops->reset(dev);
		dev->mig_state = VFU_MIG_STATE_RUNNING;
	}
	if (st.status != MIG_STATUS_COMPLETED || !h->started) {
		fail("%s: does not load: %s", what, st.error);
		return false;
	}
	return true;
}

static void put_stream(struct fz_host *dst, struct vdev *ddev, uint8_t opt,
		       const struct fz_buf *s, const char *name)
{
	if (loads(dst, ddev, opt, s, name))
		put_file("mig-load", name, &opt, 1, s->p, s->len);
}

static void gen_mig_load(void)
{
	struct fz_host src, dst;
	struct fz_dev *sd = NULL, *dd = NULL;
	struct vdev *sdev = NULL, *ddev = NULL;
	struct fz_buf file = { 0 }, live = { 0 }, dlive = { 0 }, b = { 0 };

	if (fz_host_init(&src) || fz_host_init(&dst) ||
	    fz_dev_start("gen-src", &sd, &sdev) ||
	    fz_dev_start("gen-dst", &dd, &ddev) ||
	    fz_host_attach(&src, sdev) || fz_host_attach(&dst, ddev)) {
		fail("mig-load: set-up failed");
		goto out;
	}
	ram_populate(&src);

	/* Without a device, to a file. */
	if (!save_to_memory(&src, NULL, &file))
		put_stream(&dst, ddev, FZ_OPT_NO_DEVICE, &file, "nodev-file");
	/* ...with an optional section the loader does not know. */
	if (!reencode(&file, &b, MIG_STREAM_MINOR, 0x7e00, false))
		put_stream(&dst, ddev, FZ_OPT_NO_DEVICE, &b,
			   "nodev-optional");
	b.len = 0;
	/* ...and its CRCs to be fixed by the target: a zeroed CRC. */
	if (!reencode(&file, &b, MIG_STREAM_MINOR, -1, false) &&
	    b.len > MIG_STREAM_HDR_SIZE + 20) {
		memset(b.p + MIG_STREAM_HDR_SIZE + 16, 0, 8);
		fz_stream_fix_crcs(b.p, b.len);
		put_stream(&dst, ddev, FZ_OPT_NO_DEVICE | FZ_OPT_FIX_CRCS, &b,
			   "nodev-fixcrc");
	}

	/* Live, return path and switchover-ack, no device. */
	if (!migrate_live(&src, NULL, &dst, NULL, &live)) {
		b.len = 0;
		if (!reencode(&live, &b, MIG_STREAM_MINOR, -1, false))
			put_stream(&dst, ddev, FZ_OPT_RETURN_PATH |
				   FZ_OPT_NO_DEVICE, &b, "nodev-live");
		/* A 1.0 source: no COMMIT, the guest runs at END. */
		b.len = 0;
		if (!reencode(&live, &b, 0, -1, true))
			put_stream(&dst, ddev, FZ_OPT_RETURN_PATH |
				   FZ_OPT_NO_DEVICE, &b, "nodev-minor0");
	}

	/* The real thing: a live migration with a busy device. */
	if (dev_populate(&src, sdev)) {
		fail("mig-load: cannot program the source device");
		goto out;
	}
	if (!migrate_live(&src, sdev, &dst, ddev, &dlive)) {
		b.len = 0;
		if (!reencode(&dlive, &b, MIG_STREAM_MINOR, -1, false))
			put_stream(&dst, ddev, FZ_OPT_RETURN_PATH, &b,
				   "dev-live");
	}
out:
	fz_dev_stop(sd);
	fz_dev_stop(dd);
	fz_host_fini(&src);
	fz_host_fini(&dst);
	free(file.p);
	free(live.p);
	free(dlive.p);
	free(b.p);
}

/* ---- the ferry-dma resume stream ---- */

static uint8_t dma_guest[FZ_PAGE];

static int g_dma_read(void *h, uint64_t iova, void *buf, size_t len)
{
	if (!range_within(iova, len, sizeof(dma_guest)))
		return -EFAULT;
	memcpy(buf, dma_guest + iova, len);
	return 0;
}

static int g_dma_write(void *h, uint64_t iova, const void *buf, size_t len)
{
	if (!range_within(iova, len, sizeof(dma_guest)))
		return -EFAULT;
	memcpy(dma_guest + iova, buf, len);
	return 0;
}

static int g_irq(void *h, uint32_t index, uint32_t vector)
{
	return 0;
}

static const struct ferry_dma_host_ops g_dma_ops = {
	.dma_read = g_dma_read,
	.dma_write = g_dma_write,
	.irq_trigger = g_irq,
};

/* What fuzz_dma_resume.c feeds: a split selector byte, then a stream the
 * model saved itself (its device memory partly written, a register set,
 * an MSI-X entry programmed). */
static void gen_dma_resume(void)
{
	struct ferry_dma_config cfg = {
		.name = "gen",
		.devmem_size = FZ_DEVMEM,
	};
	const struct vfu_mig_ops *m = ferry_dma_vfu_ops.mig;
	struct ferry_dma *d;
	struct fz_buf s = { 0 };
	uint8_t buf[4096], sel;
	uint32_t v = 0xabcd1234;
	ssize_t n;

	if (ferry_dma_create(&cfg, &g_dma_ops, NULL, &d)) {
		fail("dma-resume: cannot create the model");
		return;
	}
	memset((uint8_t *)ferry_dma_devmem(d) + 0x800, 0xa5, 0x400);
	ferry_dma_vfu_ops.region_access(d, VFU_PCI_BAR0_REGION_INDEX,
					FERRY_DMA_REG_SCRATCH, &v, 4, true);
	v = 0xfee00000;
	ferry_dma_vfu_ops.region_access(d, VFU_PCI_BAR0_REGION_INDEX,
					FERRY_DMA_MSIX_TABLE_OFF, &v, 4, true);
	m->set_state(d, VFU_MIG_STATE_RUNNING, VFU_MIG_STATE_STOP);
	m->set_state(d, VFU_MIG_STATE_STOP, VFU_MIG_STATE_STOP_COPY);
	while ((n = m->read_data(d, buf, sizeof(buf))) > 0)
		if (fz_buf_put(&s, buf, (size_t)n))
			break;
	m->set_state(d, VFU_MIG_STATE_STOP_COPY, VFU_MIG_STATE_STOP);
	/* The whole stream in one write, and its head in 13-byte writes. */
	sel = 0;
	put_file("dma-resume", "stream", &sel, 1, s.p, s.len);
	sel = 1;
	put_file("dma-resume", "head-split", &sel, 1, s.p,
		 MIN(s.len, (size_t)512));
	ferry_dma_destroy(d);
	free(s.p);
}

/* ---- vfio-user sessions ---- */

/*
 * A proxy between a client and the device's server, one thread per
 * direction, forwarding message by message (header, payload, and the
 * fds that came with the header) and recording the bytes.
 */
struct pipe_dir {
	int from, to;
	struct fz_buf rec;
};

struct proxy {
	int listen_fd, cl, sv;
	struct pipe_dir dir[2];	/* 0: client -> server, 1: back */
};

static bool read_full(int fd, void *buf, size_t len)
{
	uint8_t *p = buf;

	while (len) {
		ssize_t n = read(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return false;
		p += n;
		len -= (size_t)n;
	}
	return true;
}

/* Close the fds a message brought (ours are copies once forwarded). */
static void close_rights(struct msghdr *mh)
{
	for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c;
	     c = CMSG_NXTHDR(mh, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) /
				       sizeof(int); i++) {
			int fd;

			memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(fd));
			close(fd);
		}
	}
}

static bool send_all(int fd, uint8_t *msg, size_t len, void *control,
		     size_t controllen)
{
	struct iovec iov = { msg, len };
	struct msghdr mh = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = controllen ? control : NULL,
		.msg_controllen = controllen,
	};
	size_t sent = 0;

	while (sent < len) {
		ssize_t n = sendmsg(fd, &mh, MSG_NOSIGNAL);

		if (n <= 0)
			return false;
		sent += (size_t)n;
		iov.iov_base = msg + sent;
		iov.iov_len = len - sent;
		/* The fds went with the first byte. */
		mh.msg_control = NULL;
		mh.msg_controllen = 0;
	}
	return true;
}

static bool forward_msg(struct pipe_dir *d)
{
	union {
		char buf[CMSG_SPACE(GEN_MAX_FDS * sizeof(int))];
		struct cmsghdr align;
	} u;
	struct vfu_hdr hdr;
	struct iovec iov = { &hdr, sizeof(hdr) };
	struct msghdr mh = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = u.buf, .msg_controllen = sizeof(u.buf),
	};
	uint8_t *msg = NULL;
	bool ok = false;
	ssize_t n;

	n = recvmsg(d->from, &mh, MSG_CMSG_CLOEXEC);
	if (n <= 0)
		return false;
	if ((size_t)n < sizeof(hdr) &&
	    !read_full(d->from, (uint8_t *)&hdr + n, sizeof(hdr) - (size_t)n))
		goto out;
	if (hdr.msg_size < sizeof(hdr) || hdr.msg_size > (16u << 20))
		goto out;
	msg = malloc(hdr.msg_size);
	if (!msg)
		goto out;
	memcpy(msg, &hdr, sizeof(hdr));
	ok = read_full(d->from, msg + sizeof(hdr),
		       hdr.msg_size - sizeof(hdr)) &&
	     !fz_buf_put(&d->rec, msg, hdr.msg_size) &&
	     send_all(d->to, msg, hdr.msg_size, u.buf, mh.msg_controllen);
out:
	close_rights(&mh);
	free(msg);
	return ok;
}

static void *pipe_fn(void *arg)
{
	struct pipe_dir *d = arg;

	while (forward_msg(d))
		;
	shutdown(d->to, SHUT_WR);
	return NULL;
}

/* Accept the client, then forward both ways until both sides close. */
static void *proxy_fn(void *arg)
{
	struct proxy *p = arg;
	struct pollfd pf = { .fd = p->listen_fd, .events = POLLIN };
	pthread_t back;

	if (poll(&pf, 1, (int)GEN_TIMEOUT_MS) != 1)
		return NULL;
	p->cl = accept4(p->listen_fd, NULL, NULL, SOCK_CLOEXEC);
	if (p->cl < 0)
		return NULL;
	p->dir[0].from = p->dir[1].to = p->cl;
	p->dir[0].to = p->dir[1].from = p->sv;
	if (pthread_create(&back, NULL, pipe_fn, &p->dir[1]))
		abort();
	pipe_fn(&p->dir[0]);
	pthread_join(back, NULL);
	return NULL;
}

/* One recorded session: session() talks to the device through the
 * proxy at path; p->dir[].rec get what went each way. */
static int record(struct fz_dev *dev, struct proxy *p, const char *path,
		  int (*session)(struct vfu_client *c))
{
	struct vfu_client_opts opts = {
		.max_data_xfer_size = FZC_XFER,
		.timeout_ms = GEN_TIMEOUT_MS,
	};
	struct vfu_client *c;
	pthread_t t;
	int ret;

	p->dir[0].rec.len = p->dir[1].rec.len = 0;
	p->cl = -1;
	p->sv = vfu_sock_connect(fz_dev_path(dev));
	if (p->sv < 0)
		return p->sv;
	if (pthread_create(&t, NULL, proxy_fn, p))
		abort();
	ret = vfu_client_connect(path, &opts, &c);
	if (!ret) {
		ret = session(c);
		vfu_client_close(c);
	}
	pthread_join(t, NULL);
	close_safely(&p->cl);
	close_safely(&p->sv);
	return ret;
}

static uint8_t sess_mem[FZC_NR_MAPS * FZC_MAP_SIZE];
static uint8_t sess_stream[4096];
static size_t sess_stream_len;

static int sess_discovery(struct vfu_client *c)
{
	struct vfu_write_multi_entry ents[3];
	struct vfu_client_region r;
	struct vfu_device_info di;
	struct vfu_irq_info ii;
	uint8_t buf[256];
	uint32_t v = 0x5eed;
	int ret;

	ret = vfu_client_device_info(c, &di);
	for (uint32_t i = 0; !ret && i < VFU_PCI_NUM_REGIONS; i++)
		if (!vfu_client_region_info(c, i, &r))
			vfu_client_region_release(&r);
	for (uint32_t i = 0; !ret && i < VFU_PCI_NUM_IRQS; i++)
		vfu_client_irq_info(c, i, &ii);
	/* Registers are read 32 bits at a time. */
	for (uint32_t off = FERRY_DMA_REG_ID;
	     !ret && off <= FERRY_DMA_REG_STATUS; off += 4)
		ret = vfu_client_region_read(c, VFU_PCI_BAR0_REGION_INDEX, off,
					     buf, 4);
	if (!ret)
		ret = vfu_client_region_write(c, VFU_PCI_BAR0_REGION_INDEX,
					      FERRY_DMA_REG_SCRATCH, &v, 4);
	if (!ret)
		ret = vfu_client_region_read(c, VFU_PCI_CONFIG_REGION_INDEX, 0,
					     buf, 64);
	if (!ret)
		ret = vfu_client_region_read(c, VFU_PCI_BAR2_REGION_INDEX,
					     0x100, buf, sizeof(buf));
	fzc_multi_entries(ents, ARRAY_SIZE(ents));
	if (!ret)
		ret = vfu_client_write_multi(c, ents, ARRAY_SIZE(ents));
	if (!ret)
		ret = vfu_client_reset(c);
	return ret;
}

static int sess_reg_write(struct vfu_client *c, uint32_t off, uint32_t v)
{
	return vfu_client_region_write(c, VFU_PCI_BAR0_REGION_INDEX, off, &v,
				       4);
}

/* DMA through maps without an fd: the device's DMA reaches the client
 * as DMA_READ/DMA_WRITE requests, recorded among the replies. */
static int sess_dma(struct vfu_client *c)
{
	struct vfu_dma_log_range range = { FZC_IOVA, FZC_MAP_SIZE };
	struct ferry_dma_desc desc = {
		.op = FERRY_DMA_OP_FILL,
		.flags = FERRY_DMA_DESC_F_IRQ,
		.dst = FZC_IOVA + 0x1000,
		.len = 256,
		.pattern = 0xfeedfacecafef00dull,
		.completion = FZC_IOVA + 0x800,
		.cookie = 1,
	};
	uint64_t bm[2], page = 4096;
	uint32_t tail = 0;
	int efd = eventfd(0, EFD_CLOEXEC), ret;

	memcpy(sess_mem, &desc, sizeof(desc));
	ret = efd < 0 ? -errno : 0;
	for (uint32_t i = 0; !ret && i < 2; i++)
		ret = vfu_client_dma_map(c, FZC_IOVA + i * FZC_MAP_SIZE,
					 FZC_MAP_SIZE, -1, 0,
					 VFU_DMA_FLAG_READ | VFU_DMA_FLAG_WRITE,
					 sess_mem + i * FZC_MAP_SIZE);
	if (!ret)
		ret = vfu_client_set_irqs(c, VFU_PCI_MSIX_IRQ_INDEX, 0, 1,
					  &efd);
	if (!ret)
		ret = sess_reg_write(c, FERRY_DMA_REG_RING_BASE_LO,
				     (uint32_t)FZC_IOVA);
	if (!ret)
		ret = sess_reg_write(c, FERRY_DMA_REG_RING_SIZE, 4);
	if (!ret)
		ret = sess_reg_write(c, FERRY_DMA_REG_CTRL,
				     FERRY_DMA_CTRL_ENABLE);
	if (!ret)
		ret = vfu_client_dma_log_start(c, &page, &range, 1);
	if (!ret)
		ret = sess_reg_write(c, FERRY_DMA_REG_RING_HEAD, 1);
	for (unsigned i = 0; !ret && tail != 1 && i < 1000; i++) {
		sleep_ms(1);
		ret = vfu_client_region_read(c, VFU_PCI_BAR0_REGION_INDEX,
					     FERRY_DMA_REG_RING_TAIL, &tail, 4);
	}
	if (!ret)
		ret = vfu_client_dma_log_report(c, FZC_IOVA, FZC_MAP_SIZE,
						4096, bm);
	if (!ret)
		ret = vfu_client_dma_log_stop(c);
	if (!ret)
		ret = vfu_client_dma_unmap(c, FZC_IOVA + FZC_MAP_SIZE,
					   FZC_MAP_SIZE);
	if (!ret)
		ret = vfu_client_dma_unmap_all(c);
	if (!ret)
		ret = vfu_client_set_irqs(c, VFU_PCI_MSIX_IRQ_INDEX, 0, 0,
					  NULL);
	if (!ret)
		ret = vfu_client_reset(c);
	if (efd >= 0)
		close(efd);
	return ret;
}

static int sess_save(struct vfu_client *c)
{
	struct vfu_feature_precopy_info pi;
	enum vfu_mig_state st;
	uint64_t flags, size;
	ssize_t n = 0;
	int ret;

	ret = vfu_client_mig_flags(c, &flags);
	if (!ret)
		ret = vfu_client_mig_get_state(c, &st);
	if (!ret)
		ret = vfu_client_mig_set_state(c, VFU_MIG_STATE_PRE_COPY);
	if (!ret)
		ret = vfu_client_precopy_info(c, &pi);
	if (!ret)
		ret = vfu_client_mig_data_size(c, &size);
	sess_stream_len = 0;
	for (int i = 0; !ret && i < 3; i++) {
		n = vfu_client_mig_read(c, sess_stream + sess_stream_len,
					i ? 1024 : 2048);
		if (n < 0)
			ret = (int)n;
		else
			sess_stream_len += (size_t)n;
	}
	if (!ret)
		ret = vfu_client_precopy_info(c, &pi);
	if (!ret)
		ret = vfu_client_mig_set_state(c, VFU_MIG_STATE_STOP_COPY);
	if (!ret)
		ret = vfu_client_mig_data_size(c, &size);
	for (int i = 0; !ret && i < 2; i++) {
		n = vfu_client_mig_read(c, sess_mem, 1024);
		ret = n < 0 ? (int)n : 0;
	}
	if (!ret)
		ret = vfu_client_mig_set_state(c, VFU_MIG_STATE_STOP);
	if (!ret)
		ret = vfu_client_mig_set_state(c, VFU_MIG_STATE_RUNNING);
	return ret;
}

/* The head of a stream only: the device refuses to leave RESUMING. */
static int sess_resume(struct vfu_client *c)
{
	enum vfu_mig_state st;
	int ret;

	ret = vfu_client_mig_set_state(c, VFU_MIG_STATE_RESUMING);
	if (!ret)
		ret = vfu_client_mig_write(c, sess_stream, sess_stream_len);
	if (!ret && !vfu_client_mig_set_state(c, VFU_MIG_STATE_STOP))
		ret = -EINVAL;	/* it must not have taken that */
	if (!ret)
		ret = vfu_client_mig_get_state(c, &st);
	if (!ret)
		ret = vfu_client_reset(c);
	if (!ret)
		ret = vfu_client_mig_get_state(c, &st);
	return ret;
}

/*
 * The client's messages for the server target (which sends its own
 * VERSION first): VERSION dropped, ids renumbered in order. The server's
 * for the client target: replies get id 0 (the target answers with the
 * request's id), its DMA requests keep theirs; keep_version false drops
 * the VERSION reply (the target then adopts a negotiated connection).
 */
static void normalise(const struct fz_buf *in, struct fz_buf *out,
		      bool to_server, bool keep_version)
{
	uint16_t id = 1;

	out->len = 0;
	for (size_t off = 0; off + sizeof(struct vfu_hdr) <= in->len;) {
		struct vfu_hdr h;

		memcpy(&h, in->p + off, sizeof(h));
		if (h.msg_size < sizeof(h) || h.msg_size > in->len - off)
			break;
		if (h.cmd != VFU_CMD_VERSION || (!to_server && keep_version)) {
			bool reply = (h.flags & VFU_F_TYPE_MASK) ==
				     VFU_F_TYPE_REPLY;

			if (to_server && !reply)
				h.msg_id = id++;
			else if (!to_server && reply)
				h.msg_id = 0;
			if (fz_buf_put(out, &h, sizeof(h)) ||
			    fz_buf_put(out, in->p + off + sizeof(h),
				       h.msg_size - sizeof(h)))
				break;
		}
		off += h.msg_size;
	}
}

static void gen_vfu(void)
{
	static const struct {
		const char *name;
		int (*fn)(struct vfu_client *c);
		bool negotiate;		/* the client target connects */
	} sessions[] = {
		{ "discovery", sess_discovery, true },
		{ "dma", sess_dma, false },
		{ "save", sess_save, true },
		{ "resume", sess_resume, false },
	};
	struct proxy p = { .listen_fd = -1 };
	struct fz_buf b = { 0 };
	struct fz_dev *dev = NULL;
	char path[108];

	fuzz_tmp_path(path, sizeof(path), "gen-proxy.sock");
	p.listen_fd = vfu_sock_listen(path, NULL);
	if (p.listen_fd < 0 || fz_dev_start("gen-rec", &dev, NULL)) {
		fail("vfio-user: set-up failed");
		goto out;
	}
	for (size_t i = 0; i < ARRAY_SIZE(sessions); i++) {
		int ret = record(dev, &p, path, sessions[i].fn);

		if (ret) {
			fail("vfio-user session %s: %s", sessions[i].name,
			     strerror(-ret));
			continue;
		}
		normalise(&p.dir[0].rec, &b, true, false);
		put_file("server", sessions[i].name, b.p, b.len, NULL, 0);
		normalise(&p.dir[1].rec, &b, false, sessions[i].negotiate);
		put_file("vfu-client", sessions[i].name, b.p, b.len, NULL, 0);
	}
out:
	fz_dev_stop(dev);
	close_safely(&p.listen_fd);
	free(p.dir[0].rec.p);
	free(p.dir[1].rec.p);
	free(b.p);
}

/* ---- QMP ---- */

static void gen_qmp(void)
{
	static const struct {
		const char *name;
		const char *text;
	} seeds[] = {
		{ "basic",
		  "{\"execute\": \"qmp_capabilities\"}\n"
		  "{\"execute\": \"query-status\", \"id\": 1}\n"
		  "{\"execute\": \"cont\"}\n"
		  "{\"execute\": \"query-status\", \"id\": \"two\"}\n"
		  "{\"execute\": \"stop\"}\n"
		  "{\"execute\": \"stop\"}\n"
		  "{\"execute\": \"query-version\"}\n"
		  "{\"execute\": \"query-kvm\"}\n"
		  "{\"execute\": \"query-pci\"}\n"
		  "{\"execute\": \"query-commands\"}\n"
		  "{\"execute\": \"system_reset\"}\n"
		  "{\"execute\": \"cont\", \"arguments\": {}}\n"
		  "{\"execute\": \"quit\"}\n"
		  "{\"execute\": \"cont\"}\n" },
		{ "migration",
		  "{\"execute\":\"qmp_capabilities\",\"arguments\":"
		  "{\"enable\":[]}}"
		  "{\"execute\":\"migrate-set-parameters\",\"arguments\":"
		  "{\"downtime-limit\":300,\"max-bandwidth\":1000000000,"
		  "\"x-io-timeout\":5000}}"
		  "{\"execute\":\"query-migrate-parameters\"}"
		  "{\"execute\":\"migrate-set-capabilities\",\"arguments\":"
		  "{\"capabilities\":[{\"capability\":\"switchover-ack\","
		  "\"state\":true},{\"capability\":\"return-path\","
		  "\"state\":true},{\"capability\":"
		  "\"x-ignore-device-dirty-log\",\"state\":false}]}}"
		  "{\"execute\":\"query-migrate-capabilities\"}"
		  "{\"execute\":\"query-migrate\"}"
		  "{\"execute\":\"migrate\",\"arguments\":"
		  "{\"uri\":\"tcp:127.0.0.1:4444\"}}"
		  "{\"execute\":\"migrate-incoming\",\"arguments\":"
		  "{\"uri\":\"unix:/tmp/ferry-mig.sock\"}}"
		  "{\"execute\":\"cont\"}"
		  "{\"execute\":\"migrate\",\"arguments\":"
		  "{\"uri\":\"tcp:[::1]:4444\"}}"
		  "{\"execute\":\"migrate\",\"arguments\":"
		  "{\"uri\":\"file:/nonexistent/dir/x\"}}"
		  "{\"execute\":\"system_reset\"}"
		  "{\"execute\":\"migrate_cancel\"}"
		  "{\"execute\":\"x-migrate-outcome\",\"arguments\":"
		  "{\"guest-runs\":\"here\"}}"
		  "{\"execute\":\"query-migrate\",\"id\":[1,{\"a\":null}]}\n" },
		{ "errors",
		  "{\"execute\": \"query-status\"}\n"
		  "[1, 2, 3]\n"
		  "{\"execute\": \"qmp_capabilities\", \"arguments\": "
		  "{\"enable\": [\"oob\"]}}\n"
		  "{\"execute\": \"qmp_capabilities\"}\n"
		  "{\"execute\": \"qmp_capabilities\"}\n"
		  "{\"execute\": 42}\n"
		  "{\"execute\": \"stop\", \"arguments\": [], \"id\": 7}\n"
		  "{\"execute\": \"stop\", \"bogus\": 1}\n"
		  "{\"id\": 8}\n"
		  "{\"execute\": \"no-such-command\"}\n"
		  "{\"execute\": \"migrate\", \"arguments\": {}}\n"
		  "{\"execute\": \"migrate\", \"arguments\": {\"uri\": 5}}\n"
		  "{\"execute\": \"migrate\", \"arguments\": "
		  "{\"uri\": \"ftp:x\", \"extra\": 1}}\n"
		  "{\"execute\": \"migrate-set-parameters\", \"arguments\": "
		  "{\"downtime-limit\": -1}}\n"
		  "{\"execute\": \"migrate-set-parameters\", \"arguments\": "
		  "{\"max-bandwidth\": \"fast\"}}\n"
		  "{\"execute\": \"migrate-set-capabilities\", \"arguments\": "
		  "{\"capabilities\": [{\"capability\": \"nope\", "
		  "\"state\": true}, 3]}}\n"
		  "{\"execute\": \"x-migrate-outcome\", \"arguments\": "
		  "{\"guest-runs\": \"nowhere\"}}\n"
		  "{\"execute\": \"query-status\" garbage\n"
		  "null\n"
		  "{\"execute\": \"query-status\"}" },
	};

	for (size_t i = 0; i < ARRAY_SIZE(seeds); i++)
		put_file("qmp", seeds[i].name, seeds[i].text,
			 strlen(seeds[i].text), NULL, 0);
}

/* ---- multiboot ---- */

#define MB_MAGIC	0x1badb002u
#define MB_FLAGS	0x00000003u	/* page-align, memory info */

/*
 * A 32-bit ELF kernel: a text segment at 1 MiB holding the multiboot
 * header and a tiny entry point, a bss segment after it (memsz >
 * filesz), a note segment the loader skips. vaddr differs from paddr by
 * offset (a higher-half kernel) when offset is not 0.
 */
static void gen_multiboot_one(const char *name, uint32_t offset)
{
	struct {
		Elf32_Ehdr eh;
		Elf32_Phdr ph[3];
		uint32_t mb[3];
		uint8_t text[16];
	} __attribute__((packed)) k;
	const uint32_t text_off = offsetof(typeof(k), mb);
	const uint32_t paddr = 0x100000;

	memset(&k, 0, sizeof(k));
	memcpy(k.eh.e_ident, ELFMAG, SELFMAG);
	k.eh.e_ident[EI_CLASS] = ELFCLASS32;
	k.eh.e_ident[EI_DATA] = ELFDATA2LSB;
	k.eh.e_ident[EI_VERSION] = EV_CURRENT;
	k.eh.e_type = ET_EXEC;
	k.eh.e_machine = EM_386;
	k.eh.e_version = EV_CURRENT;
	k.eh.e_entry = paddr + offset + (uint32_t)sizeof(k.mb);
	k.eh.e_phoff = sizeof(k.eh);
	k.eh.e_ehsize = sizeof(k.eh);
	k.eh.e_phentsize = sizeof(Elf32_Phdr);
	k.eh.e_phnum = 3;
	k.ph[0] = (Elf32_Phdr){
		.p_type = PT_LOAD, .p_offset = text_off,
		.p_vaddr = paddr + offset, .p_paddr = paddr,
		.p_filesz = sizeof(k.mb) + sizeof(k.text),
		.p_memsz = sizeof(k.mb) + sizeof(k.text),
		.p_flags = PF_R | PF_X, .p_align = 4,
	};
	k.ph[1] = (Elf32_Phdr){
		.p_type = PT_LOAD, .p_vaddr = paddr + offset + 0x1000,
		.p_paddr = paddr + 0x1000, .p_memsz = 0x2000,
		.p_flags = PF_R | PF_W, .p_align = 0x1000,
	};
	k.ph[2] = (Elf32_Phdr){
		.p_type = PT_NOTE, .p_offset = text_off, .p_filesz = 4,
		.p_align = 4,
	};
	k.mb[0] = MB_MAGIC;
	k.mb[1] = MB_FLAGS;
	k.mb[2] = -(MB_MAGIC + MB_FLAGS);
	/* cli; hlt; jmp . */
	k.text[0] = 0xfa;
	k.text[1] = 0xf4;
	k.text[2] = 0xeb;
	k.text[3] = 0xfe;
	put_file("multiboot", name, &k, sizeof(k), NULL, 0);
}

static void gen_multiboot(void)
{
	gen_multiboot_one("kernel", 0);
	gen_multiboot_one("higher-half", 0xc0000000u);
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: gen-corpus DIR\n");
		return 2;
	}
	outdir = argv[1];
	log_set_level(LOG_LVL_WARN);
	log_init(NULL);
	signal(SIGPIPE, SIG_IGN);
	gen_qmp();
	gen_multiboot();
	gen_dma_resume();
	gen_vfu();
	gen_mig_load();
	if (failures)
		fprintf(stderr, "gen-corpus: %d failures\n", failures);
	return failures ? 1 : 0;
}
