/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Small helpers shared by every ferry component: overflow-checked
 * arithmetic, fd hygiene, branch hints. Header-only.
 */
#ifndef FERRY_UTIL_H
#define FERRY_UTIL_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <unistd.h>

#define ARRAY_SIZE(a)	(sizeof(a) / sizeof((a)[0]))
#define likely(x)	__builtin_expect(!!(x), 1)
#define unlikely(x)	__builtin_expect(!!(x), 0)
#define container_of(ptr, type, member) \
	((type *)((char *)(ptr) - offsetof(type, member)))
/* Each argument is evaluated once (MIN(rand(), n) must stay <= n);
 * temporaries get unique names so MIN(MIN(a, b), c) does not shadow. */
#define CMP_ONCE_(a, b, op, n) ({ __typeof__(a) a_##n = (a); \
		__typeof__(b) b_##n = (b); a_##n op b_##n ? a_##n : b_##n; })
#define CMP_ONCE(a, b, op, n)	CMP_ONCE_(a, b, op, n)
#define MIN(a, b)	CMP_ONCE(a, b, <, __COUNTER__)
#define MAX(a, b)	CMP_ONCE(a, b, >, __COUNTER__)
#define DIV_ROUND_UP(n, d)	(((n) + (d) - 1) / (d))
#define IS_POW2(x)	((x) != 0 && (((x) & ((x) - 1)) == 0))
#define ALIGN_UP(x, a)	(((x) + (a) - 1) & ~((__typeof__(x))(a) - 1))
#define IS_ALIGNED(x, a)	(((x) & ((__typeof__(x))(a) - 1)) == 0)

#define KiB	(1ull << 10)
#define MiB	(1ull << 20)
#define GiB	(1ull << 30)

/* true if a + b overflowed; *res is set either way. */
#define check_add_overflow(a, b, res)	__builtin_add_overflow(a, b, res)
#define check_mul_overflow(a, b, res)	__builtin_mul_overflow(a, b, res)

/*
 * true if [off, off + len) lies inside [0, limit). len == 0 is in range
 * when off <= limit.
 */
static inline bool range_within(uint64_t off, uint64_t len, uint64_t limit)
{
	uint64_t end;

	if (check_add_overflow(off, len, &end))
		return false;
	return end <= limit;
}

/* true if [a, a + alen) and [b, b + blen) intersect; lengths > 0. */
static inline bool ranges_overlap(uint64_t a, uint64_t alen,
				  uint64_t b, uint64_t blen)
{
	return a < b + blen && b < a + alen;
}

/*
 * Close *fd if open and mark it closed. close() is not retried on EINTR:
 * on Linux the descriptor is released even then, and a retry could close
 * an fd another thread just got. errno is preserved for the caller.
 */
static inline void close_safely(int *fd)
{
	int saved = errno;

	if (*fd >= 0) {
		(void)close(*fd);
		*fd = -1;
	}
	errno = saved;
}

/* Write/read exactly len bytes on a blocking fd, retrying on EINTR and
 * short transfers. Return 0 or -errno (-EPIPE on EOF for reads). */
int fd_write_full(int fd, const void *buf, size_t len);
int fd_read_full(int fd, void *buf, size_t len);

/* Monotonic clock in nanoseconds. */
uint64_t clock_ns(void);

/*
 * Bounded socket I/O for peers that may stall: deadline is a clock_ns()
 * instant, 0 for none. fd_wait_until() polls for events (0, -ETIMEDOUT,
 * -errno); sock_send_all()/sock_recv_all() move exactly len bytes with
 * non-blocking calls (MSG_NOSIGNAL: a gone peer is -EPIPE, not a signal),
 * never reading past len (fds that follow stay in the socket). A
 * receive that meets EOF is -EPIPE.
 */
int fd_wait_until(int fd, short events, uint64_t deadline);
int sock_send_all(int fd, const void *buf, size_t len, uint64_t deadline);
int sock_recv_all(int fd, void *buf, size_t len, uint64_t deadline);

/* Parse a size like "64M", "1G", "4096", "2K" (binary units). 0 or -EINVAL. */
int parse_size(const char *s, uint64_t *out);

/*
 * Who may use a socket a ferry program listens on. The file gets mode
 * (0: 0600, whatever the umask) before the socket listens, so nobody
 * else can ever connect in between; and every peer is checked with
 * SO_PEERCRED: this process's own user, root, and allow_uid
 * (SOCK_UID_NONE: nobody else) may talk to it.
 */
#define SOCK_UID_NONE	((uid_t)-1)
struct sock_access {
	mode_t mode;
	uid_t allow_uid;
};
#define SOCK_ACCESS_PRIVATE	((struct sock_access){ 0, SOCK_UID_NONE })

/* 0, or -EACCES with the peer's uid in *peer_uid. A socket without
 * credentials (TCP) passes: its peers are not users of this host. */
int sock_peer_allowed(int fd, const struct sock_access *acc,
		      uid_t *peer_uid);
/* Parse "0660" (octal, no more than 0777) and a uid. 0 or -EINVAL. */
int parse_sock_mode(const char *s, mode_t *out);
int parse_uid(const char *s, uid_t *out);

/* UNIX stream sockets (CLOEXEC). listen replaces a stale socket file at
 * path and creates the new one as acc says (NULL: private). Return an
 * fd or -errno (-ENAMETOOLONG for a path that does not fit sun_path). */
int unix_socket_listen(const char *path, int backlog,
		       const struct sock_access *acc);
int unix_socket_connect(const char *path);

/* Number of open fds of this process (counted in /proc/self/fd). */
int count_open_fds(void);

/* What an inherited fd is (live update checks what it is handed):
 * an eventfd; a connected or listening AF_UNIX stream socket. */
bool fd_is_eventfd(int fd);
bool fd_is_unix_stream(int fd);

#endif /* FERRY_UTIL_H */
