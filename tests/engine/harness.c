/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * tests/engine's common ground (harness.h): two sides, each a fake host
 * with its own ferry-dev and an engine; ways to connect them; what a
 * completed or failed migration must have left behind; the case runner
 * (watchdog, fd and thread counts).
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

#include "ferry/crc32c.h"
#include "ferry/log.h"
#include "ferry/mig_stream.h"
#include "ferry/util.h"
#include "harness.h"

#define SERVER_WAIT_MS		10000u
#define MIG_WAIT_MS		60000u	/* one migration to its end */
#define ACCEPT_WAIT_MS		10000u
#define PROGRESS_WAIT_MS	5000u
#define MAX_BANDWIDTH		(256ull << 20)
#define RAM_CMP_CHUNK		(1ull << 20)

int failures;
const char *ferry_dev;
char tmpdir[64];
const char *volatile current_case = "";
const char *side_devmem = DEVMEM;
bool side_no_precopy;

void sleep_ms(unsigned int ms)
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

unsigned int count_entries(const char *dir)
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
				       side_devmem,
				       side_no_precopy ? "--no-precopy" : NULL,
				       NULL };

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

void set_params(struct side *s, uint64_t downtime_ms, bool devlog)
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

void set_io_timeout(struct side *s, uint64_t ms)
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
int side_open(struct side *s, const char *role, const char *model,
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

void side_close(struct side *s)
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

int start_socketpair(struct side *src, struct side *dst,
		     struct mig_channel *(*wrap)(struct mig_channel *, void *),
		     void *arg)
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
	if (wrap) {
		sch = wrap(sch, arg);
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

int start_tcp(struct side *src, struct side *dst)
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

int dest_listen(struct side *dst, bool tcp, char *uri, size_t urilen,
		uint16_t *port)
{
	struct sockaddr_in sin;
	socklen_t slen = sizeof(sin);
	struct mig_listener *l;
	struct mig_uri u;
	char err[256] = "";
	int ret;

	if (tcp)
		snprintf(uri, urilen, "tcp:127.0.0.1:0");
	else
		snprintf(uri, urilen, "unix:%s/%s-door.sock", tmpdir,
			 dst->role);
	ret = mig_uri_parse(uri, &u, err, sizeof(err));
	if (!ret)
		ret = mig_listener_open(&u, NULL, &l);
	if (ret) {
		CHECK(0, "listener %s: %s %s", uri, err, strerror(-ret));
		return ret;
	}
	if (tcp) {
		if (getsockname(mig_listener_fd(l), (struct sockaddr *)&sin,
				&slen) < 0) {
			ret = -errno;
			CHECK(0, "getsockname: %s", strerror(errno));
			mig_listener_close(l);
			return ret;
		}
		*port = ntohs(sin.sin_port);
		snprintf(uri, urilen, "tcp:127.0.0.1:%u", *port);
	}
	/* The engine owns the listener now, whatever happens. */
	ret = mig_load_listen(dst->e, l, err, sizeof(err));
	CHECK(ret == 0, "mig_load_listen %s: %s", uri, err);
	return ret;
}

int source_start(struct side *src, const char *uri)
{
	char err[256] = "";
	int ret = mig_save_start(src->e, uri, err, sizeof(err));

	CHECK(ret == 0, "mig_save_start %s: %s", uri, err);
	return ret;
}

/* Until the engine's migration ended, bounded; then collect its thread
 * (which only cleans up by then). */
enum mig_status wait_final(struct side *s)
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

/* Compare the two guests' memfds (reading holes allocates nothing). */
int ram_compare(struct side *a, struct side *b, struct ram_diff *d)
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

void dev_state_check(struct side *s, enum vfu_mig_state want)
{
	enum vfu_mig_state st = VFU_MIG_STATE_ERROR;
	int ret = s->dev->ops->mig_get_state(s->dev, &st);

	CHECK(s->dev->mig_state == want, "%s device: engine left it in %s, "
	      "want %s", s->role, vfu_mig_state_name(s->dev->mig_state),
	      vfu_mig_state_name(want));
	CHECK(ret == 0 && st == want, "%s device says %s (%d), want %s",
	      s->role, vfu_mig_state_name(st), ret, vfu_mig_state_name(want));
}

uint32_t devmem_crc(struct side *s)
{
	uint32_t crc = 0;
	int ret = fh_devmem_crc(s->dev, s->h.jobs.devmem_size, &crc);

	CHECK(ret == 0, "%s: reading BAR2: %s", s->role, strerror(-ret));
	return crc;
}

void print_figures(struct side *src, struct side *dst)
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
void check_completed(struct side *src, struct side *dst, bool devlog)
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
void check_source_kept(struct side *src)
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
	/* A failure before the first pass never started the log. */
	CHECK(h->log_starts == h->log_stops,
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
void check_dest_refused(struct side *dst, bool loaded)
{
	struct fake_host *h = &dst->h;

	CHECK(h->load_failed, "destination: load_failed not called");
	CHECK(!h->started && h->start_calls == 0 && h->have_applied == loaded,
	      "destination started %d (%u calls), state applied %d",
	      h->started, h->start_calls, h->have_applied);
	CHECK(h->loaded == NULL, "loaded VMM state not discarded");
	dev_state_check(dst, VFU_MIG_STATE_RUNNING);
}

bool error_has(struct side *s, const char *what, char *out,
	       size_t len)
{
	struct mig_stats st;

	mig_engine_stats(s->e, &st);
	snprintf(out, len, "%s", st.error);
	return strstr(st.error, what) != NULL;
}

/* The same source engine, a fresh destination: still usable. */
void migrate_again(struct side *src, bool tcp)
{
	struct side dst = { 0 };

	printf("  again, to a fresh destination:\n");
	set_params(src, DOWNTIME_MS, true);
	if (side_open(&dst, "destination2", MODEL, false))
		goto out;
	if (!(tcp ? start_tcp(src, &dst) : start_socketpair(src, &dst, NULL, NULL))) {
		wait_final(src);
		wait_final(&dst);
		check_completed(src, &dst, true);
	}
out:
	side_close(&dst);
}


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

int harness_main(const struct test_case *cases, size_t nr_cases,
		 int argc, char **argv)
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
	for (size_t i = 0; i < nr_cases; i++)
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
