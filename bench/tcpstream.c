// SPDX-License-Identifier: BSD-3-Clause
/*
 * tcpstream: the baselines of `make bench-compare` (bench/compare.py).
 *
 *   tcpstream tcp [BYTES [CHUNK]]
 *	one TCP stream on loopback: a forked reader accepts on 127.0.0.1
 *	(kernel-chosen port) and discards everything; this process writes
 *	BYTES (default 2 GiB) in write()s of CHUNK (default 1 MiB), shuts
 *	its side down and waits for the reader to report what it received.
 *	The time runs from the connect to that report, so it covers the
 *	reader's consumption too: what one migration stream could move at
 *	best on this host.
 *
 *   tcpstream write PATH [BYTES [CHUNK]]
 *	write BYTES (default 1 GiB) to a new file PATH in write()s of CHUNK,
 *	fsync, close, then unlink it. On /dev/shm this is the cost of
 *	allocating and filling fresh shared memory, as a destination VMM
 *	does for the RAM it receives.
 *
 * Output: one JSON line on stdout,
 *   {"mode": "tcp", "bytes": N, "chunk": N, "seconds": S, "mb_s": X}
 * (MB = 10^6 bytes). Exit 0, or 1 with a message on stderr. Every wait
 * is bounded: an alarm ends the program after 120 s, and the reader dies
 * with its parent (PR_SET_PDEATHSIG).
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>

#define MiB (1024ULL * 1024ULL)
#define GiB (1024ULL * MiB)
#define ALARM_S 120

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int die(const char *what)
{
	fprintf(stderr, "tcpstream: %s: %s\n", what, strerror(errno));
	return 1;
}

static int parse_size(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	v = strtoull(s, &end, 0);
	if (errno || end == s)
		return -1;
	switch (*end) {
	case 'k': case 'K': v *= 1024; end++; break;
	case 'm': case 'M': v *= MiB; end++; break;
	case 'g': case 'G': v *= GiB; end++; break;
	}
	if (*end || v == 0)
		return -1;
	*out = v;
	return 0;
}

static int write_all(int fd, const char *buf, size_t len)
{
	while (len) {
		ssize_t n = write(fd, buf, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

static void report(const char *mode, uint64_t bytes, uint64_t chunk,
		   double secs)
{
	printf("{\"mode\": \"%s\", \"bytes\": %llu, \"chunk\": %llu, "
	       "\"seconds\": %.6f, \"mb_s\": %.1f}\n", mode,
	       (unsigned long long)bytes, (unsigned long long)chunk, secs,
	       bytes / secs / 1e6);
	fflush(stdout);
}

/* The reader: accept one connection, discard until EOF, send the count
 * back. Never returns. */
static void reader(int lfd, uint64_t chunk)
{
	uint64_t total = 0;
	char *buf = malloc(chunk);
	int fd;

	if (!buf)
		_exit(1);
	fd = accept(lfd, NULL, NULL);
	if (fd < 0)
		_exit(1);
	for (;;) {
		ssize_t n = read(fd, buf, chunk);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			_exit(1);
		if (n == 0)
			break;
		total += (uint64_t)n;
	}
	if (write_all(fd, (const char *)&total, sizeof(total)))
		_exit(1);
	close(fd);
	_exit(0);
}

static int run_tcp(uint64_t bytes, uint64_t chunk)
{
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t salen = sizeof(sa);
	uint64_t sent = 0, got = 0;
	size_t have = 0;
	pid_t parent = getpid(), pid;
	int lfd, fd, status;
	double t0, t1;
	char *buf;

	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (lfd < 0)
		return die("socket");
	if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) ||
	    listen(lfd, 1) ||
	    getsockname(lfd, (struct sockaddr *)&sa, &salen))
		return die("listen on 127.0.0.1");

	pid = fork();
	if (pid < 0)
		return die("fork");
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(1);
		reader(lfd, chunk);
	}
	close(lfd);

	buf = malloc(chunk);
	if (!buf) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		fprintf(stderr, "tcpstream: out of memory\n");
		return 1;
	}
	/* Not zeros: nothing on the way may treat the data specially. */
	for (uint64_t i = 0; i < chunk; i++)
		buf[i] = (char)(i * 131 + 7);

	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		goto fail;
	t0 = now_s();
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)))
		goto fail;
	while (sent < bytes) {
		uint64_t n = bytes - sent < chunk ? bytes - sent : chunk;

		if (write_all(fd, buf, n))
			goto fail;
		sent += n;
	}
	if (shutdown(fd, SHUT_WR))
		goto fail;
	while (have < sizeof(got)) {
		ssize_t n = read(fd, (char *)&got + have, sizeof(got) - have);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			goto fail;
		have += (size_t)n;
	}
	t1 = now_s();
	close(fd);
	if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) ||
	    WEXITSTATUS(status) != 0 || got != bytes) {
		fprintf(stderr, "tcpstream: the reader received %llu of %llu "
			"bytes\n", (unsigned long long)got,
			(unsigned long long)bytes);
		free(buf);
		return 1;
	}
	free(buf);
	report("tcp", bytes, chunk, t1 - t0);
	return 0;
fail:
	status = die("tcp stream");
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	free(buf);
	return status;
}

static int run_write(const char *path, uint64_t bytes, uint64_t chunk)
{
	uint64_t done = 0;
	double t0, t1;
	char *buf = malloc(chunk);
	int fd, rc = 0;

	if (!buf) {
		fprintf(stderr, "tcpstream: out of memory\n");
		return 1;
	}
	for (uint64_t i = 0; i < chunk; i++)
		buf[i] = (char)(i * 131 + 7);
	t0 = now_s();
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		free(buf);
		return die(path);
	}
	while (done < bytes) {
		uint64_t n = bytes - done < chunk ? bytes - done : chunk;

		if (write_all(fd, buf, n)) {
			rc = die("write");
			break;
		}
		done += n;
	}
	if (!rc && fsync(fd))
		rc = die("fsync");
	if (close(fd) && !rc)
		rc = die("close");
	t1 = now_s();
	unlink(path);
	free(buf);
	if (!rc)
		report("write", bytes, chunk, t1 - t0);
	return rc;
}

static void on_alarm(int sig)
{
	static const char msg[] = "tcpstream: timed out\n";

	(void)sig;
	if (write(2, msg, sizeof(msg) - 1) < 0) {
		/* nothing left to tell */
	}
	_exit(1);
}

static int usage(void)
{
	fprintf(stderr, "usage: tcpstream tcp [BYTES [CHUNK]]\n"
		"       tcpstream write PATH [BYTES [CHUNK]]\n"
		"sizes take a k/m/g suffix; defaults: tcp 2g, write 1g, "
		"chunk 1m\n");
	return 2;
}

int main(int argc, char **argv)
{
	uint64_t bytes, chunk = MiB;
	int a = 2;

	if (argc < 2)
		return usage();
	signal(SIGPIPE, SIG_IGN);
	signal(SIGALRM, on_alarm);
	alarm(ALARM_S);
	if (!strcmp(argv[1], "tcp")) {
		bytes = 2 * GiB;
	} else if (!strcmp(argv[1], "write") && argc >= 3) {
		bytes = GiB;
		a = 3;
	} else {
		return usage();
	}
	if (argc > a + 2 ||
	    (argc > a && parse_size(argv[a], &bytes)) ||
	    (argc > a + 1 && parse_size(argv[a + 1], &chunk)))
		return usage();
	if (!strcmp(argv[1], "tcp"))
		return run_tcp(bytes, chunk);
	return run_write(argv[2], bytes, chunk);
}
