/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * vfio-user message transport: whole messages (header + payload + fds) in
 * and out, behind an ops table so the server dispatcher can be driven by a
 * UNIX socket in production and by a memory buffer in the fuzzer.
 *
 * Contract of recv: reads one message. The header is checked for
 * msg_size >= VFU_HDR_SIZE and msg_size <= max_msg_size before any payload
 * byte is read or allocated; a violation returns -EINVAL and the
 * connection must be considered desynchronised (the caller closes it).
 * Fds that arrive beyond max_fds are closed and reported as -EINVAL after
 * the message has been consumed, so the stream stays in sync: the caller
 * replies with an error. On success msg owns payload and fds; release
 * them with vfu_msg_release(). Returns 0, -EPIPE on orderly EOF, or
 * -errno.
 *
 * Contract of send: writes one message atomically with respect to other
 * senders on the same conn (a mutex serialises senders), fds attached to
 * the first byte. hdr->msg_size is set by send from the iovecs.
 */
#ifndef FERRY_VFU_TRANSPORT_H
#define FERRY_VFU_TRANSPORT_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "ferry/vfio_user.h"

struct vfu_msg {
	struct vfu_hdr hdr;
	uint8_t *payload;	/* msg_size - VFU_HDR_SIZE bytes */
	size_t payload_len;
	int fds[VFU_MAX_MSG_FDS_LIMIT];
	size_t nr_fds;
	int fd_error;		/* -EINVAL if fds were dropped */
};

struct vfu_conn;

struct vfu_transport_ops {
	const char *name;
	int (*recv)(struct vfu_conn *conn, struct vfu_msg *msg);
	int (*send)(struct vfu_conn *conn, const struct vfu_hdr *hdr,
		    const struct iovec *iov, int iovcnt,
		    const int *fds, size_t nr_fds);
	void (*close)(struct vfu_conn *conn);
};

struct vfu_conn {
	const struct vfu_transport_ops *ops;
	int fd;			/* socket for the sock transport */
	uint32_t max_msg_size;	/* recv refuses larger messages */
	uint32_t max_fds;	/* recv accepts at most this many fds */
	pthread_mutex_t send_lock;
	/* memory transport (fuzzing): input bytes and a position */
	const uint8_t *mem;
	size_t mem_len;
	size_t mem_pos;
};

extern const struct vfu_transport_ops vfu_sock_transport;
extern const struct vfu_transport_ops vfu_mem_transport;

/* Initialise conn over a connected socket (takes ownership of fd). */
void vfu_conn_init_sock(struct vfu_conn *conn, int fd);
/* Initialise conn reading messages from buf; sends are discarded. */
void vfu_conn_init_mem(struct vfu_conn *conn, const uint8_t *buf, size_t len);
void vfu_conn_close(struct vfu_conn *conn);

static inline int vfu_conn_recv(struct vfu_conn *conn, struct vfu_msg *msg)
{
	return conn->ops->recv(conn, msg);
}

static inline int vfu_conn_send(struct vfu_conn *conn,
				const struct vfu_hdr *hdr,
				const struct iovec *iov, int iovcnt,
				const int *fds, size_t nr_fds)
{
	return conn->ops->send(conn, hdr, iov, iovcnt, fds, nr_fds);
}

/* Free payload and close fds not taken (taken fds are set to -1). */
void vfu_msg_release(struct vfu_msg *msg);

/* Take ownership of fd i of msg (it will not be closed by release). */
int vfu_msg_take_fd(struct vfu_msg *msg, size_t i);

/* Send a reply to req: payload from iov, or an error reply if err != 0
 * (header only, VFU_F_ERROR, error_no = err clamped to VFU_MAX_ERRNO). */
int vfu_send_reply(struct vfu_conn *conn, const struct vfu_hdr *req,
		   int err, const struct iovec *iov, int iovcnt,
		   const int *fds, size_t nr_fds);

/* UNIX socket helpers: listen on path (unlinking a stale socket first;
 * the file as acc says, NULL: private, see ferry/util.h) and connect to
 * path. Return an fd or -errno. */
struct sock_access;
int vfu_sock_listen(const char *path, const struct sock_access *acc);
int vfu_sock_connect(const char *path);

#endif /* FERRY_VFU_TRANSPORT_H */
