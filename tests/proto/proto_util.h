/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Helpers shared by the proto suite: checks that count failures instead
 * of aborting (so one run reports every broken rule), a child server on a
 * temp socket, fd counting in another process, and raw vfio-user
 * messages for the bad-input tests.
 */
#ifndef FERRY_TESTS_PROTO_UTIL_H
#define FERRY_TESTS_PROTO_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "ferry/vfu_transport.h"

#define TU_SKIP		77
/* Generous bound for anything we wait on; never a performance check. */
#define TU_WAIT_MS	10000u

extern int tu_failures;

#define CHECK(cond, ...)						\
	do {								\
		if (!(cond)) {						\
			tu_failures++;					\
			fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__,	\
				__LINE__, #cond);			\
			fprintf(stderr, __VA_ARGS__);			\
			fputc('\n', stderr);				\
		}							\
	} while (0)

#define CHECK_RET(got, want)						\
	CHECK((long long)(got) == (long long)(want),			\
	      "got %lld, want %lld", (long long)(got), (long long)(want))

/* A test device server running as a child process. */
struct tu_server {
	pid_t pid;
	char dir[64];
	char sock[128];
};

/* mkdtemp under /tmp; dir must hold 64 bytes. */
int tu_mkdtemp(char *dir);
/* Start `bin sock [args...]` (args NULL-terminated) and wait until the
 * socket accepts connections. 0 or -errno. */
int tu_server_start(struct tu_server *s, const char *bin,
		    const char *const *args);
/* Reuse s->dir/s->sock for another server (second process). */
int tu_server_start_in(struct tu_server *s, const char *dir, const char *name,
		       const char *bin, const char *const *args);
/* SIGTERM (then SIGKILL after a bound), reap. Returns the wait status. */
int tu_server_stop(struct tu_server *s);
void tu_server_kill(struct tu_server *s);
/* Remove the socket file and the temp dir. */
void tu_rmdir(const char *dir, const char *sock);

/* Open fds of pid (/proc/<pid>/fd), or -errno. */
int tu_count_fds(pid_t pid);
/* fd count of pid once it stops changing (two samples 50 ms apart). */
int tu_settled_fds(pid_t pid);
/* Poll until pid has `want` fds (bounded); returns the last count. */
int tu_wait_fds(pid_t pid, int want);

/* Raw connection to a server socket. */
int tu_raw_connect(const char *path, struct vfu_conn *conn);
/* Send header+payload as given (msg_size forced to hdr_size if nonzero,
 * else computed), with fds. 0 or -errno. */
int tu_raw_send(struct vfu_conn *conn, uint16_t id, uint16_t cmd,
		uint32_t flags, const void *payload, size_t len,
		const int *fds, size_t nr_fds);
/* Send bytes verbatim (may be a lying header). */
int tu_raw_write(struct vfu_conn *conn, const void *buf, size_t len,
		 const int *fds, size_t nr_fds);
/* Receive one message, bounded by TU_WAIT_MS. 0, -ETIMEDOUT or -errno. */
int tu_raw_recv(struct vfu_conn *conn, struct vfu_msg *msg);
/* Send a request and read its reply; returns 0 for a success reply,
 * -error_no for an error reply, other -errno on transport failures.
 * reply may be NULL. */
int tu_raw_call(struct vfu_conn *conn, uint16_t cmd, const void *payload,
		size_t len, const int *fds, size_t nr_fds,
		struct vfu_msg *reply);
/* VERSION with default JSON; 0 or -errno. */
int tu_raw_negotiate(struct vfu_conn *conn);

#endif /* FERRY_TESTS_PROTO_UTIL_H */
