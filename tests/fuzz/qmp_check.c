// SPDX-License-Identifier: BSD-3-Clause
/*
 * Scripted QMP checks without KVM: vmm/qmp.c and vmm/migration.c with
 * libferry's real engine, around the QMP fuzz target's VM stand-in
 * (fuzz_qmp.c), served from a thread while this one plays a client.
 * What it holds ferry-vmm to:
 * - migrate-set-parameters applies all of its settings or none, and
 *   refuses an integer json-c would saturate instead of taking INT64_MAX;
 * - a command name with a NUL inside is no command;
 * - migrate takes QEMU's detach and refuses resume; cpr-exec without a
 *   command is refused at migrate, before anything stops;
 * - 64 connections that never negotiate do not push out the client
 *   that did (it still gets answers).
 * Exit 0 pass, 1 fail.
 */
#include <errno.h>
#include <json-c/json.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "ferry/util.h"
#include "fuzz_qmp.h"
#include "qmp.h"

#define WAIT_MS		5000

static atomic_bool stop;
static int failures;

#define CHECK(cond, ...)						\
	do {								\
		if (!(cond)) {						\
			failures++;					\
			printf("FAIL %s:%d: ", __func__, __LINE__);	\
			printf(__VA_ARGS__);				\
			printf("\n");					\
		}							\
	} while (0)

static void *serve(void *arg)
{
	(void)arg;
	while (!atomic_load(&stop))
		fzq_serve(20);
	return NULL;
}

struct client {
	int fd;
	char buf[65536];
	size_t len;
};

static int client_open(struct client *c)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };

	c->len = 0;
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", fzq_socket());
	c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0 || connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)))
		return -errno;
	return 0;
}

/* The next message that is not an event, or NULL after WAIT_MS. */
static struct json_object *client_reply(struct client *c)
{
	for (;;) {
		char *nl = memchr(c->buf, '\n', c->len);
		struct pollfd p = { .fd = c->fd, .events = POLLIN };
		ssize_t n;

		if (nl) {
			struct json_object *o;
			size_t line = (size_t)(nl - c->buf) + 1;

			*nl = 0;
			o = json_tokener_parse(c->buf);
			memmove(c->buf, c->buf + line, c->len - line);
			c->len -= line;
			if (o && json_object_object_get_ex(o, "event", NULL)) {
				json_object_put(o);
				continue;
			}
			return o;
		}
		if (poll(&p, 1, WAIT_MS) != 1)
			return NULL;
		n = read(c->fd, c->buf + c->len, sizeof(c->buf) - c->len - 1);
		if (n <= 0)
			return NULL;
		c->len += (size_t)n;
	}
}

/* Send raw text (one message and its newline); the reply. */
static struct json_object *client_raw(struct client *c, const char *text)
{
	if (fd_write_full(c->fd, text, strlen(text)) ||
	    fd_write_full(c->fd, "\n", 1))
		return NULL;
	return client_reply(c);
}

/* A member of the reply's error object ("class", "desc"), or dflt for
 * a return. */
static const char *err_member(struct json_object *r, const char *key,
			      const char *dflt)
{
	struct json_object *e, *v;

	if (!r || !json_object_object_get_ex(r, "error", &e) ||
	    !json_object_object_get_ex(e, key, &v))
		return dflt;
	return json_object_get_string(v);
}

static const char *err_class(struct json_object *r)
{
	return err_member(r, "class", NULL);
}

static const char *err_desc(struct json_object *r)
{
	return err_member(r, "desc", "");
}

static bool is_return(struct json_object *r)
{
	return r && json_object_object_get_ex(r, "return", NULL);
}

static int64_t downtime_limit(struct client *c)
{
	struct json_object *r = client_raw(c,
		"{\"execute\":\"query-migrate-parameters\"}");
	struct json_object *ret, *v;
	int64_t x = -1;

	if (r && json_object_object_get_ex(r, "return", &ret) &&
	    json_object_object_get_ex(ret, "downtime-limit", &v))
		x = json_object_get_int64(v);
	json_object_put(r);
	return x;
}

static void check_parameters(struct client *c)
{
	int64_t before = downtime_limit(c);
	struct json_object *r;

	CHECK(before >= 0, "no downtime-limit in query-migrate-parameters");
	r = client_raw(c, "{\"execute\":\"migrate-set-parameters\","
		       "\"arguments\":{\"downtime-limit\":777,"
		       "\"max-bandwidth\":18446744073709551615}}");
	CHECK(err_class(r) && strstr(err_desc(r), "out of range"),
	      "max-bandwidth 2^64-1 not refused: %s",
	      r ? json_object_to_json_string(r) : "no reply");
	json_object_put(r);
	CHECK(downtime_limit(c) == before, "downtime-limit applied from a "
	      "refused command");

	r = client_raw(c, "{\"execute\":\"migrate-set-parameters\","
		       "\"arguments\":{\"downtime-limit\":777,"
		       "\"mode\":\"bogus\"}}");
	CHECK(err_class(r), "mode bogus accepted");
	json_object_put(r);
	CHECK(downtime_limit(c) == before, "downtime-limit applied from a "
	      "refused command (mode)");

	r = client_raw(c, "{\"execute\":\"migrate-set-parameters\","
		       "\"arguments\":{\"downtime-limit\":777}}");
	CHECK(is_return(r), "a valid downtime-limit refused: %s",
	      err_desc(r));
	json_object_put(r);
	CHECK(downtime_limit(c) == 777, "downtime-limit not applied");
}

static void check_names_and_migrate(struct client *c)
{
	struct json_object *r;

	r = client_raw(c, "{\"execute\":\"query-status\\u0000junk\"}");
	CHECK(err_class(r) && !strcmp(err_class(r), "CommandNotFound"),
	      "a name with a NUL ran a command: %s",
	      r ? json_object_to_json_string(r) : "no reply");
	json_object_put(r);

	r = client_raw(c, "{\"execute\":\"migrate\",\"arguments\":"
		       "{\"uri\":\"tcp:127.0.0.1:1\",\"resume\":true}}");
	CHECK(err_class(r) && strstr(err_desc(r), "postcopy"),
	      "resume accepted: %s", err_desc(r));
	json_object_put(r);
	/* detach is an argument migrate takes (the stand-in VM waits for
	 * an incoming migration, which is what refuses it here). */
	r = client_raw(c, "{\"execute\":\"migrate\",\"arguments\":"
		       "{\"uri\":\"tcp:127.0.0.1:1\",\"detach\":true}}");
	CHECK(err_class(r) && !strstr(err_desc(r), "detach"),
	      "detach refused: %s", err_desc(r));
	json_object_put(r);

	r = client_raw(c, "{\"execute\":\"migrate-set-parameters\","
		       "\"arguments\":{\"mode\":\"cpr-exec\"}}");
	CHECK(is_return(r), "mode cpr-exec refused: %s", err_desc(r));
	json_object_put(r);
	r = client_raw(c, "{\"execute\":\"migrate\",\"arguments\":"
		       "{\"uri\":\"file:/nonexistent/ferry-qmp-check\"}}");
	CHECK(err_class(r) && strstr(err_desc(r), "cpr-exec-command"),
	      "cpr-exec without a command not refused at migrate: %s",
	      err_desc(r));
	json_object_put(r);
	r = client_raw(c, "{\"execute\":\"migrate-set-parameters\","
		       "\"arguments\":{\"mode\":\"normal\"}}");
	json_object_put(r);
}

static void check_eviction(struct client *main_c)
{
	static struct client flood[QMP_MAX_CLIENTS];
	struct json_object *r;

	for (unsigned i = 0; i < QMP_MAX_CLIENTS; i++) {
		CHECK(client_open(&flood[i]) == 0, "connect %u", i);
		/* Served in order: its greeting says it was accepted. */
		r = client_reply(&flood[i]);
		CHECK(r && json_object_object_get_ex(r, "QMP", NULL),
		      "no greeting for connection %u", i);
		json_object_put(r);
	}
	r = client_raw(main_c, "{\"execute\":\"query-status\"}");
	CHECK(is_return(r), "the negotiated client was pushed out by %u "
	      "that never negotiated", QMP_MAX_CLIENTS);
	json_object_put(r);
	for (unsigned i = 0; i < QMP_MAX_CLIENTS; i++)
		close(flood[i].fd);
}

int main(void)
{
	struct client c;
	struct json_object *r;
	pthread_t t;

	signal(SIGPIPE, SIG_IGN);
	fzq_reset();
	if (pthread_create(&t, NULL, serve, NULL))
		return 1;
	if (client_open(&c)) {
		printf("FAIL: cannot connect to %s\n", fzq_socket());
		return 1;
	}
	r = client_reply(&c);
	CHECK(r && json_object_object_get_ex(r, "QMP", NULL), "no greeting");
	json_object_put(r);
	r = client_raw(&c, "{\"execute\":\"qmp_capabilities\"}");
	CHECK(is_return(r), "negotiation: %s", err_desc(r));
	json_object_put(r);

	check_parameters(&c);
	check_names_and_migrate(&c);
	check_eviction(&c);

	close(c.fd);
	atomic_store(&stop, true);
	pthread_join(t, NULL);
	if (failures) {
		printf("%d check(s) failed\n", failures);
		return 1;
	}
	printf("qmp-check: all checks passed\n");
	return 0;
}
