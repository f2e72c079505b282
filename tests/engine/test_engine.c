/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The migration engine on its own: no KVM, no ferry-vmm. Two fake hosts
 * (fake_host.h) in this process, each with a real ferry-dev device
 * server, migrate a "guest" whose RAM is written both by a dirtier
 * thread (the host's dirty log sees it) and by the device's DMA (only
 * the device's DMA log sees it), while the guest keeps running.
 *
 *  1. socketpair: a completed migration; RAM byte for byte, device
 *     memory, the VMM blob, device states and every DMA job's result on
 *     the destination; a job run there continues the device's ring.
 *  2. the same over TCP loopback (listener, accept on a thread).
 *  3. negative control: without the device DMA log the destination RAM
 *     must differ, only where the device wrote.
 *  4. cancel while iterating; 5. a destination configured differently;
 *  6. a corrupt RAM section on the wire. Each leaves the source running
 *     (guest progressing, device RUNNING, logs and traps off) and the
 *     destination never started; the same source engine then migrates
 *     to a fresh destination.
 *  7. a source whose return-path reader runs late still reports the
 *     destination's reason, not its own broken pipe.
 * Every case ends with as many fds and threads as it started with, and
 * prints one line saying what it proved. One case can be named on the
 * command line.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fake_host.h"
#include "ferry/crc32c.h"
#include "ferry/log.h"
#include "ferry/mig_channel.h"
#include "ferry/mig_engine.h"
#include "ferry/mig_stream.h"
#include "ferry/util.h"

#define SKIP			77
#define VM_NAME			"engine-test-vm"
#define MODEL			"ferry-dma"
#define DEVMEM			"1M"
#define CASE_TIMEOUT_S		120	/* watchdog per case */
#define SERVER_WAIT_MS		10000u
#define MIG_WAIT_MS		60000u	/* one migration to its end */
#define ITER_WAIT_MS		20000u
#define ACCEPT_WAIT_MS		10000u
#define PROGRESS_WAIT_MS	5000u
#define IO_TIMEOUT_MS		10000u
#define DOWNTIME_MS		100u
#define MAX_BANDWIDTH		(256ull << 20)
#define CORRUPT_RAM_SECTION	5u
#define HANDOVER_IO_MS		1500u	/* x-io-timeout of the cut cases */
#define RAM_CMP_CHUNK		(1ull << 20)

static int failures;
static const char *ferry_dev;
static char tmpdir[64];
static const char *volatile current_case = "";

#define CHECK(cond, ...) do {						\
	if (!(cond)) {							\
		failures++;						\
		fprintf(stderr, "FAIL %s:%d: %s: ", __func__, __LINE__,	\
			#cond);						\
		fprintf(stderr, __VA_ARGS__);				\
		fputc('\n', stderr);					\
	}								\
} while (0)

static void sleep_ms(unsigned int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

/* A wait that never ends is a failure with a name, not a hung suite. */
static void on_alarm(int sig)
{
	static const char msg[] = "FAIL: watchdog: case did not finish: ";
	const char *name = current_case;

	(void)sig;
	if (write(STDERR_FILENO, msg, sizeof(msg) - 1) < 0 ||
	    write(STDERR_FILENO, name, strlen(name)) < 0 ||
	    write(STDERR_FILENO, "\n", 1) < 0)
		_exit(1);
	_exit(1);
}

static unsigned int count_entries(const char *dir)
{
	unsigned int n = 0;
	struct dirent *de;
	DIR *d = opendir(dir);

	if (!d)
		return 0;
	while ((de = readdir(d)))
		if (de->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

/* ---- engine events ---- */

struct evlog {
	pthread_mutex_t lock;
	char status[160];	/* "setup>active>device>completed" */
	char device[160];	/* the device's states, in order */
};

static void trail_add(char *trail, size_t len, const char *name)
{
	size_t n = strlen(trail);

	snprintf(trail + n, len - n, "%s%s", n ? ">" : "", name);
}

static void ev_status(void *opaque, enum mig_status s)
{
	struct evlog *l = opaque;

	pthread_mutex_lock(&l->lock);
	trail_add(l->status, sizeof(l->status), mig_status_name(s));
	pthread_mutex_unlock(&l->lock);
}

static void ev_device(void *opaque, const char *id, enum vfu_mig_state st)
{
	struct evlog *l = opaque;

	pthread_mutex_lock(&l->lock);
	trail_add(l->device, sizeof(l->device), vfu_mig_state_name(st));
	pthread_mutex_unlock(&l->lock);
}

static const struct mig_event_ops ev_ops = {
	.status = ev_status,
	.device_state = ev_device,
};

/* ---- a side: fake host, device server, device, engine ---- */

struct side {
	const char *role;
	struct fake_host h;
	bool h_init;
	pid_t pid;
	char sock[128];
	struct vdev *dev;
	struct mig_engine *e;
	struct evlog ev;
};

static int server_start(struct side *s)
{
	static unsigned int seq;
	struct stat st;
	pid_t pid;

	snprintf(s->sock, sizeof(s->sock), "%s/%s-%u.sock", tmpdir, s->role,
		 seq++);
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		const char *argv[] = { ferry_dev, "--socket", s->sock,
				       "--name", s->role, "--device-memory",
				       DEVMEM, NULL };

		/* Never outlive the test, even if it is killed. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		execv(ferry_dev, (char **)argv);
		_exit(127);
	}
	s->pid = pid;
	for (unsigned int waited = 0; waited < SERVER_WAIT_MS; waited += 5) {
		if (stat(s->sock, &st) == 0 && S_ISSOCK(st.st_mode))
			return 0;
		if (waitpid(pid, NULL, WNOHANG) == pid) {
			s->pid = 0;
			return -ECHILD;
		}
		sleep_ms(5);
	}
	return -ETIMEDOUT;
}

static void server_stop(struct side *s)
{
	unsigned int waited;

	if (s->pid <= 0)
		return;
	kill(s->pid, SIGTERM);
	for (waited = 0; waited < 5000; waited += 5) {
		if (waitpid(s->pid, NULL, WNOHANG) == s->pid)
			break;
		sleep_ms(5);
	}
	if (waited >= 5000) {
		kill(s->pid, SIGKILL);
		waitpid(s->pid, NULL, 0);
	}
	s->pid = 0;
}

/* The socket exists from bind() on, but refuses until listen(). */
static int device_open(struct side *s, char *err, size_t errlen)
{
	uint64_t deadline = clock_ns() + SERVER_WAIT_MS * 1000000ull;
	int ret;

	for (;;) {
		ret = vdev_vfio_user_open(s->role, s->sock, &s->dev, err,
					  errlen);
		if (ret != -ECONNREFUSED || clock_ns() > deadline)
			return ret;
		sleep_ms(5);
	}
}

static void set_params(struct side *s, uint64_t downtime_ms, bool devlog)
{
	struct mig_params p;
	char err[256] = "";
	int ret;

	mig_engine_get_params(s->e, &p);
	p.downtime_limit_ms = downtime_ms;
	/* Throttled, so that the pre-copy lasts while the job thread keeps
	 * rewriting pages the first pass already sent. */
	p.max_bandwidth = MAX_BANDWIDTH;
	p.no_device_dirty_log = !devlog;
	ret = mig_engine_set_params(s->e, &p, err, sizeof(err));
	CHECK(ret == 0, "%s: set params: %s", s->role, err);
}

static void set_io_timeout(struct side *s, uint64_t ms)
{
	struct mig_params p;
	char err[256] = "";
	int ret;

	mig_engine_get_params(s->e, &p);
	p.io_timeout_ms = ms;
	ret = mig_engine_set_params(s->e, &p, err, sizeof(err));
	CHECK(ret == 0, "%s: set x-io-timeout: %s", s->role, err);
}

/* A fake host with its own ferry-dev; the source's guest runs. */
static int side_open(struct side *s, const char *role, const char *model,
		     bool source)
{
	char err[256] = "";
	int ret;

	memset(s, 0, sizeof(*s));
	s->role = role;
	pthread_mutex_init(&s->ev.lock, NULL);
	ret = fh_init(&s->h, role, VM_NAME, model);
	s->h_init = true;
	if (ret) {
		snprintf(err, sizeof(err), "guest RAM: %s", strerror(-ret));
		goto out;
	}
	ret = server_start(s);
	if (ret) {
		snprintf(err, sizeof(err), "ferry-dev: %s", strerror(-ret));
		goto out;
	}
	ret = device_open(s, err, sizeof(err));
	if (!ret)
		ret = fh_attach_device(&s->h, s->dev, err, sizeof(err));
	if (ret)
		goto out;
	ret = mig_engine_create(&fh_host_ops, &s->h, &s->e);
	if (ret) {
		snprintf(err, sizeof(err), "engine: %s", strerror(-ret));
		goto out;
	}
	mig_engine_set_events(s->e, &ev_ops, &s->ev);
	ret = mig_engine_set_devices(s->e, &s->dev, 1);
	if (ret) {
		snprintf(err, sizeof(err), "devices: %s", strerror(-ret));
		goto out;
	}
	set_params(s, DOWNTIME_MS, true);
	if (source) {
		ret = fh_populate(&s->h, err, sizeof(err));
		if (!ret)
			ret = fh_start_threads(&s->h);
	}
out:
	CHECK(ret == 0, "%s side: %s", role, err);
	return ret;
}

static void side_close(struct side *s)
{
	if (!s->role)
		return;		/* never opened */
	/* The engine first (it may still use the device), then the
	 * guest's threads, the device and its server, RAM last. */
	mig_engine_destroy(s->e);
	s->e = NULL;
	if (s->h_init)
		fh_stop_threads(&s->h);
	vdev_close(s->dev);
	s->dev = NULL;
	server_stop(s);
	if (s->h_init)
		fh_fini(&s->h);
	s->h_init = false;
	pthread_mutex_destroy(&s->ev.lock);
	s->role = NULL;
}

/* ---- channels ---- */

/*
 * A socket channel with faults, around the source's end: it may corrupt
 * one byte in the payload of the n-th RAM section it writes, after the
 * CRCs were computed (what a bad NIC or middlebox would do), following
 * the stream framing across any split of the writes; it may hold back
 * the return path for a while, as a return-path thread that is slow to
 * be scheduled would; and it may cut one direction of the path at a
 * given point of the hand-over, as a partition that silently drops
 * packets (not one that closes the connection) would.
 */
enum cut {
	CUT_NONE,
	CUT_RP_AFTER_END,	/* nothing comes back once END is out */
	CUT_FWD_AT_COMMIT,	/* COMMIT and all after it never arrive */
	CUT_RP_AFTER_COMMIT,	/* nothing comes back once COMMIT is out */
	CUT_RP_CLOSED_AFTER_COMMIT,	/* ...and the connection closes */
};

struct chan_fault {
	unsigned int corrupt_ram_section;	/* 0: none; 1 = first */
	unsigned int rp_delay_ms;		/* before the first read */
	enum cut cut;
	/* what happened */
	unsigned int ram_sections;		/* RAM sections seen */
	bool flipped;
	uint64_t section_len;
	uint64_t at;				/* payload offset flipped */
};

struct fault_chan {
	struct mig_channel ch;		/* first: the engine frees it */
	struct mig_channel *inner;
	struct chan_fault *f;
	bool delayed;
	atomic_bool end_out, commit_out;	/* written (or dropped) */
	atomic_bool shut;
	bool dropping;			/* CUT_FWD_AT_COMMIT reached */
	uint16_t last_type;		/* of the section being written */
	uint64_t hdr_left;		/* stream header bytes to pass */
	uint8_t sec[MIG_SECTION_HDR_SIZE];
	size_t sec_have;
	uint64_t payload_left;
	uint64_t payload_off;
	uint64_t flip_at;
	bool in_target;
};

static void fault_sync(struct fault_chan *c)
{
	c->inner->timeout_ms = c->ch.timeout_ms;
	c->inner->read_timeout_ms = c->ch.read_timeout_ms;
	c->inner->deadline_ns = c->ch.deadline_ns;
}

/* The return path is cut here: what arrived is lost, and nothing more
 * will, until the engine gives up on the channel. */
static bool rp_cut(struct fault_chan *c)
{
	return (c->f->cut == CUT_RP_AFTER_END && atomic_load(&c->end_out)) ||
	       ((c->f->cut == CUT_RP_AFTER_COMMIT ||
		 c->f->cut == CUT_RP_CLOSED_AFTER_COMMIT) &&
		atomic_load(&c->commit_out));
}

static int rp_swallow(struct fault_chan *c)
{
	/* A closed connection: EOF at once; a stall: until shut down. */
	while (c->f->cut != CUT_RP_CLOSED_AFTER_COMMIT &&
	       !atomic_load(&c->shut))
		sleep_ms(5);
	return -EPIPE;
}

static int fault_read(struct mig_channel *ch, void *buf, size_t len)
{
	struct fault_chan *c = container_of(ch, struct fault_chan, ch);
	int ret;

	if (c->f->rp_delay_ms && !c->delayed) {
		c->delayed = true;
		sleep_ms(c->f->rp_delay_ms);
	}
	if (rp_cut(c))
		return rp_swallow(c);
	fault_sync(c);
	ret = mig_read(c->inner, buf, len);
	ch->bytes_read = c->inner->bytes_read;
	if (rp_cut(c))
		return rp_swallow(c);
	return ret;
}

static int fault_write(struct mig_channel *ch, const void *buf, size_t len)
{
	struct fault_chan *c = container_of(ch, struct fault_chan, ch);
	struct chan_fault *f = c->f;
	const uint8_t *p = buf;
	uint8_t *copy = NULL;
	size_t i = 0, n;
	int ret;

	/* A section header in one write (mig_section_write's): note END
	 * and COMMIT, and drop everything from COMMIT on if asked. */
	if (!c->hdr_left && !c->payload_left && !c->sec_have &&
	    len == MIG_SECTION_HDR_SIZE) {
		struct mig_section sec;

		memcpy(&sec, buf, sizeof(sec));
		if (sec.type == MIG_SEC_COMMIT && f->cut == CUT_FWD_AT_COMMIT)
			c->dropping = true;
		if (sec.type == MIG_SEC_COMMIT)
			atomic_store(&c->commit_out, true);
	}
	if (c->dropping)
		return 0;

	while (i < len) {
		if (c->hdr_left) {
			n = (size_t)MIN(c->hdr_left, (uint64_t)(len - i));
			c->hdr_left -= n;
			i += n;
			continue;
		}
		if (!c->payload_left) {
			struct mig_section sec;

			n = MIN(sizeof(c->sec) - c->sec_have, len - i);
			memcpy(c->sec + c->sec_have, p + i, n);
			c->sec_have += n;
			i += n;
			if (c->sec_have < sizeof(c->sec))
				continue;
			memcpy(&sec, c->sec, sizeof(sec));
			c->sec_have = 0;
			c->last_type = sec.type;
			c->payload_left = sec.length;
			c->payload_off = 0;
			c->in_target = false;
			if (sec.type == MIG_SEC_RAM &&
			    ++f->ram_sections == f->corrupt_ram_section &&
			    sec.length) {
				c->in_target = true;
				c->flip_at = sec.length / 2;
				f->section_len = sec.length;
			}
			continue;
		}
		n = (size_t)MIN(c->payload_left, (uint64_t)(len - i));
		if (c->in_target && c->flip_at >= c->payload_off &&
		    c->flip_at < c->payload_off + n) {
			/* The caller's buffer is const: flip in a copy. */
			copy = malloc(len);
			if (!copy)
				return -ENOMEM;
			memcpy(copy, buf, len);
			p = copy;
			copy[i + (c->flip_at - c->payload_off)] ^= 0x40;
			f->flipped = true;
			f->at = c->flip_at;
			c->in_target = false;
		}
		c->payload_off += n;
		c->payload_left -= n;
		i += n;
	}
	fault_sync(c);
	ret = mig_write(c->inner, p, len);
	ch->bytes_written = c->inner->bytes_written;
	free(copy);
	if (!ret && c->last_type == MIG_SEC_END && !c->payload_left)
		atomic_store(&c->end_out, true);
	return ret;
}

static void fault_shutdown(struct mig_channel *ch)
{
	struct fault_chan *c = container_of(ch, struct fault_chan, ch);

	atomic_store(&c->shut, true);
	mig_channel_shutdown(c->inner);
}

static void fault_close(struct mig_channel *ch)
{
	struct fault_chan *c = container_of(ch, struct fault_chan, ch);

	mig_channel_close(c->inner);
	c->inner = NULL;
}

static const struct mig_channel_ops fault_ops = {
	.name = "faulty-socket",
	.read_full = fault_read,
	.write_full = fault_write,
	.shutdown = fault_shutdown,
	.close = fault_close,
};

static struct mig_channel *fault_wrap(struct mig_channel *inner,
				      struct chan_fault *f)
{
	struct fault_chan *c = calloc(1, sizeof(*c));

	if (!c) {
		mig_channel_close(inner);
		return NULL;
	}
	c->ch.ops = &fault_ops;
	c->ch.fd = inner->fd;		/* for the send-queue estimate */
	c->ch.has_return_path = inner->has_return_path;
	c->ch.timeout_ms = inner->timeout_ms;
	c->ch.read_timeout_ms = inner->read_timeout_ms;
	c->inner = inner;
	c->f = f;
	c->hdr_left = MIG_STREAM_HDR_SIZE;
	return &c->ch;
}

/* Source and destination over a socketpair; fault != NULL: the
 * source's end through the faulty wrapper. */
static int start_socketpair(struct side *src, struct side *dst,
			    struct chan_fault *fault)
{
	struct mig_channel *sch = NULL, *dch = NULL;
	char err[256] = "";
	int sv[2], ret;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
		CHECK(0, "socketpair: %s", strerror(errno));
		return -errno;
	}
	ret = mig_channel_from_fd(sv[1], true, 0, &dch);
	if (ret) {
		close(sv[0]);
		CHECK(0, "destination channel: %s", strerror(-ret));
		return ret;
	}
	ret = mig_channel_from_fd(sv[0], true, IO_TIMEOUT_MS, &sch);
	if (ret) {
		mig_channel_close(dch);
		CHECK(0, "source channel: %s", strerror(-ret));
		return ret;
	}
	if (fault) {
		sch = fault_wrap(sch, fault);
		if (!sch) {
			mig_channel_close(dch);
			CHECK(0, "out of memory");
			return -ENOMEM;
		}
	}
	ret = mig_load_start(dst->e, dch, err, sizeof(err));
	if (ret) {
		mig_channel_close(sch);
		CHECK(0, "mig_load_start: %s", err);
		return ret;
	}
	ret = mig_save_start_channel(src->e, sch, err, sizeof(err));
	CHECK(ret == 0, "mig_save_start_channel: %s", err);
	return ret;
}

struct acceptor {
	struct mig_listener *l;
	struct mig_engine *e;
	int ret;
	char err[256];
};

/* The destination VMM's incoming side: one connection, then load. */
static void *accept_fn(void *arg)
{
	struct acceptor *a = arg;
	struct mig_channel *ch;

	a->ret = mig_listener_accept(a->l, ACCEPT_WAIT_MS, &ch);
	if (a->ret) {
		snprintf(a->err, sizeof(a->err), "accept: %s",
			 strerror(-a->ret));
		return NULL;
	}
	a->ret = mig_load_start(a->e, ch, a->err, sizeof(a->err));
	return NULL;
}

static int start_tcp(struct side *src, struct side *dst)
{
	struct acceptor a = { .e = dst->e };
	struct sockaddr_in sin;
	socklen_t slen = sizeof(sin);
	struct mig_uri u;
	char err[256] = "", uri[64];
	pthread_t t;
	int ret;

	ret = mig_uri_parse("tcp:127.0.0.1:0", &u, err, sizeof(err));
	if (!ret)
		ret = mig_listener_open(&u, NULL, &a.l);
	if (ret) {
		CHECK(0, "listener: %s %s", err, strerror(-ret));
		return ret;
	}
	if (getsockname(mig_listener_fd(a.l), (struct sockaddr *)&sin,
			&slen) < 0) {
		ret = -errno;
		CHECK(0, "getsockname: %s", strerror(errno));
		mig_listener_close(a.l);
		return ret;
	}
	snprintf(uri, sizeof(uri), "tcp:127.0.0.1:%u", ntohs(sin.sin_port));
	ret = pthread_create(&t, NULL, accept_fn, &a);
	if (ret) {
		CHECK(0, "accept thread: %s", strerror(ret));
		mig_listener_close(a.l);
		return -ret;
	}
	ret = mig_save_start(src->e, uri, err, sizeof(err));
	CHECK(ret == 0, "mig_save_start %s: %s", uri, err);
	/* Bounded: the accept gives up after ACCEPT_WAIT_MS. */
	pthread_join(t, NULL);
	mig_listener_close(a.l);
	CHECK(a.ret == 0, "destination: %s", a.err);
	printf("  channel: %s (listener, accept on a thread)\n", uri);
	return ret ? ret : a.ret;
}

/* Until the engine's migration ended, bounded; then collect its thread
 * (which only cleans up by then). */
static enum mig_status wait_final(struct side *s)
{
	uint64_t deadline = clock_ns() + MIG_WAIT_MS * 1000000ull;
	enum mig_status st;

	while (mig_status_is_active(st = mig_engine_status(s->e))) {
		if (clock_ns() > deadline) {
			fprintf(stderr, "FAIL %s: %s engine still %s after %u "
				"ms\n", current_case, s->role,
				mig_status_name(st), MIG_WAIT_MS);
			exit(1);
		}
		sleep_ms(2);
	}
	mig_engine_wait(s->e);
	return mig_engine_status(s->e);
}

/* ---- what a migration left behind ---- */

static bool in_device_area(uint64_t off)
{
	return (off >= FH_COMP_OFF && off < FH_COMP_OFF + FH_PAGE) ||
	       (off >= FH_FILL_OFF &&
		off < FH_FILL_OFF + FH_FILL_PAGES * FH_PAGE) ||
	       (off >= FH_COPY_OFF &&
		off < FH_COPY_OFF + FH_COPY_SLOTS * FH_COPY_LEN) ||
	       (off >= FH_FROMDEV_OFF &&
		off < FH_FROMDEV_OFF + FH_FROMDEV_SLOTS * FH_XFER_LEN);
}

struct ram_diff {
	uint64_t pages;			/* differing pages */
	uint64_t outside;		/* ...not written by device DMA */
	uint64_t first;			/* offset of the first */
};

/* Compare the two guests' memfds (reading holes allocates nothing). */
static int ram_compare(struct side *a, struct side *b, struct ram_diff *d)
{
	uint8_t *x = malloc(RAM_CMP_CHUNK), *y = malloc(RAM_CMP_CHUNK);
	int ret = 0;

	memset(d, 0, sizeof(*d));
	d->first = UINT64_MAX;
	if (!x || !y) {
		ret = -ENOMEM;
		goto out;
	}
	for (uint64_t off = 0; off < FH_RAM_SIZE; off += RAM_CMP_CHUNK) {
		if (pread(a->h.mem_fd, x, RAM_CMP_CHUNK, (off_t)off) !=
		    (ssize_t)RAM_CMP_CHUNK ||
		    pread(b->h.mem_fd, y, RAM_CMP_CHUNK, (off_t)off) !=
		    (ssize_t)RAM_CMP_CHUNK) {
			ret = -EIO;
			goto out;
		}
		for (uint64_t p = 0; p < RAM_CMP_CHUNK; p += FH_PAGE) {
			if (!memcmp(x + p, y + p, FH_PAGE))
				continue;
			d->pages++;
			if (!in_device_area(off + p))
				d->outside++;
			if (d->first == UINT64_MAX)
				d->first = off + p;
		}
	}
out:
	free(x);
	free(y);
	return ret;
}

static void dev_state_check(struct side *s, enum vfu_mig_state want)
{
	enum vfu_mig_state st = VFU_MIG_STATE_ERROR;
	int ret = s->dev->ops->mig_get_state(s->dev, &st);

	CHECK(s->dev->mig_state == want, "%s device: engine left it in %s, "
	      "want %s", s->role, vfu_mig_state_name(s->dev->mig_state),
	      vfu_mig_state_name(want));
	CHECK(ret == 0 && st == want, "%s device says %s (%d), want %s",
	      s->role, vfu_mig_state_name(st), ret, vfu_mig_state_name(want));
}

static uint32_t devmem_crc(struct side *s)
{
	uint32_t crc = 0;
	int ret = fh_devmem_crc(s->dev, s->h.jobs.devmem_size, &crc);

	CHECK(ret == 0, "%s: reading BAR2: %s", s->role, strerror(-ret));
	return crc;
}

static void print_figures(struct side *src, struct side *dst)
{
	const struct fh_jobs *j = &src->h.jobs;
	struct mig_stats s, d;

	mig_engine_stats(src->e, &s);
	mig_engine_stats(dst->e, &d);
	printf("  source: %s; device %s\n", src->ev.status, src->ev.device);
	printf("  destination: %s; device %s\n", dst->ev.status,
	       dst->ev.device);
	printf("  stream: %.2f MiB sent, %.2f MiB received, %u iterations; "
	       "%" PRIu64 " data + %" PRIu64 " zero pages, %" PRIu64
	       " in the last pass; downtime %.1f ms, total %.0f ms\n",
	       s.transferred / 1048576.0, d.transferred / 1048576.0,
	       s.iterations, s.ram_pages, s.zero_pages, s.final_pages,
	       s.downtime_ns / 1e6, s.total_ns / 1e6);
	printf("  device DMA logs: %" PRIu64 " pages reported, %" PRIu64
	       " of them found only by the device logs; device data %" PRIu64
	       " bytes pre-copy + %" PRIu64 " stop-copy\n", s.dev_dirty_pages,
	       s.dev_only_pages, s.dev[0].precopy_bytes,
	       s.dev[0].stopcopy_bytes);
	printf("  guest: %" PRIu64 " DMA jobs on the source (%" PRIu64
	       " FILL, %" PRIu64 " COPY, %" PRIu64 " TO_DEV, %" PRIu64
	       " FROM_DEV, %" PRIu64 " CRC), %" PRIu64 " BAR2 stores; "
	       "dirtier at generation %" PRIu64 " (%" PRIu64
	       " page writes)\n", j->completed,
	       j->by_op[FERRY_DMA_OP_FILL], j->by_op[FERRY_DMA_OP_COPY],
	       j->by_op[FERRY_DMA_OP_TO_DEV], j->by_op[FERRY_DMA_OP_FROM_DEV],
	       j->by_op[FERRY_DMA_OP_CRC], j->bar2_stores,
	       (uint64_t)atomic_load(&src->h.generation),
	       (uint64_t)atomic_load(&src->h.page_writes));
}

/*
 * A completed migration: the destination runs exactly the guest the
 * source froze. devlog false: the negative control, where RAM must
 * differ (and only where the device wrote).
 */
static void check_completed(struct side *src, struct side *dst, bool devlog)
{
	struct fake_host *sh = &src->h, *dh = &dst->h;
	struct fh_jobs *j = &sh->jobs;
	uint32_t crc_src, crc_dst, crc_shadow, v = 0;
	struct mig_stats ss, ds;
	struct ram_diff diff;
	char err[256] = "";
	unsigned int bad;
	int ret;

	mig_engine_stats(src->e, &ss);
	mig_engine_stats(dst->e, &ds);
	print_figures(src, dst);
	CHECK(ss.status == MIG_STATUS_COMPLETED, "source %s: %s",
	      mig_status_name(ss.status), ss.error);
	CHECK(ds.status == MIG_STATUS_COMPLETED, "destination %s: %s",
	      mig_status_name(ds.status), ds.error);
	if (ss.status != MIG_STATUS_COMPLETED ||
	    ds.status != MIG_STATUS_COMPLETED)
		return;

	/* Outcomes: handed over there, started here, nothing else. */
	CHECK(sh->handed_over && !sh->held_paused && !sh->load_failed &&
	      !sh->started, "source outcome: handed over %d, held %d",
	      sh->handed_over, sh->held_paused);
	CHECK(sh->pause_depth == 1 && !fh_host_ops.running(sh),
	      "source must stay paused after handing over (depth %u)",
	      sh->pause_depth);
	/* Every attempt, this one included, turned its tracking off. */
	CHECK(sh->trap_calls >= 1 && !sh->traps && sh->log_starts >= 1 &&
	      sh->log_starts == sh->log_stops,
	      "source: traps set %u times (now %d), dirty log started %u, "
	      "stopped %u times", sh->trap_calls, sh->traps, sh->log_starts,
	      sh->log_stops);
	ret = mig_save_start(src->e, "unix:/nonexistent", err, sizeof(err));
	CHECK(ret == -EINVAL, "a source whose guest left started again: %d",
	      ret);
	CHECK(dh->started && dh->start_run && dh->start_calls == 1 &&
	      !dh->load_failed && !dh->handed_over,
	      "destination outcome: started %d (run %d, %u calls), "
	      "load failed %d", dh->started, dh->start_run, dh->start_calls,
	      dh->load_failed);
	CHECK(j->error[0] == '\0', "source DMA jobs: %s", j->error);
	CHECK(j->completed > 0 && j->by_op[FERRY_DMA_OP_FILL] > 0,
	      "no DMA jobs ran");

	/* RAM, byte for byte, against the frozen source. */
	ret = ram_compare(src, dst, &diff);
	CHECK(ret == 0, "comparing RAM: %s", strerror(-ret));
	bad = fh_jobs_verify(sh, dh->mem, err, sizeof(err));
	if (devlog) {
		CHECK(diff.pages == 0, "%" PRIu64 " pages differ (%" PRIu64
		      " outside device areas), first at 0x%" PRIx64,
		      diff.pages, diff.outside, diff.first);
		CHECK(bad == 0, "%u DMA results wrong on the destination: %s",
		      bad, err);
		CHECK(ss.dev_dirty_pages > 0 && ss.dev_only_pages > 0,
		      "device logs found %" PRIu64 " pages, %" PRIu64
		      " only by them", ss.dev_dirty_pages, ss.dev_only_pages);
	} else {
		printf("  negative control: %" PRIu64 " pages stale on the "
		       "destination (%" PRIu64 " outside device-written "
		       "areas), %u DMA results wrong (first: %s)\n",
		       diff.pages, diff.outside, bad, err);
		CHECK(diff.pages > 0, "without device logs RAM must differ");
		CHECK(diff.outside == 0, "pages differ where no device wrote "
		      "(first at 0x%" PRIx64 ")", diff.first);
		CHECK(bad > 0, "without device logs DMA results must be lost");
		CHECK(ss.dev_dirty_pages == 0, "device logs were off but "
		      "reported %" PRIu64 " pages", ss.dev_dirty_pages);
	}

	/* The VMM's state, and the RAM it describes. */
	CHECK(sh->have_saved && dh->have_applied &&
	      !memcmp(&sh->saved, &dh->applied, sizeof(sh->saved)),
	      "VMM blob: saved %d applied %d, generation %" PRIu64 " vs %"
	      PRIu64, sh->have_saved, dh->have_applied,
	      sh->saved.generation, dh->applied.generation);
	CHECK(sh->saved.generation == atomic_load(&sh->generation) &&
	      sh->saved.jobs_completed == j->completed,
	      "source moved after saving its state");
	bad = fh_dirtier_verify(dh->mem, dh->applied.generation, err,
				sizeof(err));
	CHECK(bad == 0, "%u dirtier pages wrong: %s", bad, err);
	CHECK(dh->loaded == NULL, "loaded VMM state not discarded");

	/* Device memory: both devices and the driver's mirror. */
	crc_src = devmem_crc(src);
	crc_dst = devmem_crc(dst);
	crc_shadow = crc32c(j->devmem, j->devmem_size);
	printf("  device memory CRC32C: source %08x destination %08x mirror "
	       "%08x\n", crc_src, crc_dst, crc_shadow);
	CHECK(crc_src == crc_dst && crc_dst == crc_shadow,
	      "device memory differs");

	/* Devices: the source's stopped for good, the destination's runs
	 * with the ring where the source's left it. */
	dev_state_check(src, VFU_MIG_STATE_STOP);
	dev_state_check(dst, VFU_MIG_STATE_RUNNING);
	ret = fh_reg_read(src->dev, FERRY_DMA_REG_COMPLETED_LO, &v);
	CHECK(ret == 0 && v == (uint32_t)j->completed,
	      "source COMPLETED %u, jobs %" PRIu64, v, j->completed);
	ret = fh_reg_read(dst->dev, FERRY_DMA_REG_RING_TAIL, &v);
	CHECK(ret == 0 && v == (uint32_t)j->submitted,
	      "destination RING_TAIL %u, submitted %" PRIu64, v, j->submitted);
	ret = fh_reg_read(dst->dev, FERRY_DMA_REG_RUNNING_CRC, &v);
	CHECK(ret == 0 && v == crc32c_final(j->shadow),
	      "destination RUNNING_CRC %08x, driver %08x", v,
	      crc32c_final(j->shadow));

	/* The guest's driver goes on at the destination: one more job
	 * there continues the same ring, sequence and running CRC. This
	 * writes destination RAM, so it comes after the comparisons. */
	ret = fh_job_run(sh, dh, dst->dev, err, sizeof(err));
	CHECK(ret == 0, "job on the destination: %s", err);
}

/* After a failed or cancelled migration the guest is the source's
 * again, as if nothing had happened. */
static void check_source_kept(struct side *src)
{
	struct fake_host *h = &src->h;
	uint64_t pw0, jd0, deadline;
	uint64_t *bm;
	int ret;

	pthread_mutex_lock(&h->lock);
	CHECK(!h->handed_over && !h->held_paused && !h->started,
	      "source outcome: handed over %d held %d", h->handed_over,
	      h->held_paused);
	CHECK(h->pause_depth == 0 && h->pauses == h->resumes,
	      "source paused %u, resumed %u times", h->pauses, h->resumes);
	CHECK(!h->traps, "saving traps still on");
	CHECK(h->log_starts >= 1 && h->log_starts == h->log_stops,
	      "dirty log started %u, stopped %u times", h->log_starts,
	      h->log_stops);
	pthread_mutex_unlock(&h->lock);
	CHECK(!atomic_load(&h->tracking), "dirty tracking still on");
	CHECK(fh_host_ops.running(h) && fh_running(h),
	      "source guest not running");
	dev_state_check(src, VFU_MIG_STATE_RUNNING);
	/* The device's DMA log is off: a report is refused. */
	bm = calloc(bitmap_words(FH_PAGES), sizeof(uint64_t));
	ret = bm ? src->dev->ops->log_report(src->dev, FH_GPA, FH_RAM_SIZE,
					     FH_PAGE, bm) : -ENOMEM;
	CHECK(ret < 0 && ret != -ENOMEM, "device DMA log still on (report "
	      "%d)", ret);
	free(bm);

	/* And the guest really runs: RAM and device both move. */
	pw0 = atomic_load(&h->page_writes);
	jd0 = atomic_load(&h->jobs_done);
	deadline = clock_ns() + PROGRESS_WAIT_MS * 1000000ull;
	while ((atomic_load(&h->page_writes) < pw0 + 2 * FH_DIRTY_PAGES ||
		atomic_load(&h->jobs_done) < jd0 + 20) &&
	       clock_ns() < deadline && !h->jobs.error[0])
		sleep_ms(5);
	CHECK(atomic_load(&h->page_writes) >= pw0 + 2 * FH_DIRTY_PAGES,
	      "dirtier stuck after the failure");
	CHECK(atomic_load(&h->jobs_done) >= jd0 + 20,
	      "DMA jobs stuck after the failure: %s", h->jobs.error);
	CHECK(!h->jobs.error[0], "DMA jobs: %s", h->jobs.error);
}

/* A destination that refused: no guest instruction ran there. loaded:
 * it had the whole stream and applied the VMM state, waiting for a
 * COMMIT that never came. */
static void check_dest_refused(struct side *dst, bool loaded)
{
	struct fake_host *h = &dst->h;

	CHECK(h->load_failed, "destination: load_failed not called");
	CHECK(!h->started && h->start_calls == 0 && h->have_applied == loaded,
	      "destination started %d (%u calls), state applied %d",
	      h->started, h->start_calls, h->have_applied);
	CHECK(h->loaded == NULL, "loaded VMM state not discarded");
	dev_state_check(dst, VFU_MIG_STATE_RUNNING);
}

static bool error_has(struct side *s, const char *what, char *out,
		      size_t len)
{
	struct mig_stats st;

	mig_engine_stats(s->e, &st);
	snprintf(out, len, "%s", st.error);
	return strstr(st.error, what) != NULL;
}

/* The same source engine, a fresh destination: still usable. */
static void migrate_again(struct side *src, bool tcp)
{
	struct side dst = { 0 };

	printf("  again, to a fresh destination:\n");
	set_params(src, DOWNTIME_MS, true);
	if (side_open(&dst, "destination2", MODEL, false))
		goto out;
	if (!(tcp ? start_tcp(src, &dst) : start_socketpair(src, &dst, NULL))) {
		wait_final(src);
		wait_final(&dst);
		check_completed(src, &dst, true);
	}
out:
	side_close(&dst);
}

/* ---- the cases ---- */

static const char *case_socketpair(void)
{
	struct side src = { 0 }, dst = { 0 };

	if (!side_open(&src, "source", MODEL, true) &&
	    !side_open(&dst, "destination", MODEL, false) &&
	    !start_socketpair(&src, &dst, NULL)) {
		wait_final(&src);
		wait_final(&dst);
		check_completed(&src, &dst, true);
	}
	side_close(&dst);
	side_close(&src);
	return "over a socketpair, the destination got RAM byte for byte "
	       "(pages written only by device DMA included), device memory, "
	       "the VMM blob and every DMA result; devices STOP/RUNNING";
}

static const char *case_tcp(void)
{
	struct side src = { 0 }, dst = { 0 };

	if (!side_open(&src, "source", MODEL, true) &&
	    !side_open(&dst, "destination", MODEL, false) &&
	    !start_tcp(&src, &dst)) {
		wait_final(&src);
		wait_final(&dst);
		check_completed(&src, &dst, true);
	}
	side_close(&dst);
	side_close(&src);
	return "the same over TCP loopback through mig_save_start(uri) and a "
	       "listener";
}

static const char *case_no_device_log(void)
{
	struct side src = { 0 }, dst = { 0 };

	if (!side_open(&src, "source", MODEL, true) &&
	    !side_open(&dst, "destination", MODEL, false)) {
		set_params(&src, DOWNTIME_MS, false);
		if (!start_socketpair(&src, &dst, NULL)) {
			wait_final(&src);
			wait_final(&dst);
			check_completed(&src, &dst, false);
		}
	}
	side_close(&dst);
	side_close(&src);
	return "negative control: without device DMA logs the destination "
	       "RAM differs, only in pages the device wrote, so the "
	       "comparison catches lost DMA writes";
}

static const char *case_cancel(void)
{
	struct side src = { 0 }, dst = { 0 };
	uint64_t deadline;
	struct mig_stats st;
	int ret;

	if (side_open(&src, "source", MODEL, true) ||
	    side_open(&dst, "destination", MODEL, false))
		goto out;
	/* A limit of 0 never converges: it iterates until cancelled. */
	set_params(&src, 0, true);
	if (start_socketpair(&src, &dst, NULL))
		goto out;
	deadline = clock_ns() + ITER_WAIT_MS * 1000000ull;
	do {
		sleep_ms(5);
		mig_engine_stats(src.e, &st);
	} while ((st.status != MIG_STATUS_ACTIVE || st.iterations < 3) &&
		 mig_status_is_active(st.status) && clock_ns() < deadline);
	CHECK(st.status == MIG_STATUS_ACTIVE && st.iterations >= 3,
	      "source %s after %u iterations: %s",
	      mig_status_name(st.status), st.iterations, st.error);
	printf("  cancelling in %s after %u iterations (%s)\n",
	       mig_status_name(st.status), st.iterations, st.reason);
	ret = mig_engine_cancel(src.e);
	CHECK(ret == 0, "cancel: %d", ret);
	CHECK(wait_final(&src) == MIG_STATUS_CANCELLED, "source: %s",
	      mig_status_name(mig_engine_status(src.e)));
	CHECK(wait_final(&dst) == MIG_STATUS_FAILED, "destination: %s",
	      mig_status_name(mig_engine_status(dst.e)));
	printf("  source: %s; destination: %s\n", src.ev.status,
	       dst.ev.status);
	check_source_kept(&src);
	check_dest_refused(&dst, false);
	migrate_again(&src, false);
out:
	side_close(&dst);
	side_close(&src);
	return "cancel while iterating: source CANCELLED and running again "
	       "(guest, device RUNNING, logs and traps off), destination "
	       "never started; then the same source migrated fine";
}

static const char *case_config(void)
{
	struct side src = { 0 }, dst = { 0 };
	char err[512];

	if (side_open(&src, "source", MODEL, true) ||
	    side_open(&dst, "destination", "ferry-dma-rev2", false))
		goto out;
	if (start_socketpair(&src, &dst, NULL))
		goto out;
	CHECK(wait_final(&src) == MIG_STATUS_FAILED, "source: %s",
	      mig_status_name(mig_engine_status(src.e)));
	CHECK(wait_final(&dst) == MIG_STATUS_FAILED, "destination: %s",
	      mig_status_name(mig_engine_status(dst.e)));
	CHECK(error_has(&dst, "configuration mismatch", err, sizeof(err)) &&
	      strstr(err, "ferry-dma-rev2") && strstr(err, "\"" MODEL "\""),
	      "destination error: %s", err);
	printf("  destination: %s\n", err);
	/* What the destination said on the return path is the cause; a
	 * write error of the source after it closed is a consequence. */
	CHECK(error_has(&src, "configuration mismatch", err, sizeof(err)),
	      "source error: %s", err);
	printf("  source: %s\n", err);
	check_source_kept(&src);
	check_dest_refused(&dst, false);
	migrate_again(&src, true);
out:
	side_close(&dst);
	side_close(&src);
	return "a destination with another model refused before loading "
	       "(both errors name the mismatch); source kept the guest and "
	       "then migrated over TCP";
}

static const char *case_corrupt(void)
{
	struct chan_fault f = { .corrupt_ram_section = CORRUPT_RAM_SECTION };
	struct side src = { 0 }, dst = { 0 };
	char err[512];

	if (side_open(&src, "source", MODEL, true) ||
	    side_open(&dst, "destination", MODEL, false))
		goto out;
	if (start_socketpair(&src, &dst, &f))
		goto out;
	CHECK(wait_final(&src) == MIG_STATUS_FAILED, "source: %s",
	      mig_status_name(mig_engine_status(src.e)));
	CHECK(wait_final(&dst) == MIG_STATUS_FAILED, "destination: %s",
	      mig_status_name(mig_engine_status(dst.e)));
	CHECK(f.flipped, "no byte flipped (%u RAM sections)",
	      f.ram_sections);
	printf("  flipped payload byte %" PRIu64 " of %" PRIu64 " in RAM "
	       "section %u\n", f.at, f.section_len, CORRUPT_RAM_SECTION);
	CHECK(error_has(&dst, "CRC", err, sizeof(err)),
	      "destination error: %s", err);
	printf("  destination: %s\n", err);
	/* The destination's reason, not the source's broken pipe. */
	CHECK(error_has(&src, "CRC", err, sizeof(err)), "source error: %s",
	      err);
	printf("  source: %s\n", err);
	check_source_kept(&src);
	check_dest_refused(&dst, false);
	migrate_again(&src, false);
out:
	side_close(&dst);
	side_close(&src);
	return "a byte flipped in a RAM section on the wire: destination "
	       "failed on the CRC and never started; source FAILED, kept the "
	       "guest, then migrated fine";
}

/*
 * The source's error must be the destination's reason, which it sent on
 * the return path before it closed, even when the source's return-path
 * reader runs late -- here held back 300 ms, on a busy host a scheduling
 * delay -- and the source's own write fails first ("Broken pipe"). This
 * failed every time before the engine let a peer's reason replace a
 * failed send.
 */
static const char *case_late_rp(void)
{
	struct chan_fault f = { .rp_delay_ms = 300 };
	struct side src = { 0 }, dst = { 0 };
	char err[512];

	if (side_open(&src, "source", MODEL, true) ||
	    side_open(&dst, "destination", "ferry-dma-rev2", false))
		goto out;
	if (start_socketpair(&src, &dst, &f))
		goto out;
	CHECK(wait_final(&src) == MIG_STATUS_FAILED, "source: %s",
	      mig_status_name(mig_engine_status(src.e)));
	CHECK(wait_final(&dst) == MIG_STATUS_FAILED, "destination: %s",
	      mig_status_name(mig_engine_status(dst.e)));
	error_has(&dst, "configuration mismatch", err, sizeof(err));
	printf("  destination: %s\n", err);
	CHECK(error_has(&src, "configuration mismatch", err, sizeof(err)),
	      "source reports a consequence, not the cause: %s", err);
	printf("  source: %s\n", err);
	check_source_kept(&src);
	check_dest_refused(&dst, false);
out:
	side_close(&dst);
	side_close(&src);
	return "with a late return-path reader the source still reports the "
	       "destination's reason";
}

/*
 * The partition that made the guest run twice before the three-step
 * hand-over: the destination gets everything, the return path silently
 * drops what it sends. The destination must not run without COMMIT;
 * the source, never READY, gives up when the switchover overruns its
 * budget and the guest runs here again: on exactly one side.
 */
static const char *case_rp_cut_after_end(void)
{
	struct chan_fault f = { .cut = CUT_RP_AFTER_END };
	struct side src = { 0 }, dst = { 0 };
	struct mig_stats st;
	char err[512];

	if (side_open(&src, "source", MODEL, true) ||
	    side_open(&dst, "destination", MODEL, false))
		goto out;
	if (start_socketpair(&src, &dst, &f))
		goto out;
	CHECK(wait_final(&src) == MIG_STATUS_FAILED, "source: %s",
	      mig_status_name(mig_engine_status(src.e)));
	CHECK(wait_final(&dst) == MIG_STATUS_FAILED, "destination: %s",
	      mig_status_name(mig_engine_status(dst.e)));
	CHECK(error_has(&src, "switchover took more than", err, sizeof(err)),
	      "source error: %s", err);
	printf("  source: %s\n", err);
	error_has(&dst, "", err, sizeof(err));
	printf("  destination: %s\n", err);
	mig_engine_stats(src.e, &st);
	CHECK(!st.outcome_unknown, "the source never committed: its outcome "
	      "is known");
	check_source_kept(&src);
	check_dest_refused(&dst, true);
out:
	side_close(&dst);
	side_close(&src);
	return "return path cut after END: the destination loaded everything "
	       "but never ran without COMMIT; the source gave up at its "
	       "switchover budget and runs the guest: one side only";
}

/*
 * The forward path dies right at COMMIT: the source has given the guest
 * up, the destination never hears it. Neither may run it on its own;
 * the source reports an unknown outcome and keeps it paused, devices
 * stopped, until told; told "here", it runs on as if nothing happened.
 */
static const char *case_commit_lost(void)
{
	struct chan_fault f = { .cut = CUT_FWD_AT_COMMIT };
	struct side src = { 0 }, dst = { 0 };
	struct mig_stats st;
	char err[512] = "";
	int ret;

	if (side_open(&src, "source", MODEL, true) ||
	    side_open(&dst, "destination", MODEL, false))
		goto out;
	set_io_timeout(&src, HANDOVER_IO_MS);
	set_io_timeout(&dst, HANDOVER_IO_MS);
	if (start_socketpair(&src, &dst, &f))
		goto out;
	CHECK(wait_final(&src) == MIG_STATUS_FAILED, "source: %s",
	      mig_status_name(mig_engine_status(src.e)));
	CHECK(wait_final(&dst) == MIG_STATUS_FAILED, "destination: %s",
	      mig_status_name(mig_engine_status(dst.e)));
	mig_engine_stats(src.e, &st);
	printf("  source: %s\n", st.error);
	CHECK(st.outcome_unknown && src.h.outcome_unknown,
	      "source outcome not unknown: %s", st.error);
	CHECK(src.h.pause_depth == 1 && !src.h.handed_over,
	      "source must hold the guest paused (depth %u)",
	      src.h.pause_depth);
	dev_state_check(&src, VFU_MIG_STATE_STOP);
	check_dest_refused(&dst, true);
	ret = mig_save_start(src.e, "unix:/nonexistent", err, sizeof(err));
	CHECK(ret == -EINVAL && strstr(err, "outcome is unknown"),
	      "a new migration before the outcome is resolved: %d %s", ret,
	      err);
	/* The destination exited without running: the guest is ours. */
	ret = mig_engine_resolve(src.e, true, err, sizeof(err));
	CHECK(ret == 0, "resolve here: %s", err);
	set_io_timeout(&src, 0);
	check_source_kept(&src);
	migrate_again(&src, false);
out:
	side_close(&dst);
	side_close(&src);
	return "forward path cut at COMMIT: neither side ran the guest on its "
	       "own; the source held it paused (devices STOP) with an unknown "
	       "outcome, ran it again when told, then migrated fine";
}

/*
 * The return path dies after COMMIT: the destination runs the guest and
 * its RESUMED is lost, in silence or with the connection closing (as a
 * destination closes it after RESUMED). The source must not resume on
 * either: outcome unknown, paused, devices stopped; told "destination",
 * it hands over.
 */
static const char *resumed_lost(enum cut cut)
{
	struct chan_fault f = { .cut = cut };
	struct side src = { 0 }, dst = { 0 };
	struct mig_stats st;
	char err[512] = "";
	int ret;

	if (side_open(&src, "source", MODEL, true) ||
	    side_open(&dst, "destination", MODEL, false))
		goto out;
	set_io_timeout(&src, HANDOVER_IO_MS);
	if (start_socketpair(&src, &dst, &f))
		goto out;
	CHECK(wait_final(&src) == MIG_STATUS_FAILED, "source: %s",
	      mig_status_name(mig_engine_status(src.e)));
	CHECK(wait_final(&dst) == MIG_STATUS_COMPLETED, "destination: %s",
	      mig_status_name(mig_engine_status(dst.e)));
	mig_engine_stats(src.e, &st);
	printf("  source: %s\n", st.error);
	CHECK(st.outcome_unknown && src.h.outcome_unknown,
	      "source outcome not unknown: %s", st.error);
	CHECK(src.h.pause_depth == 1 && !fh_host_ops.running(&src.h),
	      "source runs the guest although the destination does (depth "
	      "%u)", src.h.pause_depth);
	CHECK(dst.h.started && dst.h.start_calls == 1,
	      "destination did not start the guest");
	dev_state_check(&src, VFU_MIG_STATE_STOP);
	dev_state_check(&dst, VFU_MIG_STATE_RUNNING);
	ret = mig_engine_resolve(src.e, false, err, sizeof(err));
	CHECK(ret == 0, "resolve destination: %s", err);
	CHECK(src.h.handed_over && src.h.pause_depth == 1,
	      "source did not hand over (handed %d, depth %u)",
	      src.h.handed_over, src.h.pause_depth);
	ret = mig_engine_resolve(src.e, true, err, sizeof(err));
	CHECK(ret == -EINVAL, "resolved twice");
out:
	side_close(&dst);
	side_close(&src);
	return "return path cut after COMMIT: the destination runs the guest; "
	       "the source did not resume on silence (unknown outcome, paused, "
	       "devices STOP) and handed over when told: one side only";
}

static const char *case_resumed_lost(void)
{
	return resumed_lost(CUT_RP_AFTER_COMMIT);
}

static const char *case_resumed_lost_closed(void)
{
	resumed_lost(CUT_RP_CLOSED_AFTER_COMMIT);
	return "the same when the connection closes instead of stalling: a "
	       "close tells the source nothing, only ERROR would";
}

struct test_case {
	const char *name;
	const char *(*fn)(void);
};

static const struct test_case cases[] = {
	{ "socketpair", case_socketpair },
	{ "tcp", case_tcp },
	{ "no-device-dirty-log", case_no_device_log },
	{ "cancel", case_cancel },
	{ "config-mismatch", case_config },
	{ "corrupt-section", case_corrupt },
	{ "late-return-path", case_late_rp },
	{ "rp-cut-after-end", case_rp_cut_after_end },
	{ "commit-lost", case_commit_lost },
	{ "resumed-lost", case_resumed_lost },
	{ "resumed-lost-closed", case_resumed_lost_closed },
};

static void run_case(const struct test_case *c)
{
	unsigned int fds0 = count_entries("/proc/self/fd");
	unsigned int tasks0 = count_entries("/proc/self/task");
	int failed0 = failures;
	uint64_t t0 = clock_ns();
	unsigned int fds1, tasks1;
	const char *proved;

	current_case = c->name;
	printf("--- %s\n", c->name);
	fflush(stdout);
	alarm(CASE_TIMEOUT_S);
	proved = c->fn();
	alarm(0);
	fds1 = count_entries("/proc/self/fd");
	tasks1 = count_entries("/proc/self/task");
	CHECK(fds1 == fds0, "%s: %u fds before, %u after", c->name, fds0,
	      fds1);
	CHECK(tasks1 == tasks0, "%s: %u threads before, %u after", c->name,
	      tasks0, tasks1);
	printf("%s %s (%.2f s): %s\n", failures == failed0 ? "PASS" : "FAIL",
	       c->name, (clock_ns() - t0) / 1e9, proved);
	fflush(stdout);
}

int main(int argc, char **argv)
{
	struct sigaction sa = { .sa_handler = on_alarm };
	char cmd[128];

	log_init("test_engine");
	signal(SIGPIPE, SIG_IGN);
	sigaction(SIGALRM, &sa, NULL);
	setvbuf(stdout, NULL, _IOLBF, 0);
	ferry_dev = getenv("FERRY_DEV");
	if (!ferry_dev || access(ferry_dev, X_OK)) {
		fprintf(stderr, "SKIP: FERRY_DEV not set to ferry-dev\n");
		return SKIP;
	}
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/ferry-engine-XXXXXX");
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		return 1;
	}
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++)
		if (argc < 2 || !strcmp(argv[1], cases[i].name))
			run_case(&cases[i]);
	/* ferry-dev removes its socket on SIGTERM; leftovers of a killed
	 * one go with the directory. */
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	if (system(cmd) != 0)
		fprintf(stderr, "cannot remove %s\n", tmpdir);
	if (failures) {
		fprintf(stderr, "%d check(s) failed\n", failures);
		return 1;
	}
	printf("engine tests passed\n");
	return 0;
}
