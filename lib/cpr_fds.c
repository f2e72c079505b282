/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * CPR's fd registry (ferry/cpr_fds.h).
 *
 * One description, the same for both ways out of the process:
 *
 *   header (32 bytes): magic "FERRYFDS" | u32 version | u32 nr_fds
 *                      | u32 names_len | u32 blob_len | u32 kind
 *                      | u32 crc32c(header bytes 0..27, names,
 *                                   numbers, blob)
 *   names:   nr_fds NUL-terminated names, back to back
 *   numbers: kind EXEC only: nr_fds s32 fd numbers in this process
 *   blob:    blob_len bytes
 *
 * Over a socket the description is followed by the fds themselves in
 * chunks of at most CHUNK_FDS, each attached (SCM_RIGHTS) to a u32
 * saying how many it carries, in the order of the names.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ferry/cpr_fds.h"
#include "ferry/crc32c.h"
#include "ferry/util.h"

#define FDS_MAGIC		"FERRYFDS"
#define FDS_VERSION		1u
#define FDS_KIND_SOCKET		0u
#define FDS_KIND_EXEC		1u
#define CHUNK_FDS		250	/* below the kernel's SCM_MAX_FD */

struct fds_hdr {
	char magic[8];
	uint32_t version;
	uint32_t nr;
	uint32_t names_len;
	uint32_t blob_len;
	uint32_t kind;
	uint32_t crc;
} __attribute__((packed));

_Static_assert(sizeof(struct fds_hdr) == 32, "cpr fds header");

struct cpr_entry {
	char name[CPR_NAME_MAX];
	int fd;
	bool taken;
};

struct cpr_fds {
	struct cpr_entry *e;
	unsigned nr, cap;
	bool owns;		/* received: close what is not taken */
	void *blob;
	size_t blob_len;
};

int cpr_fds_new(struct cpr_fds **out)
{
	struct cpr_fds *r = calloc(1, sizeof(*r));

	if (!r)
		return -ENOMEM;
	*out = r;
	return 0;
}

void cpr_fds_free(struct cpr_fds *r)
{
	if (!r)
		return;
	for (unsigned i = 0; r->owns && i < r->nr; i++)
		if (!r->e[i].taken)
			close_safely(&r->e[i].fd);
	free(r->e);
	free(r->blob);
	free(r);
}

static struct cpr_entry *find(const struct cpr_fds *r, const char *name)
{
	for (unsigned i = 0; i < r->nr; i++)
		if (!strcmp(r->e[i].name, name))
			return &r->e[i];
	return NULL;
}

static int append(struct cpr_fds *r, const char *name, size_t len, int fd)
{
	struct cpr_entry *e;

	if (len == 0 || len >= CPR_NAME_MAX)
		return -ENAMETOOLONG;
	if (find(r, name))
		return -EEXIST;
	/* One name per fd: whoever takes it closes it. */
	for (unsigned i = 0; fd >= 0 && i < r->nr; i++)
		if (r->e[i].fd == fd)
			return -EEXIST;
	if (r->nr == CPR_MAX_FDS)
		return -E2BIG;
	if (r->nr == r->cap) {
		unsigned cap = r->cap ? 2 * r->cap : 16;

		e = realloc(r->e, cap * sizeof(*e));
		if (!e)
			return -ENOMEM;
		r->e = e;
		r->cap = cap;
	}
	e = &r->e[r->nr++];
	memset(e, 0, sizeof(*e));
	memcpy(e->name, name, len);
	e->fd = fd;
	return 0;
}

int cpr_fds_add(struct cpr_fds *r, const char *name, int fd)
{
	if (fd < 0)
		return -EBADF;
	if (r->owns)
		return -EINVAL;	/* a received registry is read-only */
	return append(r, name, strnlen(name, CPR_NAME_MAX), fd);
}

int cpr_fds_take(struct cpr_fds *r, const char *name)
{
	struct cpr_entry *e = find(r, name);

	if (!e || e->taken)
		return -ENOENT;
	e->taken = true;
	return e->fd;
}

int cpr_fds_add_prefixed(struct cpr_fds *r, const char *prefix,
			 const char *suffix, int fd)
{
	char name[CPR_NAME_MAX];

	if (snprintf(name, sizeof(name), "%s%s", prefix, suffix) >=
	    (int)sizeof(name))
		return -ENAMETOOLONG;
	return cpr_fds_add(r, name, fd);
}

int cpr_fds_take_prefixed(struct cpr_fds *r, const char *prefix,
			  const char *suffix)
{
	char name[CPR_NAME_MAX];

	if (snprintf(name, sizeof(name), "%s%s", prefix, suffix) >=
	    (int)sizeof(name))
		return -ENAMETOOLONG;
	return cpr_fds_take(r, name);
}

int cpr_fds_peek(const struct cpr_fds *r, const char *name)
{
	const struct cpr_entry *e = find(r, name);

	return e && !e->taken ? e->fd : -ENOENT;
}

unsigned cpr_fds_count(const struct cpr_fds *r)
{
	return r->nr;
}

unsigned cpr_fds_untaken(const struct cpr_fds *r)
{
	unsigned n = 0;

	for (unsigned i = 0; i < r->nr; i++)
		n += !r->e[i].taken;
	return n;
}

int cpr_fds_set_blob(struct cpr_fds *r, const void *blob, size_t len)
{
	void *copy;

	if (len > CPR_MAX_BLOB)
		return -E2BIG;
	copy = malloc(len ? len : 1);
	if (!copy)
		return -ENOMEM;
	memcpy(copy, blob, len);
	free(r->blob);
	r->blob = copy;
	r->blob_len = len;
	return 0;
}

const void *cpr_fds_blob(const struct cpr_fds *r, size_t *len)
{
	*len = r->blob_len;
	return r->blob;
}

/* ---- the description ---- */

static size_t names_len(const struct cpr_fds *r)
{
	size_t n = 0;

	for (unsigned i = 0; i < r->nr; i++)
		n += strlen(r->e[i].name) + 1;
	return n;
}

/* Header, names, (numbers), blob in one buffer. */
static void *describe(const struct cpr_fds *r, uint32_t kind, size_t *out_len)
{
	size_t nl = names_len(r), nums = kind == FDS_KIND_EXEC ?
					 r->nr * sizeof(int32_t) : 0;
	size_t len = sizeof(struct fds_hdr) + nl + nums + r->blob_len;
	struct fds_hdr h = {
		.version = FDS_VERSION, .nr = r->nr,
		.names_len = (uint32_t)nl, .blob_len = (uint32_t)r->blob_len,
		.kind = kind,
	};
	uint8_t *buf = malloc(len), *p;
	uint32_t crc;

	if (!buf)
		return NULL;
	memcpy(h.magic, FDS_MAGIC, sizeof(h.magic));
	p = buf + sizeof(h);
	for (unsigned i = 0; i < r->nr; i++) {
		size_t n = strlen(r->e[i].name) + 1;

		memcpy(p, r->e[i].name, n);
		p += n;
	}
	for (unsigned i = 0; nums && i < r->nr; i++) {
		int32_t fd = r->e[i].fd;

		memcpy(p, &fd, sizeof(fd));
		p += sizeof(fd);
	}
	if (r->blob_len)
		memcpy(p, r->blob, r->blob_len);
	crc = crc32c_update(CRC32C_INIT, &h, offsetof(struct fds_hdr, crc));
	crc = crc32c_final(crc32c_update(crc, buf + sizeof(h),
					 len - sizeof(h)));
	h.crc = crc;
	memcpy(buf, &h, sizeof(h));
	*out_len = len;
	return buf;
}

/* Check a header; *rest gets the bytes that follow it. */
static int check_hdr(const struct fds_hdr *h, uint32_t kind, size_t *rest,
		     char *err, size_t errlen)
{
	uint64_t n;

	if (memcmp(h->magic, FDS_MAGIC, sizeof(h->magic))) {
		snprintf(err, errlen, "not a ferry fd registry");
		return -EBADMSG;
	}
	if (h->version != FDS_VERSION || h->kind != kind) {
		snprintf(err, errlen, "fd registry version %u kind %u, expected "
			 "%u kind %u", h->version, h->kind, FDS_VERSION, kind);
		return -EPROTONOSUPPORT;
	}
	if (h->nr > CPR_MAX_FDS || h->blob_len > CPR_MAX_BLOB ||
	    h->names_len > (uint64_t)h->nr * CPR_NAME_MAX) {
		snprintf(err, errlen, "fd registry of %u fds, %u bytes of "
			 "names, %u of blob: over the limits", h->nr,
			 h->names_len, h->blob_len);
		return -E2BIG;
	}
	n = (uint64_t)h->names_len + h->blob_len +
	    (kind == FDS_KIND_EXEC ? (uint64_t)h->nr * sizeof(int32_t) : 0);
	*rest = (size_t)n;
	return 0;
}

/* Names, numbers and blob after a checked header; fds come later (socket)
 * or from the numbers (exec). */
static int parse(const struct fds_hdr *h, const uint8_t *p, size_t len,
		 struct cpr_fds **out, char *err, size_t errlen)
{
	const uint8_t *names = p, *nums = p + h->names_len;
	const uint8_t *blob = nums + (h->kind == FDS_KIND_EXEC ?
				      h->nr * sizeof(int32_t) : 0);
	uint32_t crc;
	size_t off = 0;
	struct cpr_fds *r;
	int ret;

	crc = crc32c_update(CRC32C_INIT, h, offsetof(struct fds_hdr, crc));
	if (crc32c_final(crc32c_update(crc, p, len)) != h->crc) {
		snprintf(err, errlen, "fd registry CRC mismatch");
		return -EBADMSG;
	}
	ret = cpr_fds_new(&r);
	if (ret)
		return ret;
	for (uint32_t i = 0; i < h->nr; i++) {
		size_t n = strnlen((const char *)names + off,
				   h->names_len - off);
		int32_t fd = -1;

		if (off + n >= h->names_len) {
			snprintf(err, errlen, "fd registry: name %u is not "
				 "terminated", i);
			ret = -EBADMSG;
			goto err_free;
		}
		if (h->kind == FDS_KIND_EXEC)
			memcpy(&fd, nums + i * sizeof(fd), sizeof(fd));
		/* append() refuses a second name for one fd number. */
		ret = append(r, (const char *)names + off, n, fd);
		if (ret) {
			snprintf(err, errlen, "fd registry: name %u: %s", i,
				 strerror(-ret));
			goto err_free;
		}
		off += n + 1;
	}
	if (off != h->names_len) {
		snprintf(err, errlen, "fd registry: %zu bytes of names left "
			 "over", h->names_len - off);
		ret = -EBADMSG;
		goto err_free;
	}
	ret = cpr_fds_set_blob(r, blob, h->blob_len);
	if (ret)
		goto err_free;
	*out = r;
	return 0;

err_free:
	cpr_fds_free(r);
	return ret;
}

/* ---- over a socket ---- */

static uint64_t deadline_of(unsigned timeout_ms)
{
	return timeout_ms ? clock_ns() + timeout_ms * 1000000ull : 0;
}

int cpr_fds_send(const struct cpr_fds *r, int sock, unsigned timeout_ms)
{
	uint64_t deadline = deadline_of(timeout_ms);
	size_t len;
	void *desc = describe(r, FDS_KIND_SOCKET, &len);
	int ret;

	if (!desc)
		return -ENOMEM;
	ret = sock_send_all(sock, desc, len, deadline);
	free(desc);
	for (unsigned i = 0; !ret && i < r->nr; i += CHUNK_FDS) {
		uint32_t count = MIN(r->nr - i, (unsigned)CHUNK_FDS);
		union {
			char buf[CMSG_SPACE(CHUNK_FDS * sizeof(int))];
			struct cmsghdr align;
		} u;
		struct iovec iov = { .iov_base = &count,
				     .iov_len = sizeof(count) };
		struct msghdr m = {
			.msg_iov = &iov, .msg_iovlen = 1,
			.msg_control = u.buf,
			.msg_controllen = CMSG_SPACE(count * sizeof(int)),
		};
		struct cmsghdr *c;
		ssize_t n;

		/* The padding after an odd number of fds goes out too. */
		memset(&u, 0, sizeof(u));
		c = CMSG_FIRSTHDR(&m);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(count * sizeof(int));
		for (uint32_t k = 0; k < count; k++)
			memcpy(CMSG_DATA(c) + k * sizeof(int),
			       &r->e[i + k].fd, sizeof(int));
		ret = fd_wait_until(sock, POLLOUT, deadline);
		if (ret)
			break;
		do {
			n = sendmsg(sock, &m, MSG_NOSIGNAL);
		} while (n < 0 && errno == EINTR);
		if (n < 0)
			ret = -errno;
		else if ((size_t)n != sizeof(count))
			ret = -EIO;	/* 4 bytes never split on AF_UNIX */
	}
	return ret;
}

/* One chunk: its count and its fds, each checked. */
static int recv_chunk(int sock, int *fds, uint32_t want, uint64_t deadline,
		      char *err, size_t errlen)
{
	union {
		char buf[CMSG_SPACE(CHUNK_FDS * sizeof(int))];
		struct cmsghdr align;
	} u;
	uint32_t count = 0;
	struct iovec iov = { .iov_base = &count, .iov_len = sizeof(count) };
	struct msghdr m = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = u.buf, .msg_controllen = sizeof(u.buf),
	};
	unsigned got = 0, seen = 0;
	ssize_t n;
	int ret = fd_wait_until(sock, POLLIN, deadline);

	if (ret) {
		snprintf(err, errlen, "waiting for fds: %s", strerror(-ret));
		return ret;
	}
	do {
		n = recvmsg(sock, &m, MSG_CMSG_CLOEXEC | MSG_WAITALL);
	} while (n < 0 && errno == EINTR);
	if (n < 0) {
		snprintf(err, errlen, "receiving fds: %s", strerror(errno));
		return -errno;
	}
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
		unsigned k;

		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		k = (unsigned)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
		for (unsigned j = 0; j < k; j++) {
			int fd;

			memcpy(&fd, CMSG_DATA(c) + j * sizeof(int), sizeof(fd));
			seen++;
			if (got < want)
				fds[got++] = fd;
			else
				close(fd);	/* more than announced */
		}
	}
	if ((size_t)n != sizeof(count) || (m.msg_flags & MSG_CTRUNC) ||
	    count != want || seen != want) {
		snprintf(err, errlen, "fd chunk: %zd bytes, count %u, %u fds "
			 "for %u expected%s", n, count, seen, want,
			 (m.msg_flags & MSG_CTRUNC) ? " (truncated)" : "");
		for (unsigned j = 0; j < got; j++)
			close(fds[j]);
		return -EBADMSG;
	}
	return 0;
}

int cpr_fds_recv(int sock, unsigned timeout_ms, struct cpr_fds **out,
		 char *err, size_t errlen)
{
	uint64_t deadline = deadline_of(timeout_ms);
	struct cpr_fds *r = NULL;
	struct fds_hdr h;
	uint8_t *rest = NULL;
	size_t len;
	int *fds = NULL;
	int ret;

	ret = sock_recv_all(sock, &h, sizeof(h), deadline);
	if (ret) {
		snprintf(err, errlen, "reading the fd registry: %s",
			 strerror(-ret));
		return ret;
	}
	ret = check_hdr(&h, FDS_KIND_SOCKET, &len, err, errlen);
	if (ret)
		return ret;
	rest = malloc(len ? len : 1);
	if (!rest)
		return -ENOMEM;
	ret = sock_recv_all(sock, rest, len, deadline);
	if (ret) {
		snprintf(err, errlen, "reading the fd registry: %s",
			 strerror(-ret));
		goto out;
	}
	ret = parse(&h, rest, len, &r, err, errlen);
	if (ret)
		goto out;
	/* Every entry is -1 until its fd arrives; free() closes those that
	 * did. */
	r->owns = true;
	fds = calloc(CHUNK_FDS, sizeof(int));
	if (!fds) {
		ret = -ENOMEM;
		goto out;
	}
	for (unsigned i = 0; i < r->nr; i += CHUNK_FDS) {
		uint32_t want = MIN(r->nr - i, (unsigned)CHUNK_FDS);

		ret = recv_chunk(sock, fds, want, deadline, err, errlen);
		if (ret)
			goto out;
		for (uint32_t k = 0; k < want; k++)
			r->e[i + k].fd = fds[k];
	}
	*out = r;
	r = NULL;
out:
	cpr_fds_free(r);
	free(fds);
	free(rest);
	return ret;
}

/* ---- across exec ---- */

static int set_cloexec(int fd, bool on)
{
	int fl = fcntl(fd, F_GETFD);

	if (fl < 0)
		return -errno;
	fl = on ? fl | FD_CLOEXEC : fl & ~FD_CLOEXEC;
	return fcntl(fd, F_SETFD, fl) < 0 ? -errno : 0;
}

int cpr_fds_export(const struct cpr_fds *r, int *memfd)
{
	size_t len;
	void *desc = describe(r, FDS_KIND_EXEC, &len);
	int fd, ret = 0;

	if (!desc)
		return -ENOMEM;
	fd = memfd_create("ferry-cpr-fds", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0) {
		ret = -errno;
		goto out;
	}
	/* fd_write_full: a short write is retried, not an error with
	 * whatever errno was left from before. */
	ret = fd_write_full(fd, desc, len);
	if (!ret && fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW |
			  F_SEAL_WRITE | F_SEAL_SEAL) < 0)
		ret = -errno;
	if (ret) {
		close(fd);
		goto out;
	}
	for (unsigned i = 0; !ret && i < r->nr; i++)
		ret = set_cloexec(r->e[i].fd, false);
	if (!ret)
		ret = set_cloexec(fd, false);
	if (ret) {
		cpr_fds_export_undo(r, fd);
		goto out;
	}
	*memfd = fd;
out:
	free(desc);
	return ret;
}

void cpr_fds_export_undo(const struct cpr_fds *r, int memfd)
{
	for (unsigned i = 0; i < r->nr; i++)
		set_cloexec(r->e[i].fd, true);
	if (memfd >= 0)
		close(memfd);
}

int cpr_fds_import(int memfd, struct cpr_fds **out, char *err,
		   size_t errlen)
{
	struct fds_hdr h;
	struct stat st;
	uint8_t *rest = NULL;
	struct cpr_fds *r = NULL;
	size_t len;
	int ret;

	if (fstat(memfd, &st) < 0) {
		ret = -errno;
		snprintf(err, errlen, "fd registry memfd: %s", strerror(errno));
		goto out;
	}
	if (pread(memfd, &h, sizeof(h), 0) != (ssize_t)sizeof(h)) {
		snprintf(err, errlen, "fd registry memfd: too short");
		ret = -EBADMSG;
		goto out;
	}
	ret = check_hdr(&h, FDS_KIND_EXEC, &len, err, errlen);
	if (ret)
		goto out;
	if ((uint64_t)st.st_size != sizeof(h) + (uint64_t)len) {
		snprintf(err, errlen, "fd registry memfd: %lld bytes, the "
			 "header says %zu", (long long)st.st_size,
			 sizeof(h) + len);
		ret = -EBADMSG;
		goto out;
	}
	rest = malloc(len ? len : 1);
	if (!rest) {
		ret = -ENOMEM;
		goto out;
	}
	if (pread(memfd, rest, len, sizeof(h)) != (ssize_t)len) {
		snprintf(err, errlen, "fd registry memfd: short read");
		ret = -EIO;
		goto out;
	}
	ret = parse(&h, rest, len, &r, err, errlen);
	if (ret)
		goto out;
	/* The fds were left open for us: each must be one (not stdio, not
	 * the memfd itself, open). Then they are ours, close-on-exec
	 * again; on a bad entry the good ones are closed. */
	for (unsigned i = 0; i < r->nr; i++) {
		int fd = r->e[i].fd;

		if (fd <= STDERR_FILENO || fd == memfd ||
		    fcntl(fd, F_GETFD) < 0) {
			snprintf(err, errlen, "fd registry: %s (fd %d) is not "
				 "an inherited fd", r->e[i].name, fd);
			for (unsigned k = 0; k < r->nr; k++)
				if (r->e[k].fd <= STDERR_FILENO ||
				    r->e[k].fd == memfd ||
				    fcntl(r->e[k].fd, F_GETFD) < 0)
					r->e[k].fd = -1;
			r->owns = true;
			ret = -EBADF;
			goto out;
		}
	}
	for (unsigned i = 0; i < r->nr; i++)
		set_cloexec(r->e[i].fd, true);
	r->owns = true;
	*out = r;
	r = NULL;
out:
	cpr_fds_free(r);
	free(rest);
	close(memfd);
	return ret;
}
