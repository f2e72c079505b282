/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Migration channels: a byte stream between source and destination behind
 * one ops table, so the stream code does not care whether it runs over
 * TCP, a UNIX socket or a file.
 *
 * URIs (QEMU's spelling where the concept is the same):
 *	tcp:HOST:PORT	unix:PATH	file:PATH
 * The source connects (mig_channel_connect); the destination listens
 * (mig_listener_open) and accepts one channel. A file channel is
 * write-only at the source and read-only at the destination, and has no
 * return path.
 *
 * read_full/write_full move exactly len bytes or fail: 0, -EPIPE on EOF,
 * -ETIMEDOUT when the channel's timeout expires without progress (so a
 * dead peer cannot hang a migration forever), or -errno. shutdown() makes
 * blocked calls on the channel return (used by cancel, from any thread).
 */
#ifndef FERRY_MIG_CHANNEL_H
#define FERRY_MIG_CHANNEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum mig_uri_kind { MIG_URI_TCP, MIG_URI_UNIX, MIG_URI_FILE };

struct mig_uri {
	enum mig_uri_kind kind;
	char host[256];
	char port[16];
	char path[108];
};

/* Parse a URI; -EINVAL with a reason in err (errlen bytes). */
int mig_uri_parse(const char *uri, struct mig_uri *out, char *err,
		  size_t errlen);
/*
 * QEMU's MigrationChannel address, as QMP's migrate "channels" and
 * --incoming '{"channel-type": ...}' give it: {"transport": "socket",
 * "type": "unix", "path": P} | {"transport": "socket", "type": "inet",
 * "host": H, "port": N} | {"transport": "file", "filename": F} -- as a
 * URI (unix:P, tcp:H:N, file:F), then checked like one. The channel
 * object {"channel-type": "main"|"cpr", "addr": {...}} gives its type
 * too (*cpr). -EINVAL with a reason.
 */
struct json_object;
int mig_uri_from_addr(struct json_object *addr, char *uri, size_t len,
		      char *err, size_t errlen);
int mig_uri_from_channel(struct json_object *chan, bool *cpr, char *uri,
			 size_t len, char *err, size_t errlen);

struct mig_channel;

struct iovec;

struct mig_channel_ops {
	const char *name;
	int (*read_full)(struct mig_channel *ch, void *buf, size_t len);
	/* Optional: read_full into several buffers (iov is consumed). */
	int (*readv_full)(struct mig_channel *ch, struct iovec *iov, int n);
	int (*write_full)(struct mig_channel *ch, const void *buf, size_t len);
	/* Optional: write_full of several buffers (iov is consumed). */
	int (*writev_full)(struct mig_channel *ch, struct iovec *iov, int n);
	void (*shutdown)(struct mig_channel *ch);
	/* Optional: only reads return (writes still go); else shutdown. */
	void (*shutdown_read)(struct mig_channel *ch);
	void (*close)(struct mig_channel *ch);
};

struct mig_channel {
	const struct mig_channel_ops *ops;
	int fd;
	bool has_return_path;
	/* Without progress for this long a call fails with -ETIMEDOUT; 0 =
	 * wait forever. Separate, because the source's return-path reader
	 * legitimately waits as long as the migration lasts, while its
	 * writes must notice a stalled destination. */
	unsigned timeout_ms;		/* writes */
	unsigned read_timeout_ms;	/* reads */
	/* CLOCK_MONOTONIC ns past which every call fails with -ETIMEDOUT,
	 * progress or not (a phase with a time budget); 0 = none. */
	uint64_t deadline_ns;
	uint64_t bytes_read;
	uint64_t bytes_written;
	/* When bytes last moved (clock_ns()); read with __atomic_load_n
	 * from other threads. */
	uint64_t last_io_ns;
};

int mig_channel_connect(const struct mig_uri *uri, unsigned timeout_ms,
			struct mig_channel **out);
/* Wrap an existing connected stream fd (takes ownership). */
int mig_channel_from_fd(int fd, bool is_socket, unsigned timeout_ms,
			struct mig_channel **out);

struct mig_listener;
/* acc (NULL: private, see ferry/util.h) says who may connect to a
 * unix: listener; a peer it does not allow is refused at accept. */
struct sock_access;
int mig_listener_open(const struct mig_uri *uri,
		      const struct sock_access *acc, struct mig_listener **out);
/* Wait up to timeout_ms (0 = forever) for the source: the first
 * connection, whatever it sends (-EACCES: a peer acc does not allow).
 * A destination that must survive strangers uses mig_accept_source(). */
int mig_listener_accept(struct mig_listener *l, unsigned timeout_ms,
			struct mig_channel **out);
/*
 * The destination's front door: accept connections on l until one sends
 * a valid header of the kind wanted -- a migration stream's, or with
 * multifd a multifd channel's (MIG_MF_MAGIC) -- within hello_ms of
 * connecting (a total, not a per-byte, deadline), looking at up to
 * MIG_ACCEPT_PENDING at once, so that neither junk nor a peer that
 * trickles bytes can keep the real source out. Refused peers are logged
 * and closed. Those of the other kind, or still saying their hello when
 * one wins, stay at the door for the next call (a multifd source's
 * channels may arrive before its main one), until mig_listener_close().
 * 0 with *out (the header consumed; its minor version in *minor),
 * -ETIMEDOUT after timeout_ms (0: wait forever), or -errno (-EINTR/
 * -EBADF: the listener was shut down; -EINVAL for a file:
 * mig_listener_accept() it).
 */
#define MIG_ACCEPT_PENDING	16
#define MIG_HELLO_TIMEOUT_MS	10000
int mig_accept_source(struct mig_listener *l, bool multifd,
		      unsigned hello_ms, unsigned timeout_ms,
		      struct mig_channel **out, uint16_t *minor);
/* The listening fd (for poll loops); -1 for files. */
int mig_listener_fd(struct mig_listener *l);
const struct sock_access *mig_listener_access(struct mig_listener *l);
const struct mig_uri *mig_listener_uri(struct mig_listener *l);
void mig_listener_close(struct mig_listener *l);

static inline int mig_read(struct mig_channel *ch, void *buf, size_t len)
{
	return ch->ops->read_full(ch, buf, len);
}

static inline int mig_write(struct mig_channel *ch, const void *buf,
			    size_t len)
{
	return ch->ops->write_full(ch, buf, len);
}

/* Exactly the iov's bytes, in one call where the transport can. */
int mig_readv(struct mig_channel *ch, struct iovec *iov, int n);
/* All the iov's bytes, in one call where the transport can (iov is
 * consumed). */
int mig_writev(struct mig_channel *ch, struct iovec *iov, int n);

/* Bytes written but still queued in the kernel for the peer (socket send
 * queue); 0 for files or when unknown. They will take their time on the
 * wire after the guest stops, so they count as remaining data. */
uint64_t mig_channel_unsent(struct mig_channel *ch);

void mig_channel_shutdown(struct mig_channel *ch);
void mig_channel_shutdown_read(struct mig_channel *ch);
void mig_channel_close(struct mig_channel *ch);

#endif /* FERRY_MIG_CHANNEL_H */
