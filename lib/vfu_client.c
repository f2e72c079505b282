/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * vfio-user client: negotiation, a receive thread that matches replies to
 * waiting requests by msg_id and serves the server's DMA_READ/DMA_WRITE
 * requests, and one helper per command.
 *
 * The server is not trusted. Every reply is checked against the request
 * that caused it (command, length, fds) before a field is read, counts
 * are capped, and the stream is dropped (every waiter woken with
 * -ENOTCONN) as soon as it cannot be trusted to stay in sync.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ferry/log.h"
#include "ferry/trace.h"
#include "ferry/util.h"
#include "ferry/vfu_caps.h"
#include "ferry/vfu_client.h"
#include "ferry/vfu_transport.h"

#define VFU_CLIENT_DEFAULT_MAX_FDS	16u
/* Room beyond max_data_xfer_size for headers and small structs. */
#define VFU_CLIENT_RECV_SLACK		4096u
/* Region info replies (struct + capability chain) are small. */
#define VFU_CLIENT_REGION_INFO_FIRST	256u
#define VFU_CLIENT_REGION_INFO_MAX	4096u
#define VFU_CLIENT_REGION_INFO_TRIES	3
#define VFU_CLIENT_MAX_CAP_STEPS	16
#define VFU_CLIENT_INIT_MAPS		8u

/* One request waiting for its reply. Lives on the requester's stack. */
struct vfu_pending {
	struct vfu_pending *next;
	uint16_t msg_id;
	uint16_t cmd;
	size_t max_fds;		/* fds the reply may carry */
	bool done;
	int err;
	struct vfu_msg reply;	/* owned by the waiter once done */
	pthread_cond_t cond;
};

/* A DMA mapping as the client knows it (to serve DMA_READ/WRITE). */
struct vfu_client_map {
	uint64_t iova;
	uint64_t size;
	uint32_t prot;
	void *vaddr;		/* NULL: not reachable by messages */
};

enum vfu_probe {
	VFU_PROBE_UNKNOWN = 0,
	VFU_PROBE_YES,
	VFU_PROBE_NO,
};

struct vfu_client {
	struct vfu_conn conn;
	struct vfu_caps caps;		/* the server's, as negotiated */
	uint32_t our_max_xfer;
	uint32_t our_max_fds;
	uint32_t timeout_ms;

	pthread_t thread;
	bool thread_started;
	/* Live update: the receive thread leaves at a message boundary
	 * when woken with thread_stop, and never touches the socket. */
	int wake_fd;			/* eventfd */
	bool thread_stop;		/* under lock */
	bool suspended;			/* under lock: requests refused */

	pthread_mutex_t lock;		/* pending list, state, callbacks */
	struct vfu_pending *pending;
	uint16_t next_id;
	bool connected;
	bool closing;
	void (*disconnect_cb)(void *opaque);
	void *disconnect_opaque;
	void (*dirty_cb)(void *opaque, uint64_t iova, uint64_t len);
	void *dirty_opaque;

	/*
	 * Held while a DMA message is served, so an unmap that returns
	 * never races with a copy into the memory it covered.
	 */
	pthread_mutex_t maps_lock;
	struct vfu_client_map *maps;
	size_t nr_maps;
	size_t cap_maps;

	enum vfu_probe probe_precopy_info;
	enum vfu_probe probe_data_size;
};

/* ---- small helpers ---- */

/* Largest data transfer both sides accept. */
static uint32_t client_xfer(const struct vfu_client *c)
{
	return MIN(c->caps.max_data_xfer_size, c->our_max_xfer);
}

static int err_from_reply(uint32_t error_no)
{
	/* A server cannot make us return success or a nonsense value. */
	if (error_no == 0 || error_no > VFU_MAX_ERRNO)
		return -EINVAL;
	return -(int)error_no;
}

/* ---- pending requests and the receive thread ---- */

static struct vfu_pending *pending_unlink(struct vfu_client *c, uint16_t id)
{
	for (struct vfu_pending **pp = &c->pending; *pp; pp = &(*pp)->next) {
		struct vfu_pending *p = *pp;

		if (p->msg_id == id) {
			*pp = p->next;
			p->next = NULL;
			return p;
		}
	}
	return NULL;
}

static bool pending_id_busy(struct vfu_client *c, uint16_t id)
{
	for (struct vfu_pending *p = c->pending; p; p = p->next)
		if (p->msg_id == id)
			return true;
	return false;
}

/* Called with c->lock held. */
static void client_fail_all(struct vfu_client *c, int err)
{
	while (c->pending) {
		struct vfu_pending *p = c->pending;

		c->pending = p->next;
		p->next = NULL;
		p->err = err;
		p->done = true;
		pthread_cond_signal(&p->cond);
	}
}

static void client_deliver_reply(struct vfu_client *c, struct vfu_msg *msg)
{
	struct vfu_pending *p;

	pthread_mutex_lock(&c->lock);
	p = pending_unlink(c, msg->hdr.msg_id);
	if (!p) {
		pthread_mutex_unlock(&c->lock);
		/* A late reply to a timed-out request, or a lying server:
		 * nobody waits for it. Its fds are closed by release. */
		pr_warn("vfio-user client: unexpected reply id %u cmd %u",
			msg->hdr.msg_id, msg->hdr.cmd);
		vfu_msg_release(msg);
		return;
	}
	if (msg->hdr.cmd != p->cmd) {
		pr_warn("vfio-user client: reply id %u has cmd %u, expected %u",
			msg->hdr.msg_id, msg->hdr.cmd, p->cmd);
		p->err = -EINVAL;
	} else if (msg->fd_error || msg->nr_fds > p->max_fds) {
		pr_warn("vfio-user client: unexpected fds in reply to %s",
			vfu_cmd_name(p->cmd));
		p->err = -EINVAL;
	} else if (msg->hdr.flags & VFU_F_ERROR) {
		p->err = err_from_reply(msg->hdr.error_no);
	} else {
		p->err = 0;
		p->reply = *msg;
		memset(msg, 0, sizeof(*msg));
	}
	/* Refused fds are closed before the waiter learns of the error. */
	vfu_msg_release(msg);
	p->done = true;
	pthread_cond_signal(&p->cond);
	pthread_mutex_unlock(&c->lock);
}

/* Find the map holding [iova, iova+len) entirely. maps_lock held. */
static const struct vfu_client_map *map_find(struct vfu_client *c,
					     uint64_t iova, uint64_t len)
{
	for (size_t i = 0; i < c->nr_maps; i++) {
		const struct vfu_client_map *m = &c->maps[i];

		if (iova >= m->iova && range_within(iova - m->iova, len, m->size))
			return m;
	}
	return NULL;
}

/* Serve a DMA_READ or DMA_WRITE from the server. */
static void client_serve_dma(struct vfu_client *c, struct vfu_msg *msg)
{
	bool is_write = msg->hdr.cmd == VFU_CMD_DMA_WRITE;
	uint32_t need = is_write ? VFU_DMA_FLAG_WRITE : VFU_DMA_FLAG_READ;
	const struct vfu_client_map *m;
	struct vfu_dma_access acc;
	struct iovec iov[2];
	uint8_t *host;
	int err = 0;

	if (msg->nr_fds || msg->fd_error) {
		err = -EINVAL;
		goto reply;
	}
	if (msg->payload_len < sizeof(acc)) {
		err = -EINVAL;
		goto reply;
	}
	memcpy(&acc, msg->payload, sizeof(acc));
	if (acc.count > c->our_max_xfer ||
	    msg->payload_len != sizeof(acc) + (is_write ? acc.count : 0)) {
		err = -EINVAL;
		goto reply;
	}

	pthread_mutex_lock(&c->maps_lock);
	m = map_find(c, acc.addr, acc.count);
	if (!m || !m->vaddr) {
		err = -EFAULT;
	} else if (!(m->prot & need)) {
		err = -EACCES;
	} else {
		host = (uint8_t *)m->vaddr + (acc.addr - m->iova);
		iov[0].iov_base = &acc;
		iov[0].iov_len = sizeof(acc);
		if (is_write) {
			memcpy(host, msg->payload + sizeof(acc), acc.count);
			/* Logged before the device learns the write is done,
			 * so a migration never misses the page. */
			if (c->dirty_cb && acc.count)
				c->dirty_cb(c->dirty_opaque, acc.addr,
					    acc.count);
			vfu_send_reply(&c->conn, &msg->hdr, 0, iov, 1, NULL, 0);
		} else {
			iov[1].iov_base = host;
			iov[1].iov_len = acc.count;
			vfu_send_reply(&c->conn, &msg->hdr, 0, iov, 2, NULL, 0);
		}
	}
	pthread_mutex_unlock(&c->maps_lock);
	if (err)
		goto reply;
	vfu_msg_release(msg);
	return;

reply:
	pr_warn("vfio-user client: refused %s: %s",
		vfu_cmd_name(msg->hdr.cmd), strerror(-err));
	/* Refused fds are closed before the server learns of the error
	 * (release keeps hdr). */
	vfu_msg_release(msg);
	vfu_send_reply(&c->conn, &msg->hdr, err, NULL, 0, NULL, 0);
}

static void client_handle_request(struct vfu_client *c, struct vfu_msg *msg)
{
	switch (msg->hdr.cmd) {
	case VFU_CMD_DMA_READ:
	case VFU_CMD_DMA_WRITE:
		client_serve_dma(c, msg);
		return;
	default:
		pr_warn("vfio-user client: unexpected request %u from server",
			msg->hdr.cmd);
		vfu_msg_release(msg);
		vfu_send_reply(&c->conn, &msg->hdr, -EINVAL, NULL, 0, NULL, 0);
		return;
	}
}

/* 1: a message is waiting; 0: asked to stop (suspend); -errno. */
static int client_wait_message(struct vfu_client *c)
{
	struct pollfd p[2] = {
		{ .fd = c->conn.fd, .events = POLLIN },
		{ .fd = c->wake_fd, .events = POLLIN },
	};
	uint64_t v;
	bool stop;

	for (;;) {
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (p[1].revents) {
			if (read(c->wake_fd, &v, sizeof(v)) < 0 &&
			    errno != EAGAIN)
				return -errno;
			pthread_mutex_lock(&c->lock);
			stop = c->thread_stop;
			pthread_mutex_unlock(&c->lock);
			if (stop)
				return 0;
		}
		if (p[0].revents)
			return 1;
	}
}

static void *client_recv_thread(void *arg)
{
	struct vfu_client *c = arg;
	void (*cb)(void *opaque) = NULL;
	void *opaque = NULL;
	int ret;

	for (;;) {
		struct vfu_msg msg;

		/* Between messages only: a stop never splits one. */
		ret = client_wait_message(c);
		if (ret == 0)
			return NULL;	/* suspended: the socket is untouched */
		if (ret > 0)
			ret = vfu_conn_recv(&c->conn, &msg);
		if (ret)
			break;
		switch (msg.hdr.flags & VFU_F_TYPE_MASK) {
		case VFU_F_TYPE_REPLY:
			client_deliver_reply(c, &msg);
			break;
		case VFU_F_TYPE_COMMAND:
			client_handle_request(c, &msg);
			break;
		default:
			/* Unknown message type: the stream is not trustworthy. */
			vfu_msg_release(&msg);
			ret = -EINVAL;
			goto out;
		}
	}
out:
	/* Nobody reads this stream any more: hang up now, so a server
	 * blocked sending to us (or a well-behaved one waiting) sees EOF
	 * rather than waiting for vfu_client_close(). */
	shutdown(c->conn.fd, SHUT_RDWR);
	pthread_mutex_lock(&c->lock);
	c->connected = false;
	client_fail_all(c, -ENOTCONN);
	if (!c->closing) {
		pr_warn("vfio-user client: server connection lost: %s",
			ret == -EPIPE ? "closed" : strerror(-ret));
		cb = c->disconnect_cb;
		opaque = c->disconnect_opaque;
	}
	pthread_mutex_unlock(&c->lock);
	/* Exactly once: this thread ends here. */
	if (cb)
		cb(opaque);
	return NULL;
}

/*
 * Send a request and wait for its reply. On success *reply owns the
 * reply (release with vfu_msg_release); on failure nothing is owned.
 */
static int client_request(struct vfu_client *c, uint16_t cmd,
			  const struct iovec *iov, int iovcnt,
			  const int *fds, size_t nr_fds, size_t max_reply_fds,
			  struct vfu_msg *reply)
{
	struct vfu_pending p = { .cmd = cmd, .max_fds = max_reply_fds };
	struct vfu_hdr hdr = { .cmd = cmd, .flags = VFU_F_TYPE_COMMAND };
	pthread_condattr_t attr;
	struct timespec deadline;
	uint64_t ns;
	int ret;

	memset(reply, 0, sizeof(*reply));
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&p.cond, &attr);
	pthread_condattr_destroy(&attr);

	pthread_mutex_lock(&c->lock);
	if (!c->connected) {
		ret = -ENOTCONN;
		goto out_unlock;
	}
	if (c->suspended) {
		/* Handed over, or being: nothing goes out meanwhile. */
		ret = -EAGAIN;
		goto out_unlock;
	}
	do {
		p.msg_id = c->next_id++;
	} while (pending_id_busy(c, p.msg_id));
	hdr.msg_id = p.msg_id;
	FERRY_TRACE(vfu_request, c, cmd, p.msg_id);
	/* Registered before sending: the reply may beat us back. */
	p.next = c->pending;
	c->pending = &p;
	pthread_mutex_unlock(&c->lock);

	ret = vfu_conn_send(&c->conn, &hdr, iov, iovcnt, fds, nr_fds);

	pthread_mutex_lock(&c->lock);
	if (ret) {
		if (!p.done)
			pending_unlink(c, p.msg_id);
		vfu_msg_release(&p.reply);
		goto out_unlock;
	}
	clock_gettime(CLOCK_MONOTONIC, &deadline);
	ns = (uint64_t)deadline.tv_nsec + (uint64_t)c->timeout_ms * 1000000ull;
	deadline.tv_sec += (time_t)(ns / 1000000000ull);
	deadline.tv_nsec = (long)(ns % 1000000000ull);
	while (!p.done) {
		if (pthread_cond_timedwait(&p.cond, &c->lock, &deadline) ==
		    ETIMEDOUT && !p.done) {
			pending_unlink(c, p.msg_id);
			pr_warn("vfio-user client: %s timed out",
				vfu_cmd_name(cmd));
			ret = -ETIMEDOUT;
			goto out_unlock;
		}
	}
	ret = p.err;
	FERRY_TRACE(vfu_reply, c, cmd, p.msg_id, ret);
	if (!ret)
		*reply = p.reply;

out_unlock:
	pthread_mutex_unlock(&c->lock);
	pthread_cond_destroy(&p.cond);
	return ret;
}

/* A request whose reply must be exactly reply_len bytes, copied out. */
static int client_request_fixed(struct vfu_client *c, uint16_t cmd,
				const void *req, size_t req_len,
				void *out, size_t reply_len)
{
	struct iovec iov = { .iov_base = (void *)req, .iov_len = req_len };
	struct vfu_msg reply;
	int ret;

	ret = client_request(c, cmd, &iov, req_len ? 1 : 0, NULL, 0, 0,
			     &reply);
	if (ret)
		return ret;
	if (reply.payload_len != reply_len)
		ret = -EINVAL;
	else if (reply_len)
		memcpy(out, reply.payload, reply_len);
	vfu_msg_release(&reply);
	return ret;
}

/* ---- lifetime ---- */

static int client_alloc(int sock_fd, const struct vfu_client_opts *opts,
			struct vfu_client **out)
{
	struct vfu_client *c;

	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->our_max_xfer = opts && opts->max_data_xfer_size ?
		opts->max_data_xfer_size : VFU_DEFAULT_MAX_DATA_XFER;
	c->our_max_fds = opts && opts->max_msg_fds ?
		opts->max_msg_fds : VFU_CLIENT_DEFAULT_MAX_FDS;
	c->timeout_ms = opts && opts->timeout_ms ?
		opts->timeout_ms : VFU_CLIENT_DEFAULT_TIMEOUT_MS;
	if (c->our_max_xfer > VFU_MAX_DATA_XFER_LIMIT ||
	    c->our_max_fds > VFU_MAX_MSG_FDS_LIMIT) {
		free(c);
		return -EINVAL;
	}
	c->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (c->wake_fd < 0) {
		free(c);
		return -errno;
	}
	vfu_conn_init_sock(&c->conn, sock_fd);
	/* The transport refuses anything larger before allocating it. */
	c->conn.max_msg_size = c->our_max_xfer + VFU_CLIENT_RECV_SLACK;
	c->conn.max_fds = c->our_max_fds;
	pthread_mutex_init(&c->lock, NULL);
	pthread_mutex_init(&c->maps_lock, NULL);
	vfu_caps_defaults(&c->caps);
	c->next_id = (uint16_t)(clock_ns() ^ (uint64_t)getpid());
	c->connected = true;
	*out = c;
	return 0;
}

static void client_free(struct vfu_client *c)
{
	close_safely(&c->wake_fd);
	vfu_conn_close(&c->conn);
	pthread_mutex_destroy(&c->lock);
	pthread_mutex_destroy(&c->maps_lock);
	free(c->maps);
	free(c);
}

static int client_start(struct vfu_client *c)
{
	int ret;

	pthread_mutex_lock(&c->lock);
	c->thread_stop = false;
	pthread_mutex_unlock(&c->lock);
	ret = pthread_create(&c->thread, NULL, client_recv_thread, c);

	if (ret)
		return -ret;
	c->thread_started = true;
	return 0;
}

void vfu_client_close(struct vfu_client *c)
{
	if (!c)
		return;
	pthread_mutex_lock(&c->lock);
	c->closing = true;
	pthread_mutex_unlock(&c->lock);
	if (c->thread_started) {
		/* Wakes the receive thread out of recvmsg() with EOF. */
		shutdown(c->conn.fd, SHUT_RDWR);
		pthread_join(c->thread, NULL);
	}
	client_free(c);
}

static int client_negotiate(struct vfu_client *c)
{
	struct vfu_caps ours, theirs;
	struct vfu_version ver = {
		.major = VFU_VERSION_MAJOR,
		.minor = VFU_VERSION_MINOR,
	};
	struct iovec iov[2];
	struct vfu_msg reply;
	char *json;
	int ret;

	vfu_caps_defaults(&ours);
	ours.max_msg_fds = c->our_max_fds;
	ours.max_data_xfer_size = c->our_max_xfer;
	json = vfu_caps_format(&ours);
	if (!json)
		return -ENOMEM;
	iov[0].iov_base = &ver;
	iov[0].iov_len = sizeof(ver);
	iov[1].iov_base = json;
	iov[1].iov_len = strlen(json) + 1;
	ret = client_request(c, VFU_CMD_VERSION, iov, 2, NULL, 0, 0, &reply);
	free(json);
	if (ret)
		return ret;

	ret = -EINVAL;
	if (reply.payload_len < sizeof(ver))
		goto out_release;
	memcpy(&ver, reply.payload, sizeof(ver));
	if (ver.major != VFU_VERSION_MAJOR || ver.minor > VFU_VERSION_MINOR) {
		pr_err("vfio-user client: server speaks %u.%u, we speak %u.%u",
		       ver.major, ver.minor, VFU_VERSION_MAJOR,
		       VFU_VERSION_MINOR);
		ret = -EPROTONOSUPPORT;
		goto out_release;
	}
	vfu_caps_defaults(&theirs);
	if (reply.payload_len > sizeof(ver)) {
		ret = vfu_caps_parse((const char *)reply.payload + sizeof(ver),
				     reply.payload_len - sizeof(ver), &theirs);
		if (ret) {
			pr_err("vfio-user client: bad server capabilities");
			goto out_release;
		}
	}
	theirs.major = ver.major;
	theirs.minor = ver.minor;
	c->caps = theirs;
	ret = 0;

out_release:
	vfu_msg_release(&reply);
	return ret;
}

int vfu_client_connect(const char *path, const struct vfu_client_opts *opts,
		       struct vfu_client **out)
{
	struct vfu_client *c;
	int fd, ret;

	fd = vfu_sock_connect(path);
	if (fd < 0)
		return fd;
	ret = client_alloc(fd, opts, &c);
	if (ret) {
		close(fd);
		return ret;
	}
	ret = client_start(c);
	if (ret)
		goto err_free;
	ret = client_negotiate(c);
	if (ret)
		goto err_close;
	*out = c;
	return 0;

err_close:
	vfu_client_close(c);
	return ret;
err_free:
	client_free(c);
	return ret;
}

/* ---- live update ---- */

/* Stop the receive thread where it waits for the next message. */
static void client_stop_thread(struct vfu_client *c)
{
	uint64_t one = 1;

	if (!c->thread_started)
		return;
	pthread_mutex_lock(&c->lock);
	c->thread_stop = true;
	pthread_mutex_unlock(&c->lock);
	if (write(c->wake_fd, &one, sizeof(one)) < 0)
		pr_warn("vfio-user client: waking the receive thread: %s",
			strerror(errno));
	pthread_join(c->thread, NULL);
	c->thread_started = false;
}

int vfu_client_suspend(struct vfu_client *c, unsigned timeout_ms,
		       struct vfu_client_cpr *out)
{
	uint64_t deadline = clock_ns() + timeout_ms * 1000000ull;
	bool busy;

	pthread_mutex_lock(&c->lock);
	if (!c->connected) {
		pthread_mutex_unlock(&c->lock);
		return -ENOTCONN;
	}
	c->suspended = true;
	pthread_mutex_unlock(&c->lock);
	/* Requests already out finish (or time out) first: their replies
	 * must not be left for the next owner. */
	for (;;) {
		pthread_mutex_lock(&c->lock);
		busy = c->pending != NULL;
		pthread_mutex_unlock(&c->lock);
		if (!busy)
			break;
		if (clock_ns() > deadline) {
			pthread_mutex_lock(&c->lock);
			c->suspended = false;
			pthread_mutex_unlock(&c->lock);
			return -EBUSY;
		}
		usleep(200);
	}
	client_stop_thread(c);
	pthread_mutex_lock(&c->lock);
	if (out)
		out->caps = c->caps;
	busy = !c->connected;	/* lost while stopping */
	pthread_mutex_unlock(&c->lock);
	return busy ? -ENOTCONN : 0;
}

int vfu_client_resume(struct vfu_client *c)
{
	int ret;

	if (c->thread_started)
		return 0;
	ret = client_start(c);
	if (ret)
		return ret;
	pthread_mutex_lock(&c->lock);
	c->suspended = false;
	pthread_mutex_unlock(&c->lock);
	return 0;
}

void vfu_client_abandon(struct vfu_client *c)
{
	if (!c)
		return;
	pthread_mutex_lock(&c->lock);
	c->closing = true;
	c->suspended = true;
	pthread_mutex_unlock(&c->lock);
	/* No shutdown(): the connection lives on in its new owner. */
	client_stop_thread(c);
	client_free(c);
}

int vfu_client_adopt_suspended(int sock_fd, const struct vfu_client_cpr *cpr,
			       const struct vfu_client_opts *opts,
			       struct vfu_client **out)
{
	struct vfu_client *c;
	int ret;

	if (sock_fd < 0 || !cpr)
		return -EINVAL;
	ret = client_alloc(sock_fd, opts, &c);
	if (ret)
		return ret;
	/* Message ids start afresh at client_alloc()'s random point, not
	 * where the old owner was: a late reply to a request it gave up
	 * on then hardly matches one of ours. */
	c->caps = cpr->caps;
	c->suspended = true;
	*out = c;
	return 0;
}

int vfu_client_adopt(int sock_fd, const struct vfu_caps *caps,
		     const struct vfu_client_opts *opts,
		     struct vfu_client **out)
{
	struct vfu_client *c;
	int ret;

	if (sock_fd < 0 || !caps)
		return -EINVAL;
	ret = client_alloc(sock_fd, opts, &c);
	if (ret)
		return ret;
	c->caps = *caps;
	ret = client_start(c);
	if (ret) {
		/* The fd stays the caller's on failure. */
		c->conn.fd = -1;
		client_free(c);
		return ret;
	}
	*out = c;
	return 0;
}

int vfu_client_fd(struct vfu_client *c)
{
	return c->conn.fd;
}

const struct vfu_caps *vfu_client_caps(struct vfu_client *c)
{
	return &c->caps;
}

bool vfu_client_connected(struct vfu_client *c)
{
	bool ret;

	pthread_mutex_lock(&c->lock);
	ret = c->connected;
	pthread_mutex_unlock(&c->lock);
	return ret;
}

void vfu_client_set_timeout(struct vfu_client *c, uint32_t timeout_ms)
{
	pthread_mutex_lock(&c->lock);
	c->timeout_ms = timeout_ms ? timeout_ms : VFU_CLIENT_DEFAULT_TIMEOUT_MS;
	pthread_mutex_unlock(&c->lock);
}

void vfu_client_set_disconnect_cb(struct vfu_client *c,
				  void (*cb)(void *opaque), void *opaque)
{
	pthread_mutex_lock(&c->lock);
	c->disconnect_cb = cb;
	c->disconnect_opaque = opaque;
	pthread_mutex_unlock(&c->lock);
}

void vfu_client_set_dirty_cb(struct vfu_client *c,
			     void (*cb)(void *opaque, uint64_t iova,
					uint64_t len),
			     void *opaque)
{
	/* maps_lock: the receive thread reads the callback under it. */
	pthread_mutex_lock(&c->maps_lock);
	c->dirty_cb = cb;
	c->dirty_opaque = opaque;
	pthread_mutex_unlock(&c->maps_lock);
}

/* ---- device, regions, irqs ---- */

int vfu_client_device_info(struct vfu_client *c, struct vfu_device_info *out)
{
	struct vfu_device_info req = { .argsz = sizeof(req) };
	int ret;

	ret = client_request_fixed(c, VFU_CMD_DEVICE_GET_INFO, &req,
				   sizeof(req), out, sizeof(*out));
	if (ret)
		return ret;
	if (out->argsz < sizeof(*out) ||
	    out->num_regions > VFU_CLIENT_MAX_REGIONS ||
	    out->num_irqs > VFU_CLIENT_MAX_IRQS) {
		pr_err("vfio-user client: server claims %u regions, %u irqs",
		       out->num_regions, out->num_irqs);
		return -EINVAL;
	}
	return 0;
}

/* Parse an area list (sparse-mmap layout) at off into areas[]. */
static int parse_area_cap(const uint8_t *buf, size_t len, uint32_t off,
			  uint64_t region_size, struct vfu_sparse_area *areas,
			  uint32_t *nr_out)
{
	struct vfu_cap_sparse_mmap cap;
	size_t areas_len;

	if (!range_within(off, sizeof(cap), len))
		return -EINVAL;
	memcpy(&cap, buf + off, sizeof(cap));
	if (cap.nr_areas > VFU_CLIENT_MAX_SPARSE)
		return -E2BIG;
	areas_len = (size_t)cap.nr_areas * sizeof(*areas);
	if (!range_within(off + sizeof(cap), areas_len, len))
		return -EINVAL;
	memcpy(areas, buf + off + sizeof(cap), areas_len);
	for (uint32_t i = 0; i < cap.nr_areas; i++)
		if (!range_within(areas[i].offset, areas[i].size, region_size))
			return -EINVAL;
	*nr_out = cap.nr_areas;
	return 0;
}

/* Whether every fd of msg is the same open file's (device and inode). */
static bool fds_same_file(const struct vfu_msg *msg)
{
	struct stat first, st;

	if (fstat(msg->fds[0], &first))
		return false;
	for (size_t i = 1; i < msg->nr_fds; i++)
		if (fstat(msg->fds[i], &st) || st.st_dev != first.st_dev ||
		    st.st_ino != first.st_ino)
			return false;
	return true;
}

static int parse_region_caps(const uint8_t *buf, size_t len,
			     const struct vfu_region_info *info,
			     struct vfu_client_region *r)
{
	uint32_t off = info->cap_offset;
	int ret;

	for (int steps = 0; off; steps++) {
		struct vfu_cap_hdr hdr;

		if (steps >= VFU_CLIENT_MAX_CAP_STEPS || off < sizeof(*info) ||
		    !range_within(off, sizeof(hdr), len))
			return -EINVAL;
		memcpy(&hdr, buf + off, sizeof(hdr));
		switch (hdr.id) {
		case VFU_REGION_CAP_SPARSE_MMAP:
			ret = parse_area_cap(buf, len, off, r->size, r->sparse,
					     &r->nr_sparse);
			if (ret)
				return ret;
			break;
		case VFU_REGION_CAP_FERRY_TRAP_WHILE_SAVING:
			ret = parse_area_cap(buf, len, off, r->size,
					     r->trap_while_saving,
					     &r->nr_trap_while_saving);
			if (ret)
				return ret;
			break;
		default:
			break;	/* unknown capabilities are skipped */
		}
		/* Forward only, so a chain cannot loop. */
		if (hdr.next && hdr.next <= off)
			return -EINVAL;
		off = hdr.next;
	}
	return 0;
}

int vfu_client_region_info(struct vfu_client *c, uint32_t index,
			   struct vfu_client_region *out)
{
	uint32_t argsz = VFU_CLIENT_REGION_INFO_FIRST;
	struct vfu_region_info info;
	struct vfu_msg reply;
	int ret;

	memset(out, 0, sizeof(*out));
	out->fd = -1;
	for (int tries = 0;; tries++) {
		struct vfu_region_info req = {
			.argsz = argsz,
			.index = index,
		};
		struct iovec iov = { .iov_base = &req, .iov_len = sizeof(req) };
		size_t len;

		ret = client_request(c, VFU_CMD_DEVICE_GET_REGION_INFO, &iov, 1,
				     NULL, 0, VFU_CLIENT_MAX_SPARSE, &reply);
		if (ret)
			return ret;
		/* From here on a bad reply is the server's fault, not a
		 * refusal: -EPROTO, so that a caller can tell "no such
		 * region" (the server's EINVAL) from a broken server. */
		ret = -EPROTO;
		if (reply.payload_len < sizeof(info) ||
		    reply.payload_len > argsz)
			goto err_release;
		memcpy(&info, reply.payload, sizeof(info));
		if (info.index != index || info.argsz < sizeof(info))
			goto err_release;
		if (info.argsz > argsz) {
			/* The chain did not fit what we offered: ask again. */
			if (tries + 1 >= VFU_CLIENT_REGION_INFO_TRIES ||
			    info.argsz > VFU_CLIENT_REGION_INFO_MAX)
				goto err_release;
			argsz = info.argsz;
			vfu_msg_release(&reply);
			continue;
		}
		len = MIN(reply.payload_len, (size_t)info.argsz);
		out->index = index;
		out->flags = info.flags;
		out->size = info.size;
		out->fd_offset = info.offset;
		if (info.flags & VFU_REGION_FLAG_MMAP) {
			/* One fd, or (libvfio-user) one per mmap'able area,
			 * all the same file: the first serves every area. */
			if (reply.nr_fds < 1 ||
			    reply.nr_fds > VFU_CLIENT_MAX_SPARSE ||
			    !fds_same_file(&reply) ||
			    !range_within(info.offset, info.size, INT64_MAX))
				goto err_release;
		} else if (reply.nr_fds) {
			goto err_release;
		}
		if (info.flags & VFU_REGION_FLAG_CAPS &&
		    parse_region_caps(reply.payload, len, &info, out))
			goto err_release;
		if ((info.flags & VFU_REGION_FLAG_MMAP) && !out->nr_sparse) {
			out->sparse[0].offset = 0;
			out->sparse[0].size = info.size;
			out->nr_sparse = 1;
		}
		if (info.flags & VFU_REGION_FLAG_MMAP)
			out->fd = vfu_msg_take_fd(&reply, 0);
		vfu_msg_release(&reply);
		return 0;
	}

err_release:
	pr_warn("vfio-user client: bad region info reply for region %u",
		index);
	vfu_msg_release(&reply);
	memset(out, 0, sizeof(*out));
	out->fd = -1;
	return ret;
}

void vfu_client_region_release(struct vfu_client_region *r)
{
	if (r)
		close_safely(&r->fd);
}

int vfu_client_irq_info(struct vfu_client *c, uint32_t index,
			struct vfu_irq_info *out)
{
	struct vfu_irq_info req = { .argsz = sizeof(req), .index = index };
	int ret;

	ret = client_request_fixed(c, VFU_CMD_DEVICE_GET_IRQ_INFO, &req,
				   sizeof(req), out, sizeof(*out));
	if (ret)
		return ret;
	if (out->index != index)
		return -EINVAL;
	return 0;
}

int vfu_client_region_read(struct vfu_client *c, uint32_t index,
			   uint64_t offset, void *buf, size_t len)
{
	uint32_t chunk = client_xfer(c);
	uint8_t *p = buf;

	if (!range_within(offset, len, UINT64_MAX))
		return -EINVAL;
	while (len) {
		struct vfu_region_access req = {
			.offset = offset,
			.region = index,
			.count = (uint32_t)MIN(len, (size_t)chunk),
		};
		struct iovec iov = { .iov_base = &req, .iov_len = sizeof(req) };
		struct vfu_region_access rep;
		struct vfu_msg reply;
		int ret;

		ret = client_request(c, VFU_CMD_REGION_READ, &iov, 1, NULL, 0,
				     0, &reply);
		if (ret)
			return ret;
		if (reply.payload_len < sizeof(rep)) {
			vfu_msg_release(&reply);
			return -EINVAL;
		}
		memcpy(&rep, reply.payload, sizeof(rep));
		/* Exactly what we asked for: more would overrun buf. */
		if (rep.count != req.count ||
		    reply.payload_len != sizeof(rep) + rep.count) {
			vfu_msg_release(&reply);
			return -EINVAL;
		}
		memcpy(p, reply.payload + sizeof(rep), rep.count);
		vfu_msg_release(&reply);
		p += req.count;
		offset += req.count;
		len -= req.count;
	}
	return 0;
}

int vfu_client_region_write(struct vfu_client *c, uint32_t index,
			    uint64_t offset, const void *buf, size_t len)
{
	uint32_t chunk = client_xfer(c);
	const uint8_t *p = buf;

	if (!range_within(offset, len, UINT64_MAX))
		return -EINVAL;
	while (len) {
		struct vfu_region_access req = {
			.offset = offset,
			.region = index,
			.count = (uint32_t)MIN(len, (size_t)chunk),
		};
		struct iovec iov[2] = {
			{ .iov_base = &req, .iov_len = sizeof(req) },
			{ .iov_base = (void *)p, .iov_len = req.count },
		};
		struct vfu_region_access rep;
		struct vfu_msg reply;
		int ret;

		ret = client_request(c, VFU_CMD_REGION_WRITE, iov, 2, NULL, 0,
				     0, &reply);
		if (ret)
			return ret;
		if (reply.payload_len < sizeof(rep)) {
			vfu_msg_release(&reply);
			return -EINVAL;
		}
		memcpy(&rep, reply.payload, sizeof(rep));
		vfu_msg_release(&reply);
		if (rep.count != req.count)
			return -EINVAL;
		p += req.count;
		offset += req.count;
		len -= req.count;
	}
	return 0;
}

int vfu_client_write_multi(struct vfu_client *c,
			   const struct vfu_write_multi_entry *ents,
			   uint32_t nr)
{
	uint64_t wr_cnt = nr, rep;
	struct iovec iov[2] = {
		{ .iov_base = &wr_cnt, .iov_len = sizeof(wr_cnt) },
		{ .iov_base = (void *)ents, .iov_len = nr * sizeof(*ents) },
	};
	struct vfu_msg reply;
	int ret;

	if (nr == 0 || nr > VFU_WRITE_MULTI_MAX)
		return -EINVAL;
	for (uint32_t i = 0; i < nr; i++)
		if (ents[i].count == 0 ||
		    ents[i].count > VFU_WRITE_MULTI_DATA_MAX)
			return -EINVAL;
	ret = client_request(c, VFU_CMD_REGION_WRITE_MULTI, iov, 2, NULL, 0,
			     0, &reply);
	if (ret)
		return ret;
	ret = 0;
	if (reply.payload_len < sizeof(rep))
		ret = -EINVAL;
	else {
		memcpy(&rep, reply.payload, sizeof(rep));
		if (rep != wr_cnt)
			ret = -EINVAL;
	}
	vfu_msg_release(&reply);
	return ret;
}

/* ---- DMA maps ---- */

static int maps_add(struct vfu_client *c, uint64_t iova, uint64_t size,
		    uint32_t prot, void *vaddr)
{
	struct vfu_client_map *m;

	for (size_t i = 0; i < c->nr_maps; i++)
		if (ranges_overlap(iova, size, c->maps[i].iova,
				   c->maps[i].size))
			return -EEXIST;
	if (c->nr_maps == c->cap_maps) {
		size_t n = c->cap_maps ? c->cap_maps * 2 : VFU_CLIENT_INIT_MAPS;

		m = reallocarray(c->maps, n, sizeof(*m));
		if (!m)
			return -ENOMEM;
		c->maps = m;
		c->cap_maps = n;
	}
	c->maps[c->nr_maps++] = (struct vfu_client_map) {
		.iova = iova, .size = size, .prot = prot, .vaddr = vaddr,
	};
	return 0;
}

static void maps_del(struct vfu_client *c, uint64_t iova, uint64_t size)
{
	for (size_t i = 0; i < c->nr_maps; i++) {
		if (c->maps[i].iova == iova && c->maps[i].size == size) {
			c->maps[i] = c->maps[--c->nr_maps];
			return;
		}
	}
}

int vfu_client_dma_adopt(struct vfu_client *c, uint64_t iova, uint64_t size,
			 uint32_t prot, void *vaddr)
{
	int ret;

	if (size == 0 || !range_within(iova, size, UINT64_MAX) ||
	    (prot & ~VFU_DMA_MAP_FLAGS_ALL))
		return -EINVAL;
	pthread_mutex_lock(&c->maps_lock);
	ret = maps_add(c, iova, size, prot, vaddr);
	pthread_mutex_unlock(&c->maps_lock);
	return ret;
}

int vfu_client_dma_map(struct vfu_client *c, uint64_t iova, uint64_t size,
		       int fd, uint64_t offset, uint32_t prot, void *vaddr)
{
	struct vfu_dma_map req = {
		.argsz = sizeof(req),
		.flags = prot,
		.offset = fd >= 0 ? offset : 0,
		.addr = iova,
		.size = size,
	};
	struct iovec iov = { .iov_base = &req, .iov_len = sizeof(req) };
	struct vfu_msg reply;
	int ret;

	if (size == 0 || !range_within(iova, size, UINT64_MAX) ||
	    (prot & ~VFU_DMA_MAP_FLAGS_ALL) || (fd < 0 && !vaddr))
		return -EINVAL;
	/* Known before the request: the server may DMA as soon as it
	 * replied, and its DMA messages queue behind the reply. */
	pthread_mutex_lock(&c->maps_lock);
	ret = maps_add(c, iova, size, prot, vaddr);
	pthread_mutex_unlock(&c->maps_lock);
	if (ret)
		return ret;
	ret = client_request(c, VFU_CMD_DMA_MAP, &iov, 1, fd >= 0 ? &fd : NULL,
			     fd >= 0 ? 1 : 0, 0, &reply);
	if (ret)
		goto err_del;
	vfu_msg_release(&reply);
	return 0;

err_del:
	pthread_mutex_lock(&c->maps_lock);
	maps_del(c, iova, size);
	pthread_mutex_unlock(&c->maps_lock);
	return ret;
}

static int client_unmap(struct vfu_client *c, uint64_t iova, uint64_t size,
			uint32_t flags)
{
	struct vfu_dma_unmap req = {
		.argsz = sizeof(req),
		.flags = flags,
		.addr = iova,
		.size = size,
	};
	struct iovec iov = { .iov_base = &req, .iov_len = sizeof(req) };
	struct vfu_msg reply;
	int ret;

	ret = client_request(c, VFU_CMD_DMA_UNMAP, &iov, 1, NULL, 0, 0,
			     &reply);
	if (ret)
		return ret;
	/* The server has dropped every reference before replying. */
	vfu_msg_release(&reply);
	pthread_mutex_lock(&c->maps_lock);
	if (flags & VFU_DMA_UNMAP_FLAG_ALL)
		c->nr_maps = 0;
	else
		maps_del(c, iova, size);
	pthread_mutex_unlock(&c->maps_lock);
	return 0;
}

int vfu_client_dma_unmap(struct vfu_client *c, uint64_t iova, uint64_t size)
{
	return client_unmap(c, iova, size, 0);
}

int vfu_client_dma_unmap_all(struct vfu_client *c)
{
	return client_unmap(c, 0, 0, VFU_DMA_UNMAP_FLAG_ALL);
}

int vfu_client_set_irqs(struct vfu_client *c, uint32_t index, uint32_t start,
			uint32_t count, const int *fds)
{
	uint32_t chunk = MIN(c->caps.max_msg_fds, VFU_MAX_MSG_FDS_LIMIT);
	struct vfu_irq_set req = {
		.argsz = sizeof(req),
		.index = index,
	};
	struct iovec iov = { .iov_base = &req, .iov_len = sizeof(req) };
	struct vfu_msg reply;
	int ret;

	if (!range_within(start, count, UINT32_MAX))
		return -EINVAL;
	if (!fds) {
		/* No fds: de-assign the range; count 0 disables the index. */
		req.flags = VFU_IRQ_SET_ACTION_TRIGGER |
			(count ? VFU_IRQ_SET_DATA_EVENTFD : VFU_IRQ_SET_DATA_NONE);
		req.start = count ? start : 0;
		req.count = count;
		ret = client_request(c, VFU_CMD_DEVICE_SET_IRQS, &iov, 1, NULL,
				     0, 0, &reply);
		if (!ret)
			vfu_msg_release(&reply);
		return ret;
	}
	if (chunk == 0)
		chunk = 1;
	req.flags = VFU_IRQ_SET_DATA_EVENTFD | VFU_IRQ_SET_ACTION_TRIGGER;
	for (uint32_t done = 0; done < count;) {
		uint32_t n = MIN(count - done, chunk);

		req.start = start + done;
		req.count = n;
		ret = client_request(c, VFU_CMD_DEVICE_SET_IRQS, &iov, 1,
				     fds + done, n, 0, &reply);
		if (ret)
			return ret;
		vfu_msg_release(&reply);
		done += n;
	}
	return 0;
}

int vfu_client_irq_unmask(struct vfu_client *c, uint32_t index,
			  int resample_fd)
{
	struct vfu_irq_set req = {
		.argsz = sizeof(req),
		.flags = VFU_IRQ_SET_ACTION_UNMASK | (resample_fd >= 0 ?
			 VFU_IRQ_SET_DATA_EVENTFD : VFU_IRQ_SET_DATA_NONE),
		.index = index,
		.start = 0,
		.count = 1,
	};
	struct iovec iov = { .iov_base = &req, .iov_len = sizeof(req) };
	struct vfu_msg reply;
	int ret;

	ret = client_request(c, VFU_CMD_DEVICE_SET_IRQS, &iov, 1,
			     resample_fd >= 0 ? &resample_fd : NULL,
			     resample_fd >= 0 ? 1 : 0, 0, &reply);
	if (!ret)
		vfu_msg_release(&reply);
	return ret;
}

int vfu_client_reset(struct vfu_client *c)
{
	struct vfu_msg reply;
	int ret;

	ret = client_request(c, VFU_CMD_DEVICE_RESET, NULL, 0, NULL, 0, 0,
			     &reply);
	if (!ret)
		vfu_msg_release(&reply);
	return ret;
}

/* ---- DEVICE_FEATURE and migration ---- */

int vfu_client_feature(struct vfu_client *c, uint32_t feature, uint32_t op,
		       const void *in, size_t in_len,
		       void *out, size_t out_cap, size_t *out_len)
{
	size_t room = MAX(in_len, out_cap);
	struct vfu_device_feature req;
	struct iovec iov[2];
	struct vfu_msg reply;
	size_t data_len;
	int ret;

	if (feature > VFU_FEATURE_MASK ||
	    (op & ~(VFU_FEATURE_GET | VFU_FEATURE_SET | VFU_FEATURE_PROBE)) ||
	    !op || room > client_xfer(c))
		return -EINVAL;
	req.argsz = (uint32_t)(sizeof(req) + room);
	req.flags = feature | op;
	iov[0].iov_base = &req;
	iov[0].iov_len = sizeof(req);
	iov[1].iov_base = (void *)in;
	iov[1].iov_len = in_len;
	ret = client_request(c, VFU_CMD_DEVICE_FEATURE, iov, in_len ? 2 : 1,
			     NULL, 0, 0, &reply);
	if (ret)
		return ret;
	ret = -EINVAL;
	if (reply.payload_len < sizeof(req))
		goto out_release;
	data_len = reply.payload_len - sizeof(req);
	if (data_len > room) {
		ret = -E2BIG;
		goto out_release;
	}
	data_len = MIN(data_len, out_cap);
	if (out && data_len)
		memcpy(out, reply.payload + sizeof(req), data_len);
	if (out_len)
		*out_len = data_len;
	ret = 0;
out_release:
	vfu_msg_release(&reply);
	return ret;
}

/* GET a fixed-size feature; the reply must hold all of it. */
static int feature_get(struct vfu_client *c, uint32_t feature,
		       void *out, size_t len)
{
	size_t got;
	int ret;

	ret = vfu_client_feature(c, feature, VFU_FEATURE_GET, NULL, 0, out,
				 len, &got);
	if (ret)
		return ret;
	return got == len ? 0 : -EINVAL;
}

static bool err_is_unsupported(int err)
{
	return err == -EINVAL || err == -ENOTTY || err == -ENOTSUP ||
		err == -ENOENT;
}

int vfu_client_mig_flags(struct vfu_client *c, uint64_t *flags)
{
	struct vfu_feature_migration mig;
	int ret;

	ret = feature_get(c, VFU_FEATURE_MIGRATION, &mig, sizeof(mig));
	if (ret)
		return err_is_unsupported(ret) ? -ENOTSUP : ret;
	/* STOP_COPY is mandatory for a migratable device. */
	if (!(mig.flags & VFU_MIGRATION_STOP_COPY))
		return -ENOTSUP;
	*flags = mig.flags;
	return 0;
}

int vfu_client_mig_get_state(struct vfu_client *c, enum vfu_mig_state *st)
{
	struct vfu_feature_mig_state s;
	int ret;

	ret = feature_get(c, VFU_FEATURE_MIG_DEVICE_STATE, &s, sizeof(s));
	if (ret)
		return ret;
	if (s.device_state >= VFU_MIG_STATE_NR)
		return -EINVAL;
	*st = (enum vfu_mig_state)s.device_state;
	return 0;
}

int vfu_client_mig_set_state(struct vfu_client *c, enum vfu_mig_state st)
{
	struct vfu_feature_mig_state s = {
		.device_state = st,
		.data_fd = UINT32_MAX,
	};

	return vfu_client_feature(c, VFU_FEATURE_MIG_DEVICE_STATE,
				  VFU_FEATURE_SET, &s, sizeof(s), NULL, 0,
				  NULL);
}

ssize_t vfu_client_mig_read(struct vfu_client *c, void *buf, size_t len)
{
	struct vfu_mig_data req, rep;
	struct iovec iov = { .iov_base = &req, .iov_len = sizeof(req) };
	struct vfu_msg reply;
	ssize_t ret;

	if (len > client_xfer(c))
		return -EINVAL;
	req.argsz = (uint32_t)(sizeof(req) + len);
	req.size = (uint32_t)len;
	ret = client_request(c, VFU_CMD_MIG_DATA_READ, &iov, 1, NULL, 0, 0,
			     &reply);
	if (ret)
		return ret;
	ret = -EINVAL;
	if (reply.payload_len < sizeof(rep))
		goto out_release;
	memcpy(&rep, reply.payload, sizeof(rep));
	/* size, not msg_size, says how much is data (replies may be
	 * padded); it may not exceed what we asked or what arrived. */
	if (rep.size > len || reply.payload_len - sizeof(rep) < rep.size)
		goto out_release;
	memcpy(buf, reply.payload + sizeof(rep), rep.size);
	ret = rep.size;
out_release:
	vfu_msg_release(&reply);
	return ret;
}

int vfu_client_mig_write(struct vfu_client *c, const void *buf, size_t len)
{
	uint32_t chunk = client_xfer(c);
	const uint8_t *p = buf;

	while (len) {
		/* argsz covers the data: libvfio-user's server refuses
		 * less ("argsz too small"); the spec allows either. */
		struct vfu_mig_data req = {
			.size = (uint32_t)MIN(len, (size_t)chunk),
		};
		struct iovec iov[2] = {
			{ .iov_base = &req, .iov_len = sizeof(req) },
			{ .iov_base = (void *)p, .iov_len = req.size },
		};
		struct vfu_msg reply;
		int ret;

		req.argsz = (uint32_t)sizeof(req) + req.size;
		ret = client_request(c, VFU_CMD_MIG_DATA_WRITE, iov, 2, NULL, 0,
				     0, &reply);
		if (ret)
			return ret;
		vfu_msg_release(&reply);
		p += req.size;
		len -= req.size;
	}
	return 0;
}

/* PROBE a GET-able feature once and remember the answer. */
static int feature_probe_once(struct vfu_client *c, uint32_t feature,
			      enum vfu_probe *cache)
{
	enum vfu_probe v;
	int ret;

	pthread_mutex_lock(&c->lock);
	v = *cache;
	pthread_mutex_unlock(&c->lock);
	if (v == VFU_PROBE_UNKNOWN) {
		ret = vfu_client_feature(c, feature,
					 VFU_FEATURE_PROBE | VFU_FEATURE_GET,
					 NULL, 0, NULL, 0, NULL);
		if (ret && !err_is_unsupported(ret))
			return ret;	/* transport trouble: ask again later */
		v = ret ? VFU_PROBE_NO : VFU_PROBE_YES;
		pthread_mutex_lock(&c->lock);
		*cache = v;
		pthread_mutex_unlock(&c->lock);
	}
	return v == VFU_PROBE_YES ? 0 : -ENOTSUP;
}

int vfu_client_precopy_info(struct vfu_client *c,
			    struct vfu_feature_precopy_info *info)
{
	int ret;

	ret = feature_probe_once(c, VFU_FEATURE_FERRY_PRECOPY_INFO,
				 &c->probe_precopy_info);
	if (ret)
		return ret;
	return feature_get(c, VFU_FEATURE_FERRY_PRECOPY_INFO, info,
			   sizeof(*info));
}

int vfu_client_mig_data_size(struct vfu_client *c, uint64_t *stop_copy_len)
{
	struct vfu_feature_mig_data_size ds;
	int ret;

	ret = feature_probe_once(c, VFU_FEATURE_MIG_DATA_SIZE,
				 &c->probe_data_size);
	if (ret)
		return ret;
	ret = feature_get(c, VFU_FEATURE_MIG_DATA_SIZE, &ds, sizeof(ds));
	if (!ret)
		*stop_copy_len = ds.stop_copy_length;
	return ret;
}

/* ---- DMA dirty logging ---- */

int vfu_client_dma_log_start(struct vfu_client *c, uint64_t *page_size,
			     const struct vfu_dma_log_range *ranges,
			     uint32_t nr_ranges)
{
	struct vfu_dma_log_control ctl = {
		.page_size = *page_size,
		.num_ranges = nr_ranges,
	};
	size_t ranges_len = (size_t)nr_ranges * sizeof(*ranges);
	size_t len = sizeof(ctl) + ranges_len, got;
	uint8_t *buf;
	int ret;

	if (nr_ranges > VFU_DMA_LOG_MAX_RANGES || !IS_POW2(*page_size) ||
	    (nr_ranges && !ranges))
		return -EINVAL;
	buf = malloc(len);
	if (!buf)
		return -ENOMEM;
	memcpy(buf, &ctl, sizeof(ctl));
	if (ranges_len)
		memcpy(buf + sizeof(ctl), ranges, ranges_len);
	ret = vfu_client_feature(c, VFU_FEATURE_DMA_LOGGING_START,
				 VFU_FEATURE_SET, buf, len, buf, len, &got);
	if (ret)
		goto out_free;
	/* The echo may carry the page size the server picked. */
	if (got >= sizeof(ctl)) {
		memcpy(&ctl, buf, sizeof(ctl));
		if (!IS_POW2(ctl.page_size)) {
			ret = -EINVAL;
			goto out_free;
		}
		*page_size = ctl.page_size;
	}
out_free:
	free(buf);
	return ret;
}

int vfu_client_dma_log_stop(struct vfu_client *c)
{
	return vfu_client_feature(c, VFU_FEATURE_DMA_LOGGING_STOP,
				  VFU_FEATURE_SET, NULL, 0, NULL, 0, NULL);
}

/* One REPORT whose bitmap fits one reply. */
static int dma_log_report_one(struct vfu_client *c, uint64_t iova,
			      uint64_t length, uint64_t page_size,
			      uint64_t *bitmap, uint64_t pages)
{
	size_t words = DIV_ROUND_UP(pages, 64);
	struct vfu_dma_log_report rep = {
		.iova = iova, .length = length, .page_size = page_size,
	};
	size_t bytes = words * sizeof(uint64_t);
	size_t len = sizeof(rep) + bytes, got;
	uint8_t *buf;
	int ret;

	buf = malloc(len);
	if (!buf)
		return -ENOMEM;
	ret = vfu_client_feature(c, VFU_FEATURE_DMA_LOGGING_REPORT,
				 VFU_FEATURE_GET, &rep, sizeof(rep), buf, len,
				 &got);
	/* The bitmap must cover every page asked for; a server that sends
	 * whole bytes rather than whole words leaves the tail zero. */
	if (!ret && (got < sizeof(rep) ||
		     got - sizeof(rep) < DIV_ROUND_UP(pages, 8)))
		ret = -EINVAL;
	if (!ret) {
		memset(bitmap, 0, bytes);
		memcpy(bitmap, buf + sizeof(rep), got - sizeof(rep));
	}
	free(buf);
	return ret;
}

int vfu_client_dma_log_report(struct vfu_client *c, uint64_t iova,
			      uint64_t length, uint64_t page_size,
			      uint64_t *bitmap)
{
	uint64_t pages, max_pages;
	size_t max_words;

	if (!IS_POW2(page_size) || length == 0 ||
	    !range_within(iova, length, UINT64_MAX))
		return -EINVAL;
	pages = DIV_ROUND_UP(length, page_size);
	/* Each reply carries at most one transfer's worth of bitmap; the
	 * pieces are whole 64-page words so they land word-aligned. A
	 * server may negotiate a transfer size below the headers. */
	if (client_xfer(c) < sizeof(struct vfu_dma_log_report) +
			      sizeof(struct vfu_device_feature) + sizeof(uint64_t))
		return -EINVAL;
	max_words = (client_xfer(c) - sizeof(struct vfu_dma_log_report) -
		     sizeof(struct vfu_device_feature)) / sizeof(uint64_t);
	max_pages = (uint64_t)max_words * 64;
	while (pages) {
		uint64_t n = MIN(pages, max_pages);
		uint64_t piece_len;
		int ret;

		if (check_mul_overflow(n, page_size, &piece_len) ||
		    piece_len > length)
			piece_len = length;
		ret = dma_log_report_one(c, iova, piece_len, page_size, bitmap,
					 n);
		if (ret)
			return ret;
		bitmap += DIV_ROUND_UP(n, 64);
		iova += piece_len;
		length -= piece_len;
		pages -= n;
	}
	return 0;
}
