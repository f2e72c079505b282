/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The fault-injecting TCP proxy of tests/engine (see proxy.h).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ferry/mig_stream.h"
#include "ferry/util.h"
#include "proxy.h"

#define POLL_MS			100
#define CHUNK			(64u << 10)

/* Where the forward stream's sections start (the stream header first). */
struct framer {
	uint64_t pos;			/* stream bytes seen */
	uint64_t hdr_left;		/* of the stream header */
	uint8_t sec[MIG_SECTION_HDR_SIZE];
	size_t have;			/* of sec */
	uint64_t payload_left;
};

struct tconn {
	struct tproxy *p;
	unsigned idx;
	int a, b;			/* the source's side, the destination's */
	pthread_t thread;
	bool started;
	struct tproxy_fault f;
	struct framer fr;
	uint64_t rng;
	bool cut;			/* under p->lock */
};

struct tproxy {
	int lfd;
	uint16_t target;
	uint64_t seed;
	int stop[2];			/* a pipe: readable once stopping */
	pthread_t acceptor;
	pthread_mutex_t lock;
	unsigned n;
	struct tproxy_fault faults[TPROXY_MAX_CONNS];
	struct tconn c[TPROXY_MAX_CONNS];
};

static uint64_t rng_next(uint64_t *s)
{
	/* xorshift64*: reproducible from the seed the test prints */
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 2685821657736338717ull;
}

/*
 * How many of these len bytes go forward before a section of type want
 * starts (all of them if none does); *hit when one does. A header split
 * over two reads had its first part forwarded already: the section is
 * still lost, which is the point.
 */
static size_t framer_scan(struct framer *fr, const uint8_t *buf, size_t len,
			  uint16_t want, bool *hit)
{
	uint64_t start = fr->pos;
	size_t i = 0, n;

	*hit = false;
	while (i < len) {
		if (fr->hdr_left) {
			n = (size_t)MIN(fr->hdr_left, (uint64_t)(len - i));
			fr->hdr_left -= n;
		} else if (fr->payload_left) {
			n = (size_t)MIN(fr->payload_left, (uint64_t)(len - i));
			fr->payload_left -= n;
		} else {
			struct mig_section sec;
			uint64_t sec_start = fr->pos + i - fr->have;

			n = MIN(sizeof(fr->sec) - fr->have, len - i);
			memcpy(fr->sec + fr->have, buf + i, n);
			fr->have += n;
			if (fr->have == sizeof(fr->sec)) {
				memcpy(&sec, fr->sec, sizeof(sec));
				fr->have = 0;
				fr->payload_left = sec.length;
				if (want && sec.type == want) {
					*hit = true;
					fr->pos += i + n;
					return sec_start > start ?
					       (size_t)(sec_start - start) : 0;
				}
			}
		}
		i += n;
	}
	fr->pos += len;
	return len;
}

static bool stopping(struct tproxy *p)
{
	struct pollfd pfd = { .fd = p->stop[0], .events = POLLIN };

	return poll(&pfd, 1, 0) > 0;
}

static int write_all(struct tproxy *p, int fd, const uint8_t *buf, size_t len)
{
	while (len) {
		struct pollfd pfd[2] = {
			{ .fd = fd, .events = POLLOUT },
			{ .fd = p->stop[0], .events = POLLIN },
		};
		ssize_t n;

		if (poll(pfd, 2, POLL_MS) < 0 && errno != EINTR)
			return -errno;
		if (pfd[1].revents)
			return -ECANCELED;
		if (!pfd[0].revents)
			continue;
		n = send(fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			return -errno;
		}
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

static void conn_cut(struct tconn *c)
{
	pthread_mutex_lock(&c->p->lock);
	c->cut = true;
	pthread_mutex_unlock(&c->p->lock);
	if (c->f.cut == TPROXY_CUT_CLOSE) {
		shutdown(c->a, SHUT_RDWR);
		shutdown(c->b, SHUT_RDWR);
	}
}

/* Source to destination: delayed, parsed, maybe cut. 0: go on. */
static int forward(struct tconn *c, uint8_t *buf)
{
	ssize_t n = recv(c->a, buf, CHUNK, MSG_DONTWAIT);
	size_t pass;
	bool hit;
	int ret;

	if (n < 0)
		return errno == EAGAIN || errno == EINTR ? 0 : -errno;
	if (n == 0)
		return -EPIPE;
	pass = framer_scan(&c->fr, buf, (size_t)n,
			   c->f.cut ? c->f.cut_at_type : 0, &hit);
	if (c->f.cut && c->f.cut_after_bytes &&
	    c->fr.pos - (uint64_t)n + pass > c->f.cut_after_bytes) {
		hit = true;
		pass = (size_t)(c->f.cut_after_bytes > c->fr.pos - (uint64_t)n ?
				c->f.cut_after_bytes - (c->fr.pos - (uint64_t)n) :
				0);
	}
	if (c->f.max_delay_us)
		usleep((useconds_t)(rng_next(&c->rng) %
				    (c->f.max_delay_us + 1u)));
	ret = write_all(c->p, c->b, buf, pass);
	if (!ret && hit) {
		conn_cut(c);
		return -ECONNRESET;
	}
	return ret;
}

static void *conn_thread(void *arg)
{
	struct tconn *c = arg;
	uint8_t *buf = malloc(CHUNK);
	ssize_t n;
	int ret = buf ? 0 : -ENOMEM;

	while (!ret) {
		struct pollfd pfd[3] = {
			{ .fd = c->a, .events = POLLIN },
			{ .fd = c->b, .events = POLLIN },
			{ .fd = c->p->stop[0], .events = POLLIN },
		};

		if (poll(pfd, 3, POLL_MS) < 0 && errno != EINTR)
			break;
		if (pfd[2].revents)
			break;
		if (pfd[0].revents)
			ret = forward(c, buf);
		if (!ret && pfd[1].revents) {
			n = recv(c->b, buf, CHUNK, MSG_DONTWAIT);
			if (n == 0)
				ret = -EPIPE;
			else if (n > 0)
				ret = write_all(c->p, c->a, buf, (size_t)n);
		}
	}
	free(buf);
	/* A stall holds both sockets open, silent, until the test stops
	 * the proxy; otherwise the end of one side ends the other. */
	if (ret == -ECONNRESET && c->f.cut == TPROXY_CUT_STALL) {
		struct pollfd pfd = { .fd = c->p->stop[0], .events = POLLIN };

		while (poll(&pfd, 1, POLL_MS) == 0)
			;
	}
	shutdown(c->a, SHUT_RDWR);
	shutdown(c->b, SHUT_RDWR);
	return NULL;
}

static int connect_target(uint16_t port)
{
	struct sockaddr_in sin = {
		.sin_family = AF_INET,
		.sin_port = htons(port),
		.sin_addr.s_addr = htonl(INADDR_LOOPBACK),
	};
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0) {
		int ret = -errno;

		close(fd);
		return ret;
	}
	return fd;
}

static void *accept_thread(void *arg)
{
	struct tproxy *p = arg;

	while (!stopping(p)) {
		struct pollfd pfd[2] = {
			{ .fd = p->lfd, .events = POLLIN },
			{ .fd = p->stop[0], .events = POLLIN },
		};
		struct tconn *c;
		int a, b;

		if (poll(pfd, 2, POLL_MS) <= 0 || pfd[1].revents ||
		    !pfd[0].revents)
			continue;
		a = accept4(p->lfd, NULL, NULL, SOCK_CLOEXEC);
		if (a < 0)
			continue;
		b = connect_target(p->target);
		pthread_mutex_lock(&p->lock);
		if (b < 0 || p->n == TPROXY_MAX_CONNS) {
			pthread_mutex_unlock(&p->lock);
			close(a);
			if (b >= 0)
				close(b);
			continue;
		}
		c = &p->c[p->n];
		*c = (struct tconn){
			.p = p, .idx = p->n, .a = a, .b = b,
			.f = p->faults[p->n],
			.fr = { .hdr_left = MIG_STREAM_HDR_SIZE },
			.rng = p->seed * 0x9e3779b97f4a7c15ull + p->n + 1,
		};
		c->started = !pthread_create(&c->thread, NULL, conn_thread, c);
		p->n++;
		pthread_mutex_unlock(&p->lock);
	}
	return NULL;
}

int tproxy_start(uint16_t target_port, uint64_t seed, struct tproxy **out,
		 char *uri, size_t urilen)
{
	struct sockaddr_in sin = {
		.sin_family = AF_INET,
		.sin_addr.s_addr = htonl(INADDR_LOOPBACK),
	};
	socklen_t slen = sizeof(sin);
	struct tproxy *p = calloc(1, sizeof(*p));
	int ret;

	if (!p)
		return -ENOMEM;
	p->target = target_port;
	p->seed = seed;
	pthread_mutex_init(&p->lock, NULL);
	if (pipe2(p->stop, O_CLOEXEC) < 0) {
		ret = -errno;
		goto err_free;
	}
	p->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (p->lfd < 0 || bind(p->lfd, (struct sockaddr *)&sin,
			       sizeof(sin)) < 0 ||
	    listen(p->lfd, TPROXY_MAX_CONNS) < 0 ||
	    getsockname(p->lfd, (struct sockaddr *)&sin, &slen) < 0) {
		ret = -errno;
		goto err_close;
	}
	if (pthread_create(&p->acceptor, NULL, accept_thread, p)) {
		ret = -EAGAIN;
		goto err_close;
	}
	snprintf(uri, urilen, "tcp:127.0.0.1:%u", ntohs(sin.sin_port));
	*out = p;
	return 0;

err_close:
	if (p->lfd >= 0)
		close(p->lfd);
	close(p->stop[0]);
	close(p->stop[1]);
err_free:
	pthread_mutex_destroy(&p->lock);
	free(p);
	return ret;
}

void tproxy_set_fault(struct tproxy *p, unsigned conn,
		      const struct tproxy_fault *f)
{
	if (conn >= TPROXY_MAX_CONNS)
		return;
	pthread_mutex_lock(&p->lock);
	p->faults[conn] = *f;
	pthread_mutex_unlock(&p->lock);
}

unsigned tproxy_conns(struct tproxy *p)
{
	unsigned n;

	pthread_mutex_lock(&p->lock);
	n = p->n;
	pthread_mutex_unlock(&p->lock);
	return n;
}

bool tproxy_was_cut(struct tproxy *p, unsigned conn)
{
	bool cut;

	pthread_mutex_lock(&p->lock);
	cut = conn < p->n && p->c[conn].cut;
	pthread_mutex_unlock(&p->lock);
	return cut;
}

void tproxy_stop(struct tproxy *p)
{
	if (!p)
		return;
	if (write(p->stop[1], "x", 1) != 1)
		perror("tproxy: stop");
	pthread_join(p->acceptor, NULL);
	for (unsigned i = 0; i < p->n; i++) {
		struct tconn *c = &p->c[i];

		if (c->started)
			pthread_join(c->thread, NULL);
		close(c->a);
		close(c->b);
	}
	close(p->lfd);
	close(p->stop[0]);
	close(p->stop[1]);
	pthread_mutex_destroy(&p->lock);
	free(p);
}
