/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Migration channel transports: TCP and UNIX stream sockets, and files.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <limits.h>
#include <unistd.h>

#include <json-c/json.h>

#include "ferry/mig_channel.h"
#include "ferry/util.h"
#include "mig_door.h"

/* An IPv4/IPv6 address, or a host name of RFC 1123 labels. */
static bool host_valid(const char *h)
{
	unsigned char addr[sizeof(struct in6_addr)];
	size_t label = 0, n = strlen(h);

	if (inet_pton(AF_INET, h, addr) == 1 ||
	    inet_pton(AF_INET6, h, addr) == 1)
		return true;
	if (!n || n > 253 || strspn(h, "0123456789.") == n)
		return false;	/* empty, too long, or a bad dotted quad */
	for (const char *p = h; *p; p++) {
		if (*p == '.') {
			if (!label || p[-1] == '-')
				return false;
			label = 0;
			continue;
		}
		if (!isalnum((unsigned char)*p) && *p != '-')
			return false;
		if ((label == 0 && *p == '-') || ++label > 63)
			return false;
	}
	return label && h[n - 1] != '-';
}

int mig_uri_parse(const char *uri, struct mig_uri *out, char *err,
		  size_t errlen)
{
	const char *rest, *colon;

	memset(out, 0, sizeof(*out));
	if (!uri)
		goto err_syntax;
	if (!strncmp(uri, "tcp:", 4)) {
		rest = uri + 4;
		colon = strrchr(rest, ':');
		if (!colon || colon == rest || !colon[1])
			goto err_syntax;
		if ((size_t)(colon - rest) >= sizeof(out->host) ||
		    strlen(colon + 1) >= sizeof(out->port))
			goto err_long;
		out->kind = MIG_URI_TCP;
		memcpy(out->host, rest, (size_t)(colon - rest));
		/* [::1]:4444 style */
		if (out->host[0] == '[') {
			size_t n = strlen(out->host);

			if (n < 3 || out->host[n - 1] != ']')
				goto err_syntax;
			memmove(out->host, out->host + 1, n - 2);
			out->host[n - 2] = '\0';
		}
		strcpy(out->port, colon + 1);
		for (const char *p = out->port; *p; p++)
			if (*p < '0' || *p > '9')
				goto err_syntax;
		if (strlen(out->port) > 5 || atoi(out->port) > 65535) {
			snprintf(err, errlen, "migration URI '%s': port %s is "
				 "not 0..65535", uri, out->port);
			return -EINVAL;
		}
		if (!host_valid(out->host)) {
			snprintf(err, errlen, "migration URI '%s': '%s' is not "
				 "an address or a host name", uri, out->host);
			return -EINVAL;
		}
		return 0;
	}
	if (!strncmp(uri, "unix:", 5) || !strncmp(uri, "file:", 5)) {
		rest = uri + 5;
		if (!*rest)
			goto err_syntax;
		if (strlen(rest) >= sizeof(out->path))
			goto err_long;
		out->kind = uri[0] == 'u' ? MIG_URI_UNIX : MIG_URI_FILE;
		strcpy(out->path, rest);
		return 0;
	}
err_syntax:
	snprintf(err, errlen, "invalid migration URI '%s' (expected "
		 "tcp:HOST:PORT, unix:PATH or file:PATH)", uri ? uri : "");
	return -EINVAL;
err_long:
	snprintf(err, errlen, "migration URI '%s' is too long", uri);
	return -ENAMETOOLONG;
}

/* Wait until fd is ready for events, or the channel's timeout (or its
 * deadline) expires. */
static int chan_wait(struct mig_channel *ch, short events)
{
	unsigned ms = events == POLLIN ? ch->read_timeout_ms : ch->timeout_ms;
	/* Another thread may set it (the switchover's budget). */
	uint64_t deadline = __atomic_load_n(&ch->deadline_ns, __ATOMIC_RELAXED);
	struct pollfd p = { .fd = ch->fd, .events = events };
	int n;

	if (deadline) {
		uint64_t now = clock_ns(), left_ms;

		if (now >= deadline)
			return -ETIMEDOUT;
		left_ms = DIV_ROUND_UP(deadline - now, 1000000ull);
		if (!ms || left_ms < ms)
			ms = (unsigned)MIN(left_ms, (uint64_t)INT32_MAX);
	}
	if (!ms)
		return 0;
	do {
		n = poll(&p, 1, (int)ms);
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	if (n == 0)
		return -ETIMEDOUT;
	return 0;
}

static int fd_chan_read(struct mig_channel *ch, void *buf, size_t len)
{
	char *p = buf;

	while (len) {
		ssize_t n;
		int ret = chan_wait(ch, POLLIN);

		if (ret)
			return ret;
		n = read(ch->fd, p, len);
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return -errno;
		}
		if (n == 0)
			return -EPIPE;
		p += n;
		len -= (size_t)n;
		ch->bytes_read += (uint64_t)n;
		__atomic_store_n(&ch->last_io_ns, clock_ns(), __ATOMIC_RELAXED);
	}
	return 0;
}


/* Drop the first done bytes of a vector, whole entries first. */
static void iov_advance(struct iovec **iov, int *n, size_t done)
{
	while (done) {
		size_t take = MIN(done, (*iov)->iov_len);

		(*iov)->iov_base = (char *)(*iov)->iov_base + take;
		(*iov)->iov_len -= take;
		done -= take;
		if (!(*iov)->iov_len) {
			(*iov)++;
			(*n)--;
		}
	}
}
static int fd_chan_readv(struct mig_channel *ch, struct iovec *iov, int n)
{
	while (n) {
		ssize_t got;
		int ret;

		if (!iov->iov_len) {
			iov++;
			n--;
			continue;
		}
		ret = chan_wait(ch, POLLIN);
		if (ret)
			return ret;
		got = readv(ch->fd, iov, MIN(n, IOV_MAX));
		if (got < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return -errno;
		}
		if (got == 0)
			return -EPIPE;
		ch->bytes_read += (uint64_t)got;
		__atomic_store_n(&ch->last_io_ns, clock_ns(), __ATOMIC_RELAXED);
		iov_advance(&iov, &n, (size_t)got);	/* what arrived */
	}
	return 0;
}

int mig_readv(struct mig_channel *ch, struct iovec *iov, int n)
{
	if (ch->ops->readv_full)
		return ch->ops->readv_full(ch, iov, n);
	for (int i = 0; i < n; i++) {
		int ret = mig_read(ch, iov[i].iov_base, iov[i].iov_len);

		if (ret)
			return ret;
	}
	return 0;
}

static int fd_chan_write(struct mig_channel *ch, const void *buf, size_t len)
{
	const char *p = buf;

	while (len) {
		ssize_t n;
		int ret = chan_wait(ch, POLLOUT);

		if (ret)
			return ret;
		/*
		 * With a timeout, never block inside send(): a blocking send
		 * of more than the free socket buffer waits for the peer
		 * without limit, so a stalled destination would hang the
		 * migration although poll() said "writable".
		 */
		n = send(ch->fd, p, len, MSG_NOSIGNAL |
			 (ch->timeout_ms ||
			  __atomic_load_n(&ch->deadline_ns, __ATOMIC_RELAXED) ?
			  MSG_DONTWAIT : 0));
		if (n < 0 && errno == ENOTSOCK)
			n = write(ch->fd, p, len);
		if (n < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
		ch->bytes_written += (uint64_t)n;
		__atomic_store_n(&ch->last_io_ns, clock_ns(), __ATOMIC_RELAXED);
	}
	return 0;
}

/*
 * Several buffers as one sendmsg(): a section's header, its head and its
 * data leave in one call. Written separately, with TCP_NODELAY on (for
 * the acks), each small piece went out as a segment of its own and woke
 * the reader for 32 bytes. Same rules as fd_chan_write.
 */
static int fd_chan_writev(struct mig_channel *ch, struct iovec *iov, int n)
{
	while (n) {
		struct msghdr msg = { .msg_iov = iov,
				      .msg_iovlen = (size_t)MIN(n, IOV_MAX) };
		ssize_t got;
		int ret;

		if (!iov->iov_len) {
			iov++;
			n--;
			continue;
		}
		ret = chan_wait(ch, POLLOUT);
		if (ret)
			return ret;
		got = sendmsg(ch->fd, &msg, MSG_NOSIGNAL |
			      (ch->timeout_ms ||
			       __atomic_load_n(&ch->deadline_ns,
					       __ATOMIC_RELAXED) ?
			       MSG_DONTWAIT : 0));
		if (got < 0 && errno == ENOTSOCK)
			got = writev(ch->fd, iov, (int)msg.msg_iovlen);
		if (got < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return -errno;
		}
		ch->bytes_written += (uint64_t)got;
		__atomic_store_n(&ch->last_io_ns, clock_ns(), __ATOMIC_RELAXED);
		iov_advance(&iov, &n, (size_t)got);	/* what went out */
	}
	return 0;
}

int mig_writev(struct mig_channel *ch, struct iovec *iov, int n)
{
	if (ch->ops->writev_full)
		return ch->ops->writev_full(ch, iov, n);
	for (int i = 0; i < n; i++) {
		int ret = iov[i].iov_len ?
			  mig_write(ch, iov[i].iov_base, iov[i].iov_len) : 0;

		if (ret)
			return ret;
	}
	return 0;
}

static void sock_chan_shutdown(struct mig_channel *ch)
{
	if (ch->fd >= 0)
		shutdown(ch->fd, SHUT_RDWR);
}

static void sock_chan_shutdown_read(struct mig_channel *ch)
{
	if (ch->fd >= 0)
		shutdown(ch->fd, SHUT_RD);
}

static void file_chan_shutdown(struct mig_channel *ch)
{
	/* A blocked file read/write completes on its own. */
}

static void fd_chan_close(struct mig_channel *ch)
{
	close_safely(&ch->fd);
}

static const struct mig_channel_ops sock_channel_ops = {
	.name = "socket",
	.read_full = fd_chan_read,
	.readv_full = fd_chan_readv,
	.write_full = fd_chan_write,
	.writev_full = fd_chan_writev,
	.shutdown = sock_chan_shutdown,
	.shutdown_read = sock_chan_shutdown_read,
	.close = fd_chan_close,
};

static const struct mig_channel_ops file_channel_ops = {
	.name = "file",
	.read_full = fd_chan_read,
	.readv_full = fd_chan_readv,
	.write_full = fd_chan_write,
	.writev_full = fd_chan_writev,
	.shutdown = file_chan_shutdown,
	.close = fd_chan_close,
};

int mig_channel_from_fd(int fd, bool is_socket, unsigned timeout_ms,
			struct mig_channel **out)
{
	struct mig_channel *ch = calloc(1, sizeof(*ch));

	if (!ch) {
		close(fd);
		return -ENOMEM;
	}
	ch->fd = fd;
	ch->ops = is_socket ? &sock_channel_ops : &file_channel_ops;
	ch->has_return_path = is_socket;
	ch->timeout_ms = is_socket ? timeout_ms : 0;
	if (is_socket) {
		int one = 1;

		/* Small control messages (acks) must not wait for Nagle. */
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
	*out = ch;
	return 0;
}

static int tcp_resolve(const struct mig_uri *uri, bool passive,
		       struct addrinfo **res)
{
	struct addrinfo hints = {
		.ai_family = AF_UNSPEC,
		.ai_socktype = SOCK_STREAM,
		.ai_flags = passive ? AI_PASSIVE : 0,
	};
	int ret = getaddrinfo(uri->host[0] ? uri->host : NULL, uri->port,
			      &hints, res);

	if (ret)
		return ret == EAI_SYSTEM ? -errno : -EHOSTUNREACH;
	return 0;
}

/* connect() that gives up after timeout_ms (0: the kernel's own), so an
 * unreachable host cannot hold a migration in setup for minutes. */
static int connect_bounded(int fd, const struct sockaddr *sa, socklen_t len,
			   unsigned timeout_ms)
{
	int flags = fcntl(fd, F_GETFL), err = 0, n;
	socklen_t elen = sizeof(err);
	struct pollfd p = { .fd = fd, .events = POLLOUT };

	if (!timeout_ms || flags < 0)
		return connect(fd, sa, len) ? -errno : 0;
	if (fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
		return -errno;
	if (connect(fd, sa, len) < 0) {
		if (errno != EINPROGRESS)
			return -errno;
		do {
			n = poll(&p, 1, (int)timeout_ms);
		} while (n < 0 && errno == EINTR);
		if (n <= 0)
			return n ? -errno : -ETIMEDOUT;
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0)
			return -errno;
		if (err)
			return -err;
	}
	return fcntl(fd, F_SETFL, flags) < 0 ? -errno : 0;
}

int mig_channel_connect(const struct mig_uri *uri, unsigned timeout_ms,
			struct mig_channel **out)
{
	struct addrinfo *res = NULL, *ai;
	int fd = -1, ret;

	switch (uri->kind) {
	case MIG_URI_FILE:
		fd = open(uri->path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
			  0600);
		if (fd < 0)
			return -errno;
		return mig_channel_from_fd(fd, false, 0, out);
	case MIG_URI_UNIX:
		fd = unix_socket_connect(uri->path);
		if (fd < 0)
			return fd;
		return mig_channel_from_fd(fd, true, timeout_ms, out);
	case MIG_URI_TCP:
		ret = tcp_resolve(uri, false, &res);
		if (ret)
			return ret;
		ret = -ECONNREFUSED;
		for (ai = res; ai; ai = ai->ai_next) {
			fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC,
				    ai->ai_protocol);
			if (fd < 0) {
				ret = -errno;
				continue;
			}
			ret = connect_bounded(fd, ai->ai_addr, ai->ai_addrlen,
					      timeout_ms);
			if (!ret)
				break;
			close_safely(&fd);
		}
		freeaddrinfo(res);
		if (fd < 0)
			return ret;
		return mig_channel_from_fd(fd, true, timeout_ms, out);
	}
	return -EINVAL;
}

/* A multifd source connects its main channel and up to 64 more at once,
 * before the destination has read the main one's configuration: a
 * backlog too short drops their SYNs, and TCP retries only a second
 * later. */
#define MIG_LISTEN_BACKLOG	128

struct mig_listener {
	struct mig_uri uri;
	int fd;
	struct sock_access acc;
	struct mig_door *door;		/* mig_accept_source()'s */
};

struct mig_door *mig_listener_door(struct mig_listener *l)
{
	if (!l->door)
		l->door = mig_door_new();
	return l->door;
}

int mig_listener_open(const struct mig_uri *uri,
		      const struct sock_access *acc, struct mig_listener **out)
{
	struct mig_listener *l = calloc(1, sizeof(*l));
	struct addrinfo *res = NULL;
	int one = 1, ret;

	if (!l)
		return -ENOMEM;
	l->uri = *uri;
	l->fd = -1;
	l->acc = acc ? *acc : SOCK_ACCESS_PRIVATE;
	switch (uri->kind) {
	case MIG_URI_FILE:
		/* Opened at accept time: the file may be written later. */
		*out = l;
		return 0;
	case MIG_URI_UNIX:
		l->fd = unix_socket_listen(uri->path, MIG_LISTEN_BACKLOG, acc);
		if (l->fd < 0) {
			ret = l->fd;
			goto err_free;
		}
		*out = l;
		return 0;
	case MIG_URI_TCP:
		ret = tcp_resolve(uri, true, &res);
		if (ret)
			goto err_free;
		l->fd = socket(res->ai_family, res->ai_socktype | SOCK_CLOEXEC,
			       res->ai_protocol);
		if (l->fd < 0)
			goto err_errno;
		setsockopt(l->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (bind(l->fd, res->ai_addr, res->ai_addrlen) < 0)
			goto err_errno;
		freeaddrinfo(res);
		res = NULL;
		break;
	}
	if (listen(l->fd, MIG_LISTEN_BACKLOG) < 0)
		goto err_errno;
	*out = l;
	return 0;

err_errno:
	ret = -errno;
	if (res)
		freeaddrinfo(res);
	close_safely(&l->fd);
err_free:
	free(l);
	return ret;
}

int mig_listener_accept(struct mig_listener *l, unsigned timeout_ms,
			struct mig_channel **out)
{
	struct pollfd p;
	int fd, n;

	if (l->uri.kind == MIG_URI_FILE) {
		fd = open(l->uri.path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			return -errno;
		return mig_channel_from_fd(fd, false, 0, out);
	}
	p.fd = l->fd;
	p.events = POLLIN;
	do {
		n = poll(&p, 1, timeout_ms ? (int)timeout_ms : -1);
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	if (n == 0)
		return -ETIMEDOUT;
	fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (sock_peer_allowed(fd, &l->acc, NULL)) {
		close(fd);
		return -EACCES;
	}
	return mig_channel_from_fd(fd, true, 0, out);
}

const struct sock_access *mig_listener_access(struct mig_listener *l)
{
	return &l->acc;
}

const struct mig_uri *mig_listener_uri(struct mig_listener *l)
{
	return &l->uri;
}

int mig_listener_fd(struct mig_listener *l)
{
	return l->fd;
}

void mig_listener_close(struct mig_listener *l)
{
	if (!l)
		return;
	mig_door_free(l->door);
	close_safely(&l->fd);
	if (l->uri.kind == MIG_URI_UNIX)
		unlink(l->uri.path);
	free(l);
}

void mig_channel_shutdown(struct mig_channel *ch)
{
	if (ch)
		ch->ops->shutdown(ch);
}

void mig_channel_shutdown_read(struct mig_channel *ch)
{
	if (!ch)
		return;
	if (ch->ops->shutdown_read)
		ch->ops->shutdown_read(ch);
	else
		ch->ops->shutdown(ch);
}

void mig_channel_close(struct mig_channel *ch)
{
	if (!ch)
		return;
	ch->ops->close(ch);
	free(ch);
}

uint64_t mig_channel_unsent(struct mig_channel *ch)
{
	int n = 0;

	if (!ch || !ch->has_return_path || ioctl(ch->fd, SIOCOUTQ, &n) < 0 ||
	    n < 0)
		return 0;
	return (uint64_t)n;
}

/* ---- QEMU's channel objects ---- */

static const char *addr_str(struct json_object *o, const char *key)
{
	struct json_object *v;

	if (!json_object_object_get_ex(o, key, &v) ||
	    !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

int mig_uri_from_addr(struct json_object *addr, char *uri, size_t len,
		      char *err, size_t errlen)
{
	const char *transport, *type, *s, *host;
	struct json_object *port;
	struct mig_uri u;
	int n = -1;

	if (!addr || !json_object_is_type(addr, json_type_object) ||
	    !(transport = addr_str(addr, "transport"))) {
		snprintf(err, errlen, "a channel address needs a 'transport'");
		return -EINVAL;
	}
	type = addr_str(addr, "type");
	if (!strcmp(transport, "file") && (s = addr_str(addr, "filename"))) {
		n = snprintf(uri, len, "file:%s", s);
	} else if (!strcmp(transport, "socket") && type &&
		   !strcmp(type, "unix") && (s = addr_str(addr, "path"))) {
		n = snprintf(uri, len, "unix:%s", s);
	} else if (!strcmp(transport, "socket") && type &&
		   !strcmp(type, "inet") && (host = addr_str(addr, "host")) &&
		   json_object_object_get_ex(addr, "port", &port)) {
		/* QEMU's port is a string; a number is as good. */
		n = snprintf(uri, len, "tcp:%s:%s", host,
			     json_object_get_string(port));
	} else {
		snprintf(err, errlen, "unsupported channel address (socket "
			 "unix/inet or file, with path, host and port, or "
			 "filename)");
		return -EINVAL;
	}
	if (n < 0 || (size_t)n >= len) {
		snprintf(err, errlen, "channel address too long");
		return -EINVAL;
	}
	return mig_uri_parse(uri, &u, err, errlen);
}

int mig_uri_from_channel(struct json_object *chan, bool *cpr, char *uri,
			 size_t len, char *err, size_t errlen)
{
	struct json_object *addr;
	const char *type;

	if (!chan || !json_object_is_type(chan, json_type_object) ||
	    !(type = addr_str(chan, "channel-type")) ||
	    !json_object_object_get_ex(chan, "addr", &addr)) {
		snprintf(err, errlen, "a channel needs 'channel-type' and "
			 "'addr'");
		return -EINVAL;
	}
	if (strcmp(type, "main") && strcmp(type, "cpr")) {
		snprintf(err, errlen, "channel-type '%s': expected main or cpr",
			 type);
		return -EINVAL;
	}
	*cpr = !strcmp(type, "cpr");
	return mig_uri_from_addr(addr, uri, len, err, errlen);
}
