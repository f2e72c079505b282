/* SPDX-License-Identifier: BSD-3-Clause */
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ferry/util.h"
#include "ferry/vfu_caps.h"
#include "proto_util.h"

int tu_failures;

#define TU_POLL_STEP_MS	10
#define TU_MAX_ARGS	16

static void sleep_ms(unsigned int ms)
{
	struct timespec ts = { .tv_sec = ms / 1000,
			       .tv_nsec = (long)(ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

int tu_mkdtemp(char *dir)
{
	strcpy(dir, "/tmp/ferry-proto-XXXXXX");
	return mkdtemp(dir) ? 0 : -errno;
}

int tu_server_start_in(struct tu_server *s, const char *dir, const char *name,
		       const char *bin, const char *const *args)
{
	const char *argv[TU_MAX_ARGS + 3];
	uint64_t deadline;
	int n = 0;

	snprintf(s->dir, sizeof(s->dir), "%s", dir);
	snprintf(s->sock, sizeof(s->sock), "%s/%s", dir, name);
	argv[n++] = bin;
	argv[n++] = s->sock;
	for (int i = 0; args && args[i] && i < TU_MAX_ARGS; i++)
		argv[n++] = args[i];
	argv[n] = NULL;

	s->pid = fork();
	if (s->pid < 0)
		return -errno;
	if (s->pid == 0) {
		/* Die with the test, so no server outlives a crash. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		execv(bin, (char *const *)argv);
		_exit(127);
	}
	deadline = clock_ns() + TU_WAIT_MS * 1000000ull;
	while (clock_ns() < deadline) {
		int status, fd;

		if (waitpid(s->pid, &status, WNOHANG) == s->pid) {
			s->pid = -1;
			return -ECHILD;
		}
		fd = vfu_sock_connect(s->sock);
		if (fd >= 0) {
			/* The probe connection is a client too: let the
			 * server see it leave before the real one comes. */
			close(fd);
			return 0;
		}
		sleep_ms(TU_POLL_STEP_MS);
	}
	tu_server_kill(s);
	return -ETIMEDOUT;
}

int tu_server_start(struct tu_server *s, const char *bin,
		    const char *const *args)
{
	char dir[64];
	int ret;

	ret = tu_mkdtemp(dir);
	if (ret)
		return ret;
	ret = tu_server_start_in(s, dir, "dev.sock", bin, args);
	if (ret)
		rmdir(dir);
	return ret;
}

static int reap_bounded(pid_t pid, int *status)
{
	uint64_t deadline = clock_ns() + TU_WAIT_MS * 1000000ull;

	while (clock_ns() < deadline) {
		pid_t r = waitpid(pid, status, WNOHANG);

		if (r == pid || (r < 0 && errno != EINTR))
			return r == pid ? 0 : -errno;
		sleep_ms(TU_POLL_STEP_MS);
	}
	return -ETIMEDOUT;
}

int tu_server_stop(struct tu_server *s)
{
	int status = -1;

	if (s->pid <= 0)
		return -1;
	kill(s->pid, SIGTERM);
	if (reap_bounded(s->pid, &status)) {
		kill(s->pid, SIGKILL);
		waitpid(s->pid, &status, 0);
	}
	s->pid = -1;
	return status;
}

void tu_server_kill(struct tu_server *s)
{
	int status;

	if (s->pid <= 0)
		return;
	kill(s->pid, SIGKILL);
	waitpid(s->pid, &status, 0);
	s->pid = -1;
}

void tu_rmdir(const char *dir, const char *sock)
{
	if (sock && sock[0])
		unlink(sock);
	if (dir && dir[0])
		rmdir(dir);
}

int tu_count_fds(pid_t pid)
{
	char path[64];
	struct dirent *de;
	DIR *d;
	int n = 0;

	snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
	d = opendir(path);
	if (!d)
		return -errno;
	while ((de = readdir(d)))
		if (de->d_name[0] != '.')
			n++;
	closedir(d);
	return n;
}

int tu_settled_fds(pid_t pid)
{
	uint64_t deadline = clock_ns() + TU_WAIT_MS * 1000000ull;
	int last = tu_count_fds(pid);

	while (clock_ns() < deadline) {
		int n;

		sleep_ms(50);
		n = tu_count_fds(pid);
		if (n == last)
			break;
		last = n;
	}
	return last;
}

int tu_wait_fds(pid_t pid, int want)
{
	uint64_t deadline = clock_ns() + TU_WAIT_MS * 1000000ull;
	int n;

	for (;;) {
		n = tu_count_fds(pid);
		if (n == want || clock_ns() >= deadline)
			return n;
		sleep_ms(TU_POLL_STEP_MS);
	}
}

int tu_raw_connect(const char *path, struct vfu_conn *conn)
{
	int fd = vfu_sock_connect(path);

	if (fd < 0)
		return fd;
	vfu_conn_init_sock(conn, fd);
	return 0;
}

int tu_raw_write(struct vfu_conn *conn, const void *buf, size_t len,
		 const int *fds, size_t nr_fds)
{
	union {
		char buf[CMSG_SPACE(sizeof(int) * VFU_MAX_MSG_FDS_LIMIT)];
		struct cmsghdr align;
	} ctrl;
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	ssize_t n;

	if (nr_fds > VFU_MAX_MSG_FDS_LIMIT)
		return -EINVAL;
	if (nr_fds) {
		struct cmsghdr *c;

		memset(ctrl.buf, 0, sizeof(ctrl.buf));
		mh.msg_control = ctrl.buf;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * nr_fds);
		c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int) * nr_fds);
		memcpy(CMSG_DATA(c), fds, sizeof(int) * nr_fds);
	}
	n = sendmsg(conn->fd, &mh, MSG_NOSIGNAL);
	if (n < 0)
		return -errno;
	if ((size_t)n != len)
		return fd_write_full(conn->fd, (const char *)buf + n,
				     len - (size_t)n);
	return 0;
}

static uint16_t tu_next_id = 0x100;

int tu_raw_send(struct vfu_conn *conn, uint16_t id, uint16_t cmd,
		uint32_t flags, const void *payload, size_t len,
		const int *fds, size_t nr_fds)
{
	struct vfu_hdr h = { .msg_id = id, .cmd = cmd, .flags = flags };
	struct iovec iov = { .iov_base = (void *)payload, .iov_len = len };

	return vfu_conn_send(conn, &h, &iov, len ? 1 : 0, fds, nr_fds);
}

int tu_raw_recv(struct vfu_conn *conn, struct vfu_msg *msg)
{
	struct pollfd pfd = { .fd = conn->fd, .events = POLLIN };
	int ret;

	memset(msg, 0, sizeof(*msg));
	do {
		ret = poll(&pfd, 1, TU_WAIT_MS);
	} while (ret < 0 && errno == EINTR);
	if (ret < 0)
		return -errno;
	if (ret == 0)
		return -ETIMEDOUT;
	return vfu_conn_recv(conn, msg);
}

int tu_raw_call(struct vfu_conn *conn, uint16_t cmd, const void *payload,
		size_t len, const int *fds, size_t nr_fds,
		struct vfu_msg *reply)
{
	uint16_t id = tu_next_id++;
	struct vfu_msg msg;
	int ret;

	ret = tu_raw_send(conn, id, cmd, VFU_F_TYPE_COMMAND, payload, len,
			  fds, nr_fds);
	if (ret)
		return ret;
	ret = tu_raw_recv(conn, &msg);
	if (ret)
		return ret;
	if ((msg.hdr.flags & VFU_F_TYPE_MASK) != VFU_F_TYPE_REPLY ||
	    msg.hdr.msg_id != id || msg.hdr.cmd != cmd) {
		fprintf(stderr, "tu_raw_call: reply mismatch id %u/%u cmd %u/%u\n",
			msg.hdr.msg_id, id, msg.hdr.cmd, cmd);
		vfu_msg_release(&msg);
		return -EPROTO;
	}
	if (msg.hdr.flags & VFU_F_ERROR) {
		ret = -(int)msg.hdr.error_no;
		if (!ret)
			ret = -EPROTO;
	}
	if (reply && !ret)
		*reply = msg;
	else
		vfu_msg_release(&msg);
	return ret;
}

int tu_raw_negotiate(struct vfu_conn *conn)
{
	struct vfu_caps caps;
	struct vfu_version v = { VFU_VERSION_MAJOR, VFU_VERSION_MINOR };
	uint8_t buf[VFU_MAX_JSON_LEN + sizeof(v)];
	char *json;
	size_t jl;
	int ret;

	vfu_caps_defaults(&caps);
	caps.max_msg_fds = 16;
	json = vfu_caps_format(&caps);
	if (!json)
		return -ENOMEM;
	jl = strlen(json) + 1;
	memcpy(buf, &v, sizeof(v));
	memcpy(buf + sizeof(v), json, jl);
	free(json);
	ret = tu_raw_call(conn, VFU_CMD_VERSION, buf, sizeof(v) + jl, NULL, 0,
			  NULL);
	return ret;
}
