/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The destination's front door (mig_accept_source() in
 * ferry/mig_channel.h): a listener that waits for a real source. Every
 * connection gets MIG_HELLO_TIMEOUT_MS in all to send a valid stream
 * header; up to MIG_ACCEPT_PENDING of them are read at once, without
 * blocking, so that junk is refused at its first bad byte and a peer
 * that sends one byte a second cannot hold the door for the source
 * behind it. Those still waiting when a hello wins stay at the door
 * (struct mig_door, kept with the listener) for the next call: they may
 * be the same source's multifd channels.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ferry/log.h"
#include "ferry/mig_channel.h"
#include "ferry/mig_stream.h"
#include "ferry/util.h"
#include "mig_door.h"

struct hello {
	int fd;				/* -1: free slot */
	uint64_t deadline_ns;
	uint8_t buf[MIG_STREAM_HDR_SIZE];
	size_t have;
	char peer[64];
	/* a valid header, waiting for a call that wants its kind */
	bool ready;
	bool multifd;
	uint16_t minor;
};

struct mig_door {
	struct hello hs[MIG_ACCEPT_PENDING];
};

static void peer_name(int fd, char *buf, size_t len)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char host[INET6_ADDRSTRLEN] = "?";
	unsigned port = 0;

	snprintf(buf, len, "a local peer");
	if (getpeername(fd, (struct sockaddr *)&ss, &sl) < 0)
		return;
	if (ss.ss_family == AF_INET) {
		struct sockaddr_in *in = (struct sockaddr_in *)&ss;

		inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
		port = ntohs(in->sin_port);
	} else if (ss.ss_family == AF_INET6) {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;

		inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
		port = ntohs(in6->sin6_port);
	} else {
		return;
	}
	snprintf(buf, len, "%s port %u", host, port);
}

static void hello_drop(struct hello *h, const char *why)
{
	pr_warn("migration: refused %s: %s", h->peer, why);
	close_safely(&h->fd);
}

/* A new connection into a free slot (or the oldest one's). 0, or -EBADF
 * when the listener was shut down. */
static int hello_accept(struct mig_listener *l, struct hello *hs,
			unsigned hello_ms)
{
	struct hello *h = NULL;
	uid_t uid = 0;
	int fd;

	fd = accept4(mig_listener_fd(l), NULL, NULL,
		     SOCK_CLOEXEC | SOCK_NONBLOCK);
	if (fd < 0)
		return errno == EINVAL || errno == EBADF ? -EBADF : 0;
	for (unsigned i = 0; i < MIG_ACCEPT_PENDING; i++) {
		if (hs[i].fd < 0) {
			h = &hs[i];
			break;
		}
		if (!h || hs[i].deadline_ns < h->deadline_ns)
			h = &hs[i];
	}
	if (h->fd >= 0)
		hello_drop(h, "too many connections waiting to say hello");
	*h = (struct hello){ .fd = fd,
			     .deadline_ns = clock_ns() + hello_ms * 1000000ull };
	peer_name(fd, h->peer, sizeof(h->peer));
	if (sock_peer_allowed(fd, mig_listener_access(l), &uid)) {
		char why[64];

		snprintf(why, sizeof(why), "uid %u may not migrate into this "
			 "VM", (unsigned)uid);
		hello_drop(h, why);
	}
	return 0;
}

/* Read what h has sent; true once it sent a valid header. */
static bool hello_read(struct hello *h)
{
	char err[160];
	ssize_t n;

	n = read(h->fd, h->buf + h->have, sizeof(h->buf) - h->have);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return false;
	if (n <= 0) {
		hello_drop(h, n ? strerror(errno) : "closed before its hello");
		return false;
	}
	h->have += (size_t)n;
	/* Junk is refused at once, not after the whole header. */
	if (memcmp(h->buf, MIG_STREAM_MAGIC, MIN(h->have, (size_t)8)) &&
	    memcmp(h->buf, MIG_MF_MAGIC, MIN(h->have, (size_t)8))) {
		hello_drop(h, "not a ferry migration stream");
		return false;
	}
	if (h->have < sizeof(h->buf))
		return false;
	if (mig_stream_check_header_kind(h->buf, &h->minor, &h->multifd, err,
					 sizeof(err))) {
		hello_drop(h, err);
		return false;
	}
	h->ready = true;
	return true;
}

/* A connection that said the hello of the kind wanted, from this call or
 * an earlier one. */
static struct hello *hello_ready(struct hello *hs, bool multifd)
{
	for (unsigned i = 0; i < MIG_ACCEPT_PENDING; i++)
		if (hs[i].fd >= 0 && hs[i].ready && hs[i].multifd == multifd)
			return &hs[i];
	return NULL;
}

int mig_accept_source(struct mig_listener *l, bool multifd,
		      unsigned hello_ms, unsigned timeout_ms,
		      struct mig_channel **out, uint16_t *minor)
{
	uint64_t end = timeout_ms ? clock_ns() + timeout_ms * 1000000ull : 0;
	struct pollfd p[MIG_ACCEPT_PENDING + 1];
	struct mig_door *door;
	struct hello *hs, *won = NULL;
	int ret = 0;

	*out = NULL;
	if (mig_listener_uri(l)->kind == MIG_URI_FILE)
		return -EINVAL;		/* a file has no door: accept it */
	door = mig_listener_door(l);
	if (!door)
		return -ENOMEM;
	hs = door->hs;
	won = hello_ready(hs, multifd);
	while (!won) {
		uint64_t now = clock_ns(), next = end;
		int n;

		/* Those ready wait for their call, silent: no deadline. */
		for (unsigned i = 0; i < MIG_ACCEPT_PENDING; i++) {
			if (hs[i].fd < 0 || hs[i].ready)
				continue;
			if (hs[i].deadline_ns <= now)
				hello_drop(&hs[i], "no valid hello in time");
			else if (!next || hs[i].deadline_ns < next)
				next = hs[i].deadline_ns;
		}
		if (end && now >= end) {
			ret = -ETIMEDOUT;
			break;
		}
		p[0] = (struct pollfd){ .fd = mig_listener_fd(l),
					.events = POLLIN };
		for (unsigned i = 0; i < MIG_ACCEPT_PENDING; i++)
			p[i + 1] = (struct pollfd){
				.fd = hs[i].ready ? -1 : hs[i].fd,
				.events = POLLIN };
		n = poll(p, MIG_ACCEPT_PENDING + 1, next ?
			 (int)DIV_ROUND_UP(next - now, 1000000ull) : -1);
		if (n < 0 && errno != EINTR) {
			ret = -errno;
			break;
		}
		if (n <= 0)
			continue;
		if (p[0].revents & (POLLERR | POLLHUP | POLLNVAL)) {
			ret = -EBADF;	/* the listener was shut down */
			break;
		}
		for (unsigned i = 0; i < MIG_ACCEPT_PENDING; i++)
			if (p[i + 1].fd >= 0 && p[i + 1].revents)
				hello_read(&hs[i]);
		won = hello_ready(hs, multifd);
		if (!won && (p[0].revents & POLLIN)) {
			ret = hello_accept(l, hs, hello_ms);
			if (ret)
				break;
		}
	}
	if (!won)
		return ret;
	/* Back to blocking: the channel does its own timeouts. */
	if (fcntl(won->fd, F_SETFL, fcntl(won->fd, F_GETFL) & ~O_NONBLOCK) < 0) {
		ret = -errno;
		close_safely(&won->fd);
		return ret;
	}
	*minor = won->minor;
	pr_info("migration: %s said hello (%s 1.%u)", won->peer,
		won->multifd ? "multifd channel" : "stream", won->minor);
	ret = mig_channel_from_fd(won->fd, true, 0, out);
	won->fd = -1;			/* the channel's now, or closed */
	won->ready = false;
	if (!ret)
		(*out)->bytes_read = sizeof(won->buf);	/* counted as read */
	return ret;
}

struct mig_door *mig_door_new(void)
{
	struct mig_door *d = calloc(1, sizeof(*d));

	for (unsigned i = 0; d && i < MIG_ACCEPT_PENDING; i++)
		d->hs[i].fd = -1;
	return d;
}

void mig_door_refuse(struct mig_door *d, const char *why)
{
	for (unsigned i = 0; d && i < MIG_ACCEPT_PENDING; i++)
		if (d->hs[i].fd >= 0)
			hello_drop(&d->hs[i], why);
}

void mig_door_free(struct mig_door *d)
{
	mig_door_refuse(d, "the wait for a source ended");
	free(d);
}
