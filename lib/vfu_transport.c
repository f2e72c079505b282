/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * vfio-user framing over a stream socket (SCM_RIGHTS for fds), and a
 * memory-backed transport for fuzzing the dispatcher.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ferry/util.h"
#include "ferry/vfu_transport.h"

void vfu_msg_release(struct vfu_msg *msg)
{
	for (size_t i = 0; i < msg->nr_fds; i++)
		close_safely(&msg->fds[i]);
	msg->nr_fds = 0;
	free(msg->payload);
	msg->payload = NULL;
	msg->payload_len = 0;
}

int vfu_msg_take_fd(struct vfu_msg *msg, size_t i)
{
	int fd;

	if (i >= msg->nr_fds)
		return -1;
	fd = msg->fds[i];
	msg->fds[i] = -1;
	return fd;
}

/* Collect SCM_RIGHTS fds from a received control buffer. */
static void sock_collect_fds(struct vfu_conn *conn, struct msghdr *mh,
			     struct vfu_msg *msg)
{
	for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR(mh, c)) {
		size_t n;
		int *fds;

		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		fds = (int *)CMSG_DATA(c);
		for (size_t i = 0; i < n; i++) {
			int fd;

			memcpy(&fd, &fds[i], sizeof(fd));
			if (msg->nr_fds < conn->max_fds &&
			    msg->nr_fds < VFU_MAX_MSG_FDS_LIMIT) {
				msg->fds[msg->nr_fds++] = fd;
			} else {
				close(fd);
				msg->fd_error = -EINVAL;
			}
		}
	}
	if (mh->msg_flags & MSG_CTRUNC)
		msg->fd_error = -EINVAL;
}

/* Read exactly len bytes, gathering any fds that ride along. */
static int sock_recv_full(struct vfu_conn *conn, void *buf, size_t len,
			  struct vfu_msg *msg)
{
	char *p = buf;

	while (len) {
		union {
			char buf[CMSG_SPACE(sizeof(int) * VFU_MAX_MSG_FDS_LIMIT)];
			struct cmsghdr align;
		} ctrl;
		struct iovec iov = { .iov_base = p, .iov_len = len };
		struct msghdr mh = {
			.msg_iov = &iov, .msg_iovlen = 1,
			.msg_control = ctrl.buf, .msg_controllen = sizeof(ctrl.buf),
		};
		ssize_t n = recvmsg(conn->fd, &mh, MSG_CMSG_CLOEXEC);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -EPIPE;
		sock_collect_fds(conn, &mh, msg);
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int sock_recv(struct vfu_conn *conn, struct vfu_msg *msg)
{
	int ret;

	memset(msg, 0, sizeof(*msg));
	ret = sock_recv_full(conn, &msg->hdr, sizeof(msg->hdr), msg);
	if (ret)
		goto err_release;
	if (msg->hdr.msg_size < VFU_HDR_SIZE ||
	    msg->hdr.msg_size > conn->max_msg_size) {
		ret = -EINVAL;
		goto err_release;
	}
	msg->payload_len = msg->hdr.msg_size - VFU_HDR_SIZE;
	if (msg->payload_len) {
		msg->payload = malloc(msg->payload_len);
		if (!msg->payload) {
			ret = -ENOMEM;
			goto err_release;
		}
		ret = sock_recv_full(conn, msg->payload, msg->payload_len, msg);
		if (ret)
			goto err_release;
	}
	return 0;

err_release:
	vfu_msg_release(msg);
	return ret;
}

static int sock_send(struct vfu_conn *conn, const struct vfu_hdr *hdr,
		     const struct iovec *iov, int iovcnt,
		     const int *fds, size_t nr_fds)
{
	union {
		char buf[CMSG_SPACE(sizeof(int) * VFU_MAX_MSG_FDS_LIMIT)];
		struct cmsghdr align;
	} ctrl;
	struct iovec vec[8];
	struct vfu_hdr h = *hdr;
	size_t total = VFU_HDR_SIZE;
	int nvec = 1, ret = 0;

	if (iovcnt < 0 || iovcnt > (int)ARRAY_SIZE(vec) - 1 ||
	    nr_fds > VFU_MAX_MSG_FDS_LIMIT)
		return -EINVAL;
	for (int i = 0; i < iovcnt; i++) {
		if (check_add_overflow(total, iov[i].iov_len, &total))
			return -EOVERFLOW;
		vec[nvec++] = iov[i];
	}
	if (total > UINT32_MAX)
		return -EOVERFLOW;
	h.msg_size = (uint32_t)total;
	vec[0].iov_base = &h;
	vec[0].iov_len = sizeof(h);

	pthread_mutex_lock(&conn->send_lock);
	{
		struct msghdr mh = { .msg_iov = vec, .msg_iovlen = (size_t)nvec };
		struct iovec *cur = vec;
		size_t left = total;

		if (nr_fds) {
			struct cmsghdr *c;

			memset(ctrl.buf, 0, sizeof(ctrl.buf));
			mh.msg_control = ctrl.buf;
			mh.msg_controllen = CMSG_SPACE(sizeof(int) * nr_fds);
			c = CMSG_FIRSTHDR(&mh);
			c->cmsg_level = SOL_SOCKET;
			c->cmsg_type = SCM_RIGHTS;
			c->cmsg_len = CMSG_LEN(sizeof(int) * nr_fds);
			memcpy(CMSG_DATA(c), fds, sizeof(int) * nr_fds);
		}
		while (left) {
			ssize_t n = sendmsg(conn->fd, &mh, MSG_NOSIGNAL);

			if (n < 0) {
				if (errno == EINTR)
					continue;
				ret = -errno;
				break;
			}
			left -= (size_t)n;
			/* fds went with the first byte; advance the iovecs. */
			mh.msg_control = NULL;
			mh.msg_controllen = 0;
			while (n > 0 && (size_t)n >= cur->iov_len) {
				n -= (ssize_t)cur->iov_len;
				cur++;
				mh.msg_iovlen--;
			}
			if (n > 0) {
				cur->iov_base = (char *)cur->iov_base + n;
				cur->iov_len -= (size_t)n;
			}
			mh.msg_iov = cur;
		}
	}
	pthread_mutex_unlock(&conn->send_lock);
	return ret;
}

static void sock_close(struct vfu_conn *conn)
{
	close_safely(&conn->fd);
}

const struct vfu_transport_ops vfu_sock_transport = {
	.name = "unix",
	.recv = sock_recv,
	.send = sock_send,
	.close = sock_close,
};

static int mem_recv(struct vfu_conn *conn, struct vfu_msg *msg)
{
	size_t left = conn->mem_len - conn->mem_pos;

	memset(msg, 0, sizeof(*msg));
	if (left < VFU_HDR_SIZE)
		return -EPIPE;
	memcpy(&msg->hdr, conn->mem + conn->mem_pos, VFU_HDR_SIZE);
	if (msg->hdr.msg_size < VFU_HDR_SIZE ||
	    msg->hdr.msg_size > conn->max_msg_size)
		return -EINVAL;
	if (msg->hdr.msg_size > left)
		return -EPIPE;
	msg->payload_len = msg->hdr.msg_size - VFU_HDR_SIZE;
	if (msg->payload_len) {
		msg->payload = malloc(msg->payload_len);
		if (!msg->payload)
			return -ENOMEM;
		memcpy(msg->payload, conn->mem + conn->mem_pos + VFU_HDR_SIZE,
		       msg->payload_len);
	}
	conn->mem_pos += msg->hdr.msg_size;
	return 0;
}

static int mem_send(struct vfu_conn *conn, const struct vfu_hdr *hdr,
		    const struct iovec *iov, int iovcnt,
		    const int *fds, size_t nr_fds)
{
	(void)conn; (void)hdr; (void)iov; (void)iovcnt; (void)fds; (void)nr_fds;
	return 0;
}

static void mem_close(struct vfu_conn *conn)
{
	conn->mem = NULL;
	conn->mem_len = conn->mem_pos = 0;
}

const struct vfu_transport_ops vfu_mem_transport = {
	.name = "memory",
	.recv = mem_recv,
	.send = mem_send,
	.close = mem_close,
};

static void conn_init_common(struct vfu_conn *conn)
{
	memset(conn, 0, sizeof(*conn));
	conn->fd = -1;
	conn->max_msg_size = VFU_MAX_MSG_SIZE;
	conn->max_fds = VFU_MAX_MSG_FDS_LIMIT;
	pthread_mutex_init(&conn->send_lock, NULL);
}

void vfu_conn_init_sock(struct vfu_conn *conn, int fd)
{
	conn_init_common(conn);
	conn->ops = &vfu_sock_transport;
	conn->fd = fd;
}

void vfu_conn_init_mem(struct vfu_conn *conn, const uint8_t *buf, size_t len)
{
	conn_init_common(conn);
	conn->ops = &vfu_mem_transport;
	conn->mem = buf;
	conn->mem_len = len;
}

void vfu_conn_close(struct vfu_conn *conn)
{
	if (conn->ops)
		conn->ops->close(conn);
	pthread_mutex_destroy(&conn->send_lock);
	conn->ops = NULL;
}

int vfu_send_reply(struct vfu_conn *conn, const struct vfu_hdr *req,
		   int err, const struct iovec *iov, int iovcnt,
		   const int *fds, size_t nr_fds)
{
	struct vfu_hdr h = {
		.msg_id = req->msg_id,
		.cmd = req->cmd,
		.flags = VFU_F_TYPE_REPLY,
	};

	if (req->flags & VFU_F_NO_REPLY)
		return 0;
	if (err) {
		if (err < 0)
			err = -err;
		h.flags |= VFU_F_ERROR;
		h.error_no = err > (int)VFU_MAX_ERRNO ? EINVAL : (uint32_t)err;
		return vfu_conn_send(conn, &h, NULL, 0, NULL, 0);
	}
	return vfu_conn_send(conn, &h, iov, iovcnt, fds, nr_fds);
}

int vfu_sock_listen(const char *path, const struct sock_access *acc)
{
	return unix_socket_listen(path, 4, acc);
}

int vfu_sock_connect(const char *path)
{
	return unix_socket_connect(path);
}
