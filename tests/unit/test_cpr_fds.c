/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The CPR fd registry: names and fds across a socket (several SCM_RIGHTS
 * chunks) and across exec (a memfd, fds left open), with a hostile or
 * vanishing peer; the process's fd count back to its start every time.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "ferry/cpr_fds.h"
#include "ferry/util.h"

#define MANY		600	/* three chunks */
#define TIMEOUT_MS	5000

struct fixture {
	int fds[MANY];
	unsigned nr;
	struct cpr_fds *r;
	unsigned fds0;
};

/* n pipes' read ends, each a distinct inode, registered as "fd.<i>". */
static void fill(struct fixture *f, unsigned n)
{
	char name[32];

	f->fds0 = (unsigned)count_open_fds();
	assert_int_equal(cpr_fds_new(&f->r), 0);
	for (unsigned i = 0; i < n; i++) {
		int p[2];

		assert_int_equal(pipe2(p, O_CLOEXEC), 0);
		close(p[1]);
		f->fds[i] = p[0];
		snprintf(name, sizeof(name), "fd.%u", i);
		assert_int_equal(cpr_fds_add(f->r, name, p[0]), 0);
	}
	f->nr = n;
	assert_int_equal(cpr_fds_set_blob(f->r, "state", 6), 0);
}

static void drain(struct fixture *f)
{
	cpr_fds_free(f->r);
	for (unsigned i = 0; i < f->nr; i++)
		close(f->fds[i]);
	assert_int_equal((unsigned)count_open_fds(), f->fds0);
}

static bool same_file(int a, int b)
{
	struct stat sa, sb;

	return fstat(a, &sa) == 0 && fstat(b, &sb) == 0 &&
	       sa.st_ino == sb.st_ino && sa.st_dev == sb.st_dev;
}

static void test_add_take(void **state)
{
	struct cpr_fds *r;
	int fd = dup(0);

	assert_int_equal(cpr_fds_new(&r), 0);
	assert_int_equal(cpr_fds_add(r, "a", fd), 0);
	assert_int_equal(cpr_fds_add(r, "a", fd), -EEXIST);
	assert_int_equal(cpr_fds_add(r, "b", fd), -EEXIST);	/* one name */
	assert_int_equal(cpr_fds_add(r, "", fd), -ENAMETOOLONG);
	assert_int_equal(cpr_fds_add(r, "c", -1), -EBADF);
	assert_int_equal(cpr_fds_peek(r, "a"), fd);
	assert_int_equal(cpr_fds_take(r, "a"), fd);
	assert_int_equal(cpr_fds_take(r, "a"), -ENOENT);
	assert_int_equal(cpr_fds_peek(r, "nope"), -ENOENT);
	cpr_fds_free(r);
	/* A registry that was filled by add never closes. */
	assert_true(fcntl(fd, F_GETFD) >= 0);
	close(fd);
}

static void test_socket_roundtrip(void **state)
{
	struct fixture f = { 0 };
	struct cpr_fds *got = NULL;
	char err[256] = "", name[32];
	const void *blob;
	size_t len;
	int sv[2];

	fill(&f, MANY);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0,
				    sv), 0);
	/* The socket buffer holds the description and the small chunks. */
	assert_int_equal(cpr_fds_send(f.r, sv[0], TIMEOUT_MS), 0);
	assert_int_equal(cpr_fds_recv(sv[1], TIMEOUT_MS, &got, err,
				      sizeof(err)), 0);
	assert_int_equal(cpr_fds_count(got), MANY);
	blob = cpr_fds_blob(got, &len);
	assert_int_equal(len, 6);
	assert_string_equal(blob, "state");
	for (unsigned i = 0; i < MANY; i += 7) {
		int fd;

		snprintf(name, sizeof(name), "fd.%u", i);
		fd = cpr_fds_take(got, name);
		assert_true(fd >= 0);
		assert_true(same_file(fd, f.fds[i]));
		assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
		close(fd);
	}
	assert_int_equal(cpr_fds_untaken(got), MANY - (MANY + 6) / 7);
	cpr_fds_free(got);	/* closes the rest */
	close(sv[0]);
	close(sv[1]);
	drain(&f);
}

/* One chunk as cpr_fds_send() frames it: a u32 count with its fds. */
static void send_chunk(int sock, const int *fds, uint32_t count)
{
	union {
		char buf[CMSG_SPACE(250 * sizeof(int))];
		struct cmsghdr align;
	} u;
	struct iovec iov = { .iov_base = &count, .iov_len = sizeof(count) };
	struct msghdr m = {
		.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
		.msg_controllen = CMSG_SPACE(count * sizeof(int)),
	};
	struct cmsghdr *c = CMSG_FIRSTHDR(&m);

	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(count * sizeof(int));
	memcpy(CMSG_DATA(c), fds, count * sizeof(int));
	assert_int_equal(sendmsg(sock, &m, 0), sizeof(count));
}

/* The bytes of f's description (the fds of its chunks are dropped). */
static size_t capture_description(struct fixture *f, uint8_t *buf,
				  size_t len)
{
	unsigned chunks = (f->nr + 249) / 250;
	int sv[2];
	ssize_t n;

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0,
				    sv), 0);
	assert_int_equal(cpr_fds_send(f->r, sv[0], TIMEOUT_MS), 0);
	close(sv[0]);
	n = recv(sv[1], buf, len, MSG_WAITALL);
	close(sv[1]);
	assert_true(n > (ssize_t)(32 + 4 * chunks));
	return (size_t)n - 4 * chunks;
}

/* The peer announces 300 fds, sends the first 250 and hangs up: an
 * error, and the 250 that did arrive are closed. */
static void test_socket_peer_vanishes(void **state)
{
	static uint8_t buf[65536];
	struct fixture f = { 0 };
	struct cpr_fds *got = NULL;
	char err[256] = "";
	size_t len;
	int sv[2];

	fill(&f, 300);
	len = capture_description(&f, buf, sizeof(buf));
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0,
				    sv), 0);
	assert_int_equal(send(sv[0], buf, len, 0), (ssize_t)len);
	send_chunk(sv[0], f.fds, 250);
	close(sv[0]);
	assert_true(cpr_fds_recv(sv[1], TIMEOUT_MS, &got, err,
				 sizeof(err)) < 0);
	assert_null(got);
	close(sv[1]);
	drain(&f);	/* counts fds: the 250 received were closed */
}

/* A chunk with more fds than its count says: refused, none kept. */
static void test_socket_extra_fds(void **state)
{
	static uint8_t buf[65536];
	struct fixture f = { 0 };
	struct cpr_fds *got = NULL;
	char err[256] = "";
	size_t len;
	int sv[2];

	fill(&f, 3);
	len = capture_description(&f, buf, sizeof(buf));
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0,
				    sv), 0);
	assert_int_equal(send(sv[0], buf, len, 0), (ssize_t)len);
	{
		/* count 3, but 4 fds attached */
		int four[4] = { f.fds[0], f.fds[1], f.fds[2], f.fds[0] };
		union {
			char b[CMSG_SPACE(4 * sizeof(int))];
			struct cmsghdr align;
		} u;
		uint32_t count = 3;
		struct iovec iov = { &count, sizeof(count) };
		struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1,
				    .msg_control = u.b,
				    .msg_controllen = sizeof(u.b) };
		struct cmsghdr *c = CMSG_FIRSTHDR(&m);

		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(four));
		memcpy(CMSG_DATA(c), four, sizeof(four));
		assert_int_equal(sendmsg(sv[0], &m, 0), sizeof(count));
	}
	close(sv[0]);
	assert_true(cpr_fds_recv(sv[1], TIMEOUT_MS, &got, err,
				 sizeof(err)) < 0);
	assert_non_null(strstr(err, "4 fds"));
	close(sv[1]);
	drain(&f);
}

/* A description whose fds never come: EOF while waiting for a chunk. */
static void test_socket_no_fds(void **state)
{
	static uint8_t buf[65536];
	struct fixture f = { 0 };
	struct cpr_fds *got = NULL;
	char err[256] = "";
	size_t len;
	int sv[2];

	fill(&f, 10);
	len = capture_description(&f, buf, sizeof(buf));
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0,
				    sv), 0);
	assert_int_equal(send(sv[0], buf, len, 0), (ssize_t)len);
	close(sv[0]);
	assert_true(cpr_fds_recv(sv[1], TIMEOUT_MS, &got, err,
				 sizeof(err)) < 0);
	assert_null(got);
	close(sv[1]);
	drain(&f);
}

/* Garbage, a flipped byte, a truncated header, a silent peer. */
static void test_socket_hostile(void **state)
{
	struct fixture f = { 0 };
	struct cpr_fds *got = NULL;
	char err[256] = "";
	uint8_t buf[4096];
	int sv[2];
	ssize_t n;

	fill(&f, 3);
	n = (ssize_t)capture_description(&f, buf, sizeof(buf));

	for (int c = 0; c < 4; c++) {
		uint8_t copy[4096];
		size_t len = (size_t)n;

		memcpy(copy, buf, len);
		if (c == 0)
			memcpy(copy, "NOTFERRY", 8);
		else if (c == 1)
			copy[len - 2] ^= 0x20;	/* in the blob: CRC */
		else if (c == 2)
			len = 20;		/* half a header */
		assert_int_equal(socketpair(AF_UNIX,
					    SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
				 0);
		if (c != 3)
			assert_int_equal(send(sv[0], copy, len, 0),
					 (ssize_t)len);
		if (c != 3)
			close(sv[0]);
		/* c == 3: the peer says nothing and stays: timeout. */
		err[0] = '\0';
		assert_true(cpr_fds_recv(sv[1], c == 3 ? 200 : TIMEOUT_MS,
					 &got, err, sizeof(err)) < 0);
		assert_null(got);
		assert_true(err[0] != '\0');
		if (c == 3)
			close(sv[0]);
		close(sv[1]);
	}
	drain(&f);
}

static void test_exec_export_import(void **state)
{
	struct fixture f = { 0 };
	struct cpr_fds *got = NULL;
	char err[256] = "";
	int memfd = -1, fd;

	fill(&f, 20);
	assert_int_equal(cpr_fds_export(f.r, &memfd), 0);
	/* Left open across exec: no FD_CLOEXEC on any of them. */
	assert_false(fcntl(memfd, F_GETFD) & FD_CLOEXEC);
	for (unsigned i = 0; i < f.nr; i++)
		assert_false(fcntl(f.fds[i], F_GETFD) & FD_CLOEXEC);
	/* An exec that failed: back as it was. */
	cpr_fds_export_undo(f.r, memfd);
	for (unsigned i = 0; i < f.nr; i++)
		assert_true(fcntl(f.fds[i], F_GETFD) & FD_CLOEXEC);

	assert_int_equal(cpr_fds_export(f.r, &memfd), 0);
	/* "The new image": the same numbers, owned by the import. */
	cpr_fds_free(f.r);
	f.r = NULL;
	assert_int_equal(cpr_fds_import(memfd, &got, err, sizeof(err)), 0);
	assert_int_equal(cpr_fds_count(got), 20);
	fd = cpr_fds_take(got, "fd.7");
	assert_int_equal(fd, f.fds[7]);
	assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
	cpr_fds_free(got);	/* closes the 19 others */
	for (unsigned i = 0; i < f.nr; i++)
		if (i != 7)
			assert_true(fcntl(f.fds[i], F_GETFD) < 0);
	close(fd);
	f.nr = 0;
	drain(&f);
}

/* A registry naming an fd the new image does not have. */
static void test_exec_bad_fd(void **state)
{
	struct fixture f = { 0 };
	struct cpr_fds *got = NULL;
	char err[256] = "";
	int memfd = -1;

	fill(&f, 4);
	assert_int_equal(cpr_fds_export(f.r, &memfd), 0);
	close(f.fds[2]);	/* lost on the way */
	cpr_fds_free(f.r);
	f.r = NULL;
	assert_int_equal(cpr_fds_import(memfd, &got, err, sizeof(err)),
			 -EBADF);
	assert_non_null(strstr(err, "fd.2"));
	assert_null(got);
	/* The three good ones were closed by the failed import. */
	for (unsigned i = 0; i < f.nr; i++)
		assert_true(fcntl(f.fds[i], F_GETFD) < 0);
	f.nr = 0;
	drain(&f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_add_take),
		cmocka_unit_test(test_socket_roundtrip),
		cmocka_unit_test(test_socket_peer_vanishes),
		cmocka_unit_test(test_socket_no_fds),
		cmocka_unit_test(test_socket_extra_fds),
		cmocka_unit_test(test_socket_hostile),
		cmocka_unit_test(test_exec_export_import),
		cmocka_unit_test(test_exec_bad_fd),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
