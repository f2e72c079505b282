// SPDX-License-Identifier: BSD-3-Clause
/*
 * ferryctl: command-line client of ferry-vmm's QMP socket.
 *
 * Exit status: 0 success, 1 the VMM answered with an error, 2 usage
 * error, 3 the socket could not be reached or spoke no QMP.
 */
#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "ferry/util.h"

#define EXIT_QMP_ERROR		1
#define EXIT_USAGE		2
#define EXIT_CONNECT		3
#define CTL_DEFAULT_TIMEOUT_S	30
#define CTL_MAX_MSG		(16 * MiB)
#define CTL_ID			"ferryctl"

struct ctl {
	int fd;
	int timeout_ms;
	json_tokener *tok;
	char buf[4096];
	size_t len, off;	/* unparsed bytes in buf */
	size_t pending;
};

static void usage(FILE *f)
{
	fprintf(f,
"Usage: ferryctl --qmp PATH [--json] [--timeout SEC] COMMAND\n"
"\n"
"Control a running ferry-vmm through its QMP socket.\n"
"\n"
"Commands:\n"
"  status        show whether the VM runs\n"
"  stop          pause the vCPUs\n"
"  cont          resume the vCPUs\n"
"  quit          shut the VMM down\n"
"  devices       list the PCI devices\n"
"  raw JSON      send one QMP command object, print the reply\n"
"\n"
"Options:\n"
"  -q, --qmp PATH       the VMM's QMP socket (unix:PATH also accepted)\n"
"  -j, --json           print the command's result as JSON\n"
"  -t, --timeout SEC    give up waiting for the VMM after SEC seconds (default %d)\n"
"  -h, --help           show this help\n"
"\n"
"Exit status: 0 ok, 1 the VMM returned an error, 2 usage error,\n"
"3 the socket is unreachable or not a QMP server.\n",
		CTL_DEFAULT_TIMEOUT_S);
}

static int fail(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(int status, const char *fmt, ...)
{
	va_list ap;

	fputs("ferryctl: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	if (status == EXIT_USAGE)
		fputs("Try 'ferryctl --help' for more information.\n", stderr);
	return status;
}

static int ctl_connect(struct ctl *c, const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };

	if (strlen(path) >= sizeof(sa.sun_path))
		return fail(EXIT_USAGE, "socket path too long: %s", path);
	strcpy(sa.sun_path, path);
	c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0)
		return fail(EXIT_CONNECT, "socket: %s", strerror(errno));
	if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		return fail(EXIT_CONNECT, "cannot connect to %s: %s", path,
			    strerror(errno));
	return 0;
}

/* Next message from the VMM, or NULL (message printed). */
static struct json_object *ctl_read(struct ctl *c)
{
	for (;;) {
		struct json_object *o;
		struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
		ssize_t n;
		int r;

		while (c->off < c->len) {
			enum json_tokener_error jerr;

			o = json_tokener_parse_ex(c->tok, c->buf + c->off,
						  (int)(c->len - c->off));
			jerr = json_tokener_get_error(c->tok);
			if (o) {
				c->off += json_tokener_get_parse_end(c->tok);
				json_tokener_reset(c->tok);
				c->pending = 0;
				return o;
			}
			if (jerr != json_tokener_continue) {
				fail(0, "bad JSON from the VMM: %s",
				     json_tokener_error_desc(jerr));
				return NULL;
			}
			c->pending += c->len - c->off;
			c->off = c->len;
			if (c->pending > CTL_MAX_MSG) {
				fail(0, "reply from the VMM too large");
				return NULL;
			}
		}
		c->off = c->len = 0;
		r = poll(&pfd, 1, c->timeout_ms);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			fail(0, r == 0 ? "timed out waiting for the VMM" :
			     "poll: %s", strerror(errno));
			return NULL;
		}
		n = read(c->fd, c->buf, sizeof(c->buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			fail(0, "the VMM closed the connection%s",
			     n < 0 ? " with an error" : "");
			return NULL;
		}
		c->len = (size_t)n;
	}
}

/* Next reply (skipping events), or NULL. */
static struct json_object *ctl_reply(struct ctl *c)
{
	struct json_object *o;

	while ((o = ctl_read(c))) {
		if (!json_object_is_type(o, json_type_object) ||
		    !json_object_object_get_ex(o, "event", NULL))
			return o;
		json_object_put(o);
	}
	return NULL;
}

static int ctl_send(struct ctl *c, struct json_object *o)
{
	const char *s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
	int ret;

	ret = fd_write_full(c->fd, s, strlen(s));
	if (!ret)
		ret = fd_write_full(c->fd, "\n", 1);
	if (ret)
		return fail(EXIT_CONNECT, "cannot send to the VMM: %s",
			    strerror(-ret));
	return 0;
}

/* Print an error reply; true if o was one. */
static bool ctl_report_error(struct json_object *o)
{
	struct json_object *e, *desc, *cls;

	if (!json_object_object_get_ex(o, "error", &e))
		return false;
	json_object_object_get_ex(e, "desc", &desc);
	json_object_object_get_ex(e, "class", &cls);
	fail(0, "%s (%s)", desc ? json_object_get_string(desc) : "error",
	     cls ? json_object_get_string(cls) : "unknown class");
	return true;
}

static int ctl_handshake(struct ctl *c)
{
	struct json_object *o, *cmd;
	int ret;

	o = ctl_read(c);
	if (!o)
		return EXIT_CONNECT;
	if (!json_object_is_type(o, json_type_object) ||
	    !json_object_object_get_ex(o, "QMP", NULL)) {
		json_object_put(o);
		return fail(EXIT_CONNECT, "no QMP greeting from the VMM");
	}
	json_object_put(o);
	cmd = json_object_new_object();
	json_object_object_add(cmd, "execute",
			       json_object_new_string("qmp_capabilities"));
	ret = ctl_send(c, cmd);
	json_object_put(cmd);
	if (ret)
		return ret;
	o = ctl_reply(c);
	if (!o)
		return EXIT_CONNECT;
	if (ctl_report_error(o)) {
		json_object_put(o);
		return EXIT_CONNECT;
	}
	json_object_put(o);
	return 0;
}

/* Run cmd; on success *ret_val holds a reference to "return". */
static int ctl_execute(struct ctl *c, struct json_object *cmd,
		       struct json_object **reply_out)
{
	struct json_object *o;
	int ret;

	ret = ctl_send(c, cmd);
	if (ret)
		return ret;
	o = ctl_reply(c);
	if (!o)
		return EXIT_CONNECT;
	*reply_out = o;
	if (!json_object_is_type(o, json_type_object))
		return fail(EXIT_CONNECT, "reply is not a JSON object");
	if (ctl_report_error(o))
		return EXIT_QMP_ERROR;
	return 0;
}

static void print_json(struct json_object *o)
{
	puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PRETTY |
					    JSON_C_TO_STRING_SPACED));
}

static void print_status(struct json_object *r)
{
	struct json_object *s, *run;

	json_object_object_get_ex(r, "status", &s);
	json_object_object_get_ex(r, "running", &run);
	printf("VM status: %s%s\n", s ? json_object_get_string(s) : "?",
	       run && json_object_get_boolean(run) ? "" : " (vCPUs not running)");
}

static void print_devices(struct json_object *r)
{
	size_t nb = json_object_is_type(r, json_type_array) ?
		    json_object_array_length(r) : 0;

	printf("%-5s %-10s %-12s %s\n", "SLOT", "VENDOR:DEV", "ID", "BACKEND");
	for (size_t b = 0; b < nb; b++) {
		struct json_object *bus = json_object_array_get_idx(r, b), *devs;

		if (!json_object_object_get_ex(bus, "devices", &devs) ||
		    !json_object_is_type(devs, json_type_array))
			continue;
		for (size_t i = 0; i < json_object_array_length(devs); i++) {
			struct json_object *d = json_object_array_get_idx(devs, i);
			struct json_object *slot, *id, *ven = NULL, *dev = NULL,
					   *qid, *vu, *sock = NULL, *ci, *desc = NULL;
			char backend[256];

			json_object_object_get_ex(d, "slot", &slot);
			if (json_object_object_get_ex(d, "id", &id)) {
				json_object_object_get_ex(id, "vendor", &ven);
				json_object_object_get_ex(id, "device", &dev);
			}
			json_object_object_get_ex(d, "qdev_id", &qid);
			if (json_object_object_get_ex(d, "vfio-user", &vu)) {
				json_object_object_get_ex(vu, "socket", &sock);
				snprintf(backend, sizeof(backend), "vfio-user %s",
					 sock ? json_object_get_string(sock) : "?");
			} else {
				if (json_object_object_get_ex(d, "class_info", &ci))
					json_object_object_get_ex(ci, "desc", &desc);
				snprintf(backend, sizeof(backend), "%s",
					 desc ? json_object_get_string(desc) : "-");
			}
			printf("%02x    %04x:%04x  %-12s %s\n",
			       slot ? json_object_get_int(slot) : 0,
			       ven ? json_object_get_int(ven) : 0xffff,
			       dev ? json_object_get_int(dev) : 0xffff,
			       qid && *json_object_get_string(qid) ?
			       json_object_get_string(qid) : "-", backend);
		}
	}
}

struct ctl_cmd {
	const char *name;
	const char *qmp;
	void (*print)(struct json_object *ret);
	const char *done;	/* human output when there is no printer */
};

static const struct ctl_cmd ctl_cmds[] = {
	{ "status", "query-status", print_status, NULL },
	{ "stop", "stop", NULL, "VM stopped" },
	{ "cont", "cont", NULL, "VM resumed" },
	{ "quit", "quit", NULL, "VMM shutting down" },
	{ "devices", "query-pci", print_devices, NULL },
};

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "qmp", required_argument, NULL, 'q' },
		{ "json", no_argument, NULL, 'j' },
		{ "timeout", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	struct ctl c = { .fd = -1, .timeout_ms = CTL_DEFAULT_TIMEOUT_S * 1000 };
	struct json_object *cmd = NULL, *reply = NULL, *ret_val;
	const struct ctl_cmd *cc = NULL;
	const char *path = NULL, *verb;
	bool json = false;
	int opt, status;
	long t;
	char *end;

	opterr = 0;
	while ((opt = getopt_long(argc, argv, ":q:jt:h", longopts, NULL)) != -1) {
		switch (opt) {
		case 'q':
			path = strncmp(optarg, "unix:", 5) ? optarg : optarg + 5;
			break;
		case 'j':
			json = true;
			break;
		case 't':
			errno = 0;
			t = strtol(optarg, &end, 10);
			if (errno || end == optarg || *end || t < 1 || t > 3600)
				return fail(EXIT_USAGE, "--timeout '%s': seconds from 1 to 3600",
					    optarg);
			c.timeout_ms = (int)t * 1000;
			break;
		case 'h':
			usage(stdout);
			return 0;
		case ':':
			return fail(EXIT_USAGE, "option '%s' needs an argument",
				    argv[optind - 1]);
		default:
			return fail(EXIT_USAGE, "unknown option '%s'",
				    argv[optind - 1]);
		}
	}
	if (!path || !*path)
		return fail(EXIT_USAGE, "--qmp PATH is required");
	if (optind >= argc)
		return fail(EXIT_USAGE, "no command given");
	verb = argv[optind++];
	if (!strcmp(verb, "raw")) {
		enum json_tokener_error jerr;

		if (optind != argc - 1)
			return fail(EXIT_USAGE, "raw takes exactly one JSON argument");
		cmd = json_tokener_parse_verbose(argv[optind], &jerr);
		if (!cmd || !json_object_is_type(cmd, json_type_object)) {
			json_object_put(cmd);
			return fail(EXIT_USAGE, "raw: argument is not a JSON object%s%s",
				    cmd ? "" : ": ",
				    cmd ? "" : json_tokener_error_desc(jerr));
		}
	} else {
		for (size_t i = 0; i < ARRAY_SIZE(ctl_cmds); i++)
			if (!strcmp(ctl_cmds[i].name, verb))
				cc = &ctl_cmds[i];
		if (!cc)
			return fail(EXIT_USAGE, "unknown command '%s'", verb);
		if (optind != argc)
			return fail(EXIT_USAGE, "'%s' takes no argument", verb);
		cmd = json_object_new_object();
		json_object_object_add(cmd, "execute",
				       json_object_new_string(cc->qmp));
		json_object_object_add(cmd, "id", json_object_new_string(CTL_ID));
	}

	c.tok = json_tokener_new();
	if (!c.tok) {
		status = fail(EXIT_CONNECT, "out of memory");
		goto out;
	}
	status = ctl_connect(&c, path);
	if (status)
		goto out;
	status = ctl_handshake(&c);
	if (status)
		goto out;
	status = ctl_execute(&c, cmd, &reply);
	if (!cc) {
		/* raw: the whole reply, error or not, for scripts. */
		if (reply)
			print_json(reply);
		goto out;
	}
	if (status)
		goto out;
	if (!json_object_object_get_ex(reply, "return", &ret_val)) {
		status = fail(EXIT_CONNECT, "reply has neither return nor error");
		goto out;
	}
	if (json)
		print_json(ret_val);
	else if (cc->print)
		cc->print(ret_val);
	else
		puts(cc->done);
out:
	json_object_put(reply);
	json_object_put(cmd);
	if (c.tok)
		json_tokener_free(c.tok);
	close_safely(&c.fd);
	return status;
}
