/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * CPR's fd registry: open file descriptors under names ("ram",
 * "dev0.sock", "dev0.irq.3"), with a small opaque blob beside them, moved
 * to another process on the same host -- over an AF_UNIX socket with
 * SCM_RIGHTS (cpr-transfer, a device server's takeover), or across
 * exec() in a memfd with the fds left open (cpr-exec).
 *
 * Ownership: a registry filled with cpr_fds_add() only borrows the fds
 * (they stay the caller's: free does not close them). A registry that
 * was received or imported owns its fds: cpr_fds_take() hands one over
 * (the caller closes it), cpr_fds_free() closes every fd not taken.
 *
 * The peer is not trusted: everything received is length-checked (names
 * NUL-terminated within CPR_NAME_MAX, counts within CPR_MAX_FDS, the fds
 * that arrive equal to the fds announced), and on any error every fd that
 * did arrive is closed. Errors: -errno, with a reason in err where the
 * function takes one.
 */
#ifndef FERRY_CPR_FDS_H
#define FERRY_CPR_FDS_H

#include <stddef.h>

#define CPR_MAX_FDS		1024
#define CPR_NAME_MAX		64	/* including the NUL */
#define CPR_MAX_BLOB		(16u << 20)

struct cpr_fds;

int cpr_fds_new(struct cpr_fds **out);
void cpr_fds_free(struct cpr_fds *r);

/* Borrow fd under name. -EEXIST (name or fd registered already: dup()
 * an fd that must go under two names), -ENAMETOOLONG, -E2BIG
 * (CPR_MAX_FDS), -EBADF (fd < 0). */
int cpr_fds_add(struct cpr_fds *r, const char *name, int fd);
/* The fd named, now the caller's; -ENOENT if there is none (or it was
 * taken already). */
int cpr_fds_take(struct cpr_fds *r, const char *name);
/* The same under the name prefix + suffix (a device's fds: "dev0." +
 * "sock"); -ENAMETOOLONG when that is too long. */
int cpr_fds_add_prefixed(struct cpr_fds *r, const char *prefix,
			 const char *suffix, int fd);
int cpr_fds_take_prefixed(struct cpr_fds *r, const char *prefix,
			  const char *suffix);
/* The fd named, still the registry's; -ENOENT. */
int cpr_fds_peek(const struct cpr_fds *r, const char *name);
unsigned cpr_fds_count(const struct cpr_fds *r);
/* Fds received but never taken (what a receiver did not expect). */
unsigned cpr_fds_untaken(const struct cpr_fds *r);

/* The blob travels with the fds (copied; at most CPR_MAX_BLOB). */
int cpr_fds_set_blob(struct cpr_fds *r, const void *blob, size_t len);
const void *cpr_fds_blob(const struct cpr_fds *r, size_t *len);

/* Over a connected AF_UNIX stream socket; each waits at most timeout_ms
 * for the peer (0: forever). */
int cpr_fds_send(const struct cpr_fds *r, int sock, unsigned timeout_ms);
int cpr_fds_recv(int sock, unsigned timeout_ms, struct cpr_fds **out,
		 char *err, size_t errlen);

/*
 * Across exec(): a memfd describing the registry (names, fd numbers, the
 * blob); the memfd and every registered fd lose FD_CLOEXEC. The new image
 * finds the memfd's number in an environment variable (the caller's
 * choice of name) and imports it; import closes the memfd. If the exec
 * fails, undo puts FD_CLOEXEC back and closes the memfd.
 */
int cpr_fds_export(const struct cpr_fds *r, int *memfd);
void cpr_fds_export_undo(const struct cpr_fds *r, int memfd);
int cpr_fds_import(int memfd, struct cpr_fds **out, char *err,
		   size_t errlen);

#endif /* FERRY_CPR_FDS_H */
