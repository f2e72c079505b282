// SPDX-License-Identifier: BSD-3-Clause
/*
 * ferry-dev live update (takeover.h): the control socket of a running
 * server and the process that takes its device over.
 *
 * The state blob that rides with the fds (cpr_fds_set_blob):
 *
 *   u32 magic "FDEV"   u16 version 1   u16 hdr_len 20
 *   u32 server_len     u32 device_len
 *   u32 crc32c (of the header with crc 0, then both parts)
 *   server_len bytes: vfu_server_save()'s session
 *   device_len bytes: ferry_dma_save()'s device state
 *
 * fds: the server's ("listen", "client", "dma.<n>", "irq.<i>.<v>"),
 * "devmem" (BAR2's memfd: device memory moves without a copy) and
 * "control" (this socket, so that the next update finds the new process
 * at the same path).
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "ferry/cpr_fds.h"
#include "ferry/crc32c.h"
#include "ferry/log.h"
#include "ferry/util.h"
#include "ferry/vfu_server.h"
#include "ferry_dma.h"
#include "takeover.h"

#define TK_MAGIC		0x4f4b5446u	/* "FTKO" */
#define TK_PROTO_VERSION	1u
#define TK_MSG_MAX		1024u

enum tk_type {
	TK_HELLO = 1,
	TK_OFFER,
	TK_REFUSE,
	TK_TAKEN,
	TK_ABORT,
	TK_COMMIT,
};

/* Bounds on every wait (ms). */
#define TK_HELLO_MS		2000u	/* old: accept -> HELLO */
#define TK_PAUSE_MS		2000u	/* old: the engine's current step */
#define TK_HOLD_MS		2000u	/* old: the dispatcher's message */
#define TK_SEND_MS		5000u	/* either: one message or the fds */
#define TK_OFFER_MS		15000u	/* new: HELLO -> OFFER (pause, hold) */
#define TK_MARGIN_MS		1000u	/* new: beyond the old's deadline */
#define TK_GONE_MS		2000u	/* new: an old one that hung up */

struct tk_hdr {
	uint32_t magic;
	uint16_t version;
	uint16_t type;
	uint32_t len;
} __attribute__((packed));

struct tk_offer {
	uint64_t deadline_ns;
	uint64_t quiesce_ns;
	uint32_t pid;
} __attribute__((packed));

#define TK_BLOB_MAGIC		0x56454446u	/* "FDEV" */
#define TK_BLOB_VERSION		1u

struct tk_blob_hdr {
	uint32_t magic;
	uint16_t version;
	uint16_t hdr_len;
	uint32_t srv_len;
	uint32_t dev_len;
	uint32_t crc;
} __attribute__((packed));

_Static_assert(sizeof(struct tk_blob_hdr) == 20, "takeover blob header");

static const char *const fault_names[] = {
	[TK_FAULT_NONE] = "none",
	[TK_FAULT_DIE_BEFORE_TAKEN] = "die-before-taken",
	[TK_FAULT_CORRUPT_BLOB] = "corrupt-blob",
	[TK_FAULT_DROP_FD] = "drop-fd",
	[TK_FAULT_STALL_BEFORE_TAKEN] = "stall-before-taken",
	[TK_FAULT_LOSE_IRQ_PENDING] = "lose-irq-pending",
	[TK_FAULT_LOSE_RING_TAIL] = "lose-ring-tail",
	[TK_FAULT_RESET_DEVICE] = "reset-device",
};

int tk_fault_parse(const char *s, struct tk_fault_opt *out)
{
	const char *eq = strchr(s, '=');
	size_t n = eq ? (size_t)(eq - s) : strlen(s);

	memset(out, 0, sizeof(*out));
	for (size_t i = 1; i < ARRAY_SIZE(fault_names); i++) {
		if (strlen(fault_names[i]) != n || strncmp(s, fault_names[i], n))
			continue;
		out->kind = (enum tk_fault)i;
		if (eq && strlen(eq + 1) >= sizeof(out->arg))
			return -EINVAL;
		if (eq)
			strcpy(out->arg, eq + 1);
		/* These two need an argument, the others take none. */
		if ((out->kind == TK_FAULT_DROP_FD ||
		     out->kind == TK_FAULT_STALL_BEFORE_TAKEN) != !!eq)
			return -EINVAL;
		return 0;
	}
	return -EINVAL;
}

/* ---- bounded I/O on the control connection ---- */

static uint64_t deadline_in(unsigned int ms)
{
	return clock_ns() + (uint64_t)ms * 1000000ull;
}

static int msg_send(int fd, enum tk_type type, const void *payload,
		    size_t len, uint64_t deadline)
{
	struct tk_hdr h = {
		.magic = TK_MAGIC, .version = TK_PROTO_VERSION,
		.type = (uint16_t)type, .len = (uint32_t)len,
	};
	int ret;

	if (len > TK_MSG_MAX)
		return -EMSGSIZE;
	ret = sock_send_all(fd, &h, sizeof(h), deadline);
	if (!ret && len)
		ret = sock_send_all(fd, payload, len, deadline);
	return ret;
}

static int msg_send_text(int fd, enum tk_type type, const char *text,
			 unsigned int timeout_ms)
{
	return msg_send(fd, type, text, MIN(strlen(text), (size_t)TK_MSG_MAX),
			deadline_in(timeout_ms));
}

/* One message of at most cap payload bytes (cap <= TK_MSG_MAX). The
 * peer is not trusted: -EPROTO for anything but a well-formed one. */
static int msg_recv(int fd, enum tk_type *type, void *buf, size_t cap,
		    uint32_t *len, uint64_t deadline)
{
	struct tk_hdr h;
	int ret = sock_recv_all(fd, &h, sizeof(h), deadline);

	if (ret)
		return ret;
	if (h.magic != TK_MAGIC || h.version != TK_PROTO_VERSION ||
	    h.type < TK_HELLO || h.type > TK_COMMIT || h.len > cap)
		return -EPROTO;
	ret = sock_recv_all(fd, buf, h.len, deadline);
	if (ret)
		return ret;
	*type = (enum tk_type)h.type;
	*len = h.len;
	return 0;
}

/* A reason from the peer, made printable. */
static void text_of(const uint8_t *p, uint32_t len, char *out, size_t cap)
{
	size_t n = MIN((size_t)len, cap - 1);

	for (size_t i = 0; i < n; i++)
		out[i] = p[i] >= 0x20 && p[i] < 0x7f ? (char)p[i] : '?';
	out[n] = '\0';
}

static uint64_t us_between(uint64_t a, uint64_t b)
{
	return b > a ? (b - a) / 1000 : 0;
}

/* ---- the state blob ---- */

static uint32_t blob_crc(struct tk_blob_hdr h, const uint8_t *rest,
			 size_t len)
{
	h.crc = 0;
	return crc32c_final(crc32c_update(crc32c_update(CRC32C_INIT, &h,
							sizeof(h)),
					  rest, len));
}

static int blob_pack(const void *srv, size_t srv_len, const void *dev,
		     size_t dev_len, void **out, size_t *len)
{
	struct tk_blob_hdr h = {
		.magic = TK_BLOB_MAGIC, .version = TK_BLOB_VERSION,
		.hdr_len = sizeof(h),
		.srv_len = (uint32_t)srv_len, .dev_len = (uint32_t)dev_len,
	};
	size_t total = sizeof(h) + srv_len + dev_len;
	uint8_t *b;

	if (srv_len > CPR_MAX_BLOB || dev_len > CPR_MAX_BLOB ||
	    total > CPR_MAX_BLOB)
		return -E2BIG;
	b = malloc(total);
	if (!b)
		return -ENOMEM;
	memcpy(b + sizeof(h), srv, srv_len);
	memcpy(b + sizeof(h) + srv_len, dev, dev_len);
	h.crc = blob_crc(h, b + sizeof(h), srv_len + dev_len);
	memcpy(b, &h, sizeof(h));
	*out = b;
	*len = total;
	return 0;
}

/* Split a received blob into its parts (pointers into it). */
static int blob_unpack(const uint8_t *b, size_t len, const uint8_t **srv,
		       size_t *srv_len, const uint8_t **dev, size_t *dev_len,
		       char *err, size_t errlen)
{
	struct tk_blob_hdr h;
	uint64_t total;
	uint32_t crc;

	if (len < sizeof(h)) {
		snprintf(err, errlen, "state blob of %zu bytes", len);
		return -EBADMSG;
	}
	memcpy(&h, b, sizeof(h));
	if (h.magic != TK_BLOB_MAGIC || h.version != TK_BLOB_VERSION ||
	    h.hdr_len != sizeof(h)) {
		snprintf(err, errlen, "state blob magic 0x%08x version %u "
			 "header %u (expected 0x%08x, %u, %zu)", h.magic,
			 h.version, h.hdr_len, TK_BLOB_MAGIC, TK_BLOB_VERSION,
			 sizeof(h));
		return -EBADMSG;
	}
	total = (uint64_t)sizeof(h) + h.srv_len + h.dev_len;
	if (total != len) {
		snprintf(err, errlen, "state blob of %zu bytes, its header "
			 "says %" PRIu64, len, total);
		return -EBADMSG;
	}
	crc = blob_crc(h, b + sizeof(h), len - sizeof(h));
	if (crc != h.crc) {
		snprintf(err, errlen, "state blob CRC 0x%08x, computed 0x%08x",
			 h.crc, crc);
		return -EBADMSG;
	}
	*srv = b + sizeof(h);
	*srv_len = h.srv_len;
	*dev = b + sizeof(h) + h.srv_len;
	*dev_len = h.dev_len;
	return 0;
}

/* ---- give side ---- */

struct tk_give {
	struct tk_give_opts o;
	pthread_t thread;
	int stop_fd;
	atomic_bool handed;
};

/* The registry for one takeover: every fd borrowed, the blob copied. */
static int give_capture(struct tk_give *g, struct cpr_fds **out, char *why,
			size_t whylen)
{
	void *sblob = NULL, *dblob = NULL, *blob = NULL;
	size_t slen, dlen, len;
	struct cpr_fds *fds;
	int ret;

	ret = cpr_fds_new(&fds);
	if (ret)
		return ret;
	ret = vfu_server_save(g->o.srv, fds, &sblob, &slen);
	if (ret) {
		snprintf(why, whylen, "cannot save the server session: %s",
			 strerror(-ret));
		goto err_free;
	}
	ret = ferry_dma_save(g->o.dma, &dblob, &dlen);
	if (ret == -EBUSY) {
		snprintf(why, whylen, "a migration of the device is in "
			 "progress (%s); update before or after it",
			 vfu_mig_state_name(ferry_dma_mig_state(g->o.dma)));
		goto err_free;
	}
	if (ret) {
		snprintf(why, whylen, "cannot save the device: %s",
			 strerror(-ret));
		goto err_free;
	}
	ret = cpr_fds_add(fds, "devmem", ferry_dma_devmem_fd(g->o.dma));
	if (!ret)
		ret = cpr_fds_add(fds, "control", g->o.listen_fd);
	if (!ret)
		ret = blob_pack(sblob, slen, dblob, dlen, &blob, &len);
	if (!ret)
		ret = cpr_fds_set_blob(fds, blob, len);
	if (ret) {
		snprintf(why, whylen, "cannot build the takeover state: %s",
			 strerror(-ret));
		goto err_free;
	}
	free(blob);
	free(dblob);
	free(sblob);
	*out = fds;
	return 0;

err_free:
	free(blob);
	free(dblob);
	free(sblob);
	cpr_fds_free(fds);
	return ret;
}

static void give_resume(struct tk_give *g)
{
	/* The dispatcher first: the engine's next DMA may be a message
	 * whose reply only the dispatcher can route. */
	vfu_server_release(g->o.srv);
	ferry_dma_unpause(g->o.dma);
}

/* One takeover request on connection fd. */
static void give_one(struct tk_give *g, int fd, uint32_t peer_pid)
{
	const char *name = g->o.name;
	uint8_t buf[TK_MSG_MAX];
	struct cpr_fds *fds = NULL;
	struct tk_offer offer;
	uint64_t t0, t_quiet, t_sent, t_taken;
	enum tk_type type;
	char why[256], text[128];
	uint32_t len, pid;
	int ret;

	ret = msg_recv(fd, &type, buf, sizeof(buf), &len,
		       deadline_in(TK_HELLO_MS));
	if (ret || type != TK_HELLO || len != sizeof(pid)) {
		pr_warn("%s: control: not a takeover request from pid %u "
			"(%s); ignored", name, peer_pid,
			ret ? strerror(-ret) : "unexpected message");
		return;
	}
	/* The kernel's word for who is asking; HELLO's own only if the
	 * kernel has none. */
	memcpy(&pid, buf, sizeof(pid));
	if (peer_pid)
		pid = peer_pid;
	pr_info("%s: takeover requested by pid %u", name, pid);

	t0 = clock_ns();
	ret = ferry_dma_pause(g->o.dma, TK_PAUSE_MS);
	if (ret) {
		snprintf(why, sizeof(why), "the device engine did not stop "
			 "within %u ms", TK_PAUSE_MS);
		goto refuse;
	}
	ret = vfu_server_hold(g->o.srv, TK_HOLD_MS);
	if (ret) {
		ferry_dma_unpause(g->o.dma);
		snprintf(why, sizeof(why), "the server did not reach a message "
			 "boundary within %u ms (%s)", TK_HOLD_MS,
			 strerror(-ret));
		goto refuse;
	}
	t_quiet = clock_ns();
	ret = give_capture(g, &fds, why, sizeof(why));
	if (ret) {
		give_resume(g);
		goto refuse;
	}

	offer = (struct tk_offer){
		.deadline_ns = deadline_in(g->o.timeout_ms),
		.quiesce_ns = t0, .pid = (uint32_t)getpid(),
	};
	ret = msg_send(fd, TK_OFFER, &offer, sizeof(offer),
		       deadline_in(TK_SEND_MS));
	if (!ret)
		ret = cpr_fds_send(fds, fd, TK_SEND_MS);
	cpr_fds_free(fds);	/* borrowed: closes nothing */
	t_sent = clock_ns();
	if (ret) {
		snprintf(why, sizeof(why), "sending the device failed: %s",
			 strerror(-ret));
		goto abort;
	}

	ret = msg_recv(fd, &type, buf, sizeof(buf), &len, offer.deadline_ns);
	t_taken = clock_ns();
	if (!ret && type == TK_TAKEN && !len && t_taken < offer.deadline_ns)
		goto commit;
	if (!ret && type == TK_ABORT) {
		text_of(buf, len, text, sizeof(text));
		snprintf(why, sizeof(why), "the new process gave up: %s", text);
		give_resume(g);
		goto resumed;
	}
	if (ret == -EPIPE)
		snprintf(why, sizeof(why), "the new process went away before "
			 "it took the device");
	else if (ret == -ETIMEDOUT || (!ret && type == TK_TAKEN))
		snprintf(why, sizeof(why), "no \"taken\" within %u ms",
			 g->o.timeout_ms);
	else
		snprintf(why, sizeof(why), "bad answer from the new process "
			 "(%s)", ret ? strerror(-ret) : "unexpected message");
abort:
	/* Said before serving again, so that the new process never serves
	 * too (it waits for this, or sees us gone). */
	msg_send_text(fd, TK_ABORT, why, 200);
	give_resume(g);
resumed:
	pr_warn("%s: takeover by pid %u failed: %s; serving again (the "
		"client was paused %" PRIu64 " us)", name, pid, why,
		us_between(t0, clock_ns()));
	return;

refuse:
	pr_warn("%s: takeover by pid %u refused: %s", name, pid, why);
	msg_send_text(fd, TK_REFUSE, why, 200);
	return;

commit:
	/* From here on the device is the new process's, whatever happens
	 * to this message (if it is lost, the new one sees us gone). */
	atomic_store(&g->handed, true);
	msg_send(fd, TK_COMMIT, NULL, 0, deadline_in(TK_SEND_MS));
	pr_info("%s: handed over to pid %u: quiesce_us=%" PRIu64
		" capture_us=%" PRIu64 " taken_us=%" PRIu64, name, pid,
		us_between(t0, t_quiet), us_between(t_quiet, t_sent),
		us_between(t0, t_taken));
	vfu_server_handover(g->o.srv);
}

static void *give_thread(void *arg)
{
	struct tk_give *g = arg;

	while (!atomic_load(&g->handed)) {
		struct pollfd p[2] = {
			{ .fd = g->o.listen_fd, .events = POLLIN },
			{ .fd = g->stop_fd, .events = POLLIN },
		};
		uid_t uid = 0;
		struct ucred cred;
		socklen_t clen = sizeof(cred);
		int fd;

		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			pr_err("%s: control socket: %s", g->o.name,
			       strerror(errno));
			break;
		}
		if (p[1].revents)
			break;
		fd = accept4(g->o.listen_fd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0) {
			/* Out of fds: do not spin on a pending connection. */
			if (errno == EMFILE || errno == ENFILE) {
				struct timespec ts = { 0, 100 * 1000000L };

				nanosleep(&ts, NULL);
			}
			continue;
		}
		/* Whoever takes the device gets guest memory: the main
		 * socket's rule applies. */
		if (sock_peer_allowed(fd, &g->o.access, &uid)) {
			pr_warn("%s: control: refused a takeover by uid %u",
				g->o.name, (unsigned int)uid);
			close(fd);
			continue;
		}
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) < 0)
			cred.pid = 0;
		give_one(g, fd, (uint32_t)cred.pid);
		close(fd);
	}
	return NULL;
}

int tk_give_start(const struct tk_give_opts *opts, struct tk_give **out)
{
	struct tk_give *g = calloc(1, sizeof(*g));
	int ret;

	if (!g)
		return -ENOMEM;
	g->o = *opts;
	g->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (g->stop_fd < 0) {
		ret = -errno;
		goto err_free;
	}
	ret = -pthread_create(&g->thread, NULL, give_thread, g);
	if (ret)
		goto err_close_stop;
	*out = g;
	return 0;

err_close_stop:
	close_safely(&g->stop_fd);
err_free:
	free(g);
	return ret;
}

void tk_give_stop(struct tk_give *g)
{
	uint64_t one = 1;

	if (!g)
		return;
	if (write(g->stop_fd, &one, sizeof(one)) < 0)
		pr_debug("%s: control stop: %d", g->o.name, -errno);
	pthread_join(g->thread, NULL);
	close_safely(&g->stop_fd);
	close_safely(&g->o.listen_fd);
	free(g);
}

bool tk_give_handed_over(struct tk_give *g)
{
	return g && atomic_load(&g->handed);
}

/* ---- take side ---- */

struct tk_take {
	int fd;
	struct tk_fault_opt fault;
	struct tk_offer offer;
	struct cpr_fds *fds;
	uint8_t *blob;			/* our copy */
	size_t blob_len;
	const uint8_t *srv, *dev;	/* parts, inside blob */
	size_t srv_len, dev_len;
};

static void take_faults_on_arrival(struct tk_take *t)
{
	int fd;

	switch (t->fault.kind) {
	case TK_FAULT_CORRUPT_BLOB:
		pr_warn("debug: flipping byte %zu of the %zu-byte state blob",
			t->blob_len / 2, t->blob_len);
		t->blob[t->blob_len / 2] ^= 0x20;
		break;
	case TK_FAULT_DROP_FD:
		fd = cpr_fds_take(t->fds, t->fault.arg);
		pr_warn("debug: dropping fd \"%s\" (%s)", t->fault.arg,
			fd >= 0 ? "received" : "was not there");
		if (fd >= 0)
			close(fd);
		break;
	default:
		break;
	}
}

int tk_take_connect(const char *path, const struct tk_fault_opt *fault,
		    struct tk_take **out, char *err, size_t errlen)
{
	struct tk_take *t = calloc(1, sizeof(*t));
	uint8_t buf[TK_MSG_MAX];
	enum tk_type type;
	uint32_t len, pid = (uint32_t)getpid();
	const void *blob;
	char text[128];
	int ret;

	if (!t)
		return -ENOMEM;
	if (fault)
		t->fault = *fault;
	t->fd = unix_socket_connect(path);
	if (t->fd < 0) {
		ret = t->fd;
		snprintf(err, errlen, "cannot connect to %s: %s", path,
			 strerror(-ret));
		goto err_free;
	}
	ret = msg_send(t->fd, TK_HELLO, &pid, sizeof(pid),
		       deadline_in(TK_SEND_MS));
	if (ret) {
		snprintf(err, errlen, "cannot ask %s: %s", path,
			 strerror(-ret));
		goto err_free;
	}
	ret = msg_recv(t->fd, &type, buf, sizeof(buf), &len,
		       deadline_in(TK_OFFER_MS));
	if (!ret && type == TK_REFUSE) {
		text_of(buf, len, text, sizeof(text));
		snprintf(err, errlen, "the running server refused: %s", text);
		ret = -EBUSY;
		goto err_free;
	}
	if (ret || type != TK_OFFER || len != sizeof(t->offer)) {
		snprintf(err, errlen, "no offer from %s (%s)", path,
			 ret ? strerror(-ret) : "unexpected message");
		ret = ret ? ret : -EPROTO;
		goto err_free;
	}
	memcpy(&t->offer, buf, sizeof(t->offer));
	ret = cpr_fds_recv(t->fd, TK_SEND_MS, &t->fds, text, sizeof(text));
	if (ret) {
		snprintf(err, errlen, "receiving the device: %s", text);
		goto err_abort;
	}
	blob = cpr_fds_blob(t->fds, &t->blob_len);
	t->blob = malloc(t->blob_len ? t->blob_len : 1);
	if (!t->blob) {
		ret = -ENOMEM;
		snprintf(err, errlen, "out of memory");
		goto err_abort;
	}
	memcpy(t->blob, blob, t->blob_len);
	take_faults_on_arrival(t);
	ret = blob_unpack(t->blob, t->blob_len, &t->srv, &t->srv_len, &t->dev,
			  &t->dev_len, err, errlen);
	if (ret)
		goto err_abort;
	*out = t;
	return 0;

err_abort:
	/* The old process resumes now rather than at its deadline. */
	msg_send_text(t->fd, TK_ABORT, err, 200);
err_free:
	tk_take_free(t);
	return ret;
}

struct cpr_fds *tk_take_fds(struct tk_take *t)
{
	return t->fds;
}

void tk_take_server_state(struct tk_take *t, const void **p, size_t *len)
{
	*p = t->srv;
	*len = t->srv_len;
}

void tk_take_device_state(struct tk_take *t, const void **p, size_t *len)
{
	*p = t->dev;
	*len = t->dev_len;
}

/* An old process that hung up without a decision: gone (or a zombie)? */
static bool pid_gone(uint32_t pid)
{
	char path[64], stat[256];
	const char *rp;
	FILE *f;
	bool gone = false;

	if (!pid || (kill((pid_t)pid, 0) < 0 && errno == ESRCH))
		return true;
	snprintf(path, sizeof(path), "/proc/%u/stat", pid);
	f = fopen(path, "re");
	if (!f)
		return true;
	if (fgets(stat, sizeof(stat), f)) {
		rp = strrchr(stat, ')');
		gone = rp && (rp[1] == ' ') && (rp[2] == 'Z' || rp[2] == 'X');
	}
	fclose(f);
	return gone;
}

int tk_take_commit(struct tk_take *t, char *err, size_t errlen)
{
	uint64_t until = t->offer.deadline_ns + TK_MARGIN_MS * 1000000ull;
	uint8_t buf[TK_MSG_MAX];
	enum tk_type type;
	uint32_t len;
	char text[128];
	int ret;

	if (t->fault.kind == TK_FAULT_DIE_BEFORE_TAKEN) {
		pr_warn("debug: dying before \"taken\"");
		raise(SIGKILL);
	}
	if (t->fault.kind == TK_FAULT_STALL_BEFORE_TAKEN) {
		unsigned long ms = strtoul(t->fault.arg, NULL, 10);
		struct timespec ts = { (time_t)(ms / 1000),
				       (long)(ms % 1000) * 1000000L };

		pr_warn("debug: stalling %lu ms before \"taken\"", ms);
		while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
			;
	}
	/* If this fails the old process has decided already (its ABORT is
	 * waiting to be read) or is gone: the answer tells. */
	ret = msg_send(t->fd, TK_TAKEN, NULL, 0, deadline_in(TK_SEND_MS));
	if (ret)
		pr_debug("saying \"taken\": %s", strerror(-ret));
	ret = msg_recv(t->fd, &type, buf, sizeof(buf), &len, until);
	if (!ret && type == TK_COMMIT && !len)
		return 0;
	if (!ret && type == TK_ABORT) {
		text_of(buf, len, text, sizeof(text));
		snprintf(err, errlen, "the running server kept the device: %s",
			 text);
		return -ECANCELED;
	}
	if (ret == -EPIPE || ret == -ECONNRESET) {
		/* No decision and no connection: either it is dead (it
		 * never served again: ours), or it broke the protocol. */
		uint64_t end = deadline_in(TK_GONE_MS);

		while (!pid_gone(t->offer.pid) && clock_ns() < end) {
			struct timespec ts = { 0, 10 * 1000000L };

			nanosleep(&ts, NULL);
		}
		if (pid_gone(t->offer.pid)) {
			pr_warn("the old server (pid %u) died without a "
				"decision; taking the device", t->offer.pid);
			return 0;
		}
		snprintf(err, errlen, "the old server (pid %u) hung up "
			 "without a decision", t->offer.pid);
		return -ECANCELED;
	}
	snprintf(err, errlen, "no decision from the running server (%s)",
		 ret ? strerror(-ret) : "unexpected message");
	return ret ? ret : -EPROTO;
}

void tk_take_abort(struct tk_take *t, const char *why)
{
	msg_send_text(t->fd, TK_ABORT, why, 200);
}

void tk_take_report(struct tk_take *t, const char *name)
{
	pr_info("%s: took the device over from pid %u: paused_us=%" PRIu64
		" state_bytes=%zu fds=%u", name, t->offer.pid,
		us_between(t->offer.quiesce_ns, clock_ns()), t->blob_len,
		cpr_fds_count(t->fds));
}

void tk_take_free(struct tk_take *t)
{
	if (!t)
		return;
	close_safely(&t->fd);
	cpr_fds_free(t->fds);
	free(t->blob);
	free(t);
}
