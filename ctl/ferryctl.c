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
#include <signal.h>
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
	/* While waiting for one reply: when --timeout runs out, however
	 * many events arrive meanwhile (0: each read gets timeout_ms). */
	uint64_t deadline_ns;
	json_tokener *tok;
	char buf[4096];
	size_t len, off;	/* unparsed bytes in buf */
	size_t pending;
	bool eof_expected;	/* cpr-exec: the VMM becomes another */
	bool eof;
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
"  reset         reset the VM: devices reset, guest RAM cleared, the\n"
"                kernel booted again (a stopped VM stays stopped)\n"
"  quit          shut the VMM down\n"
"  devices       list the PCI devices\n"
"  raw JSON      send one QMP command object, print the reply\n"
"  migrate URI   live-migrate the VM to URI (tcp:HOST:PORT, unix:PATH,\n"
"                file:PATH) with live progress and a final summary\n"
"  migrate-status  show the current or last migration\n"
"  migrate-cancel  cancel the running migration\n"
"  migrate-incoming URI  give a '--incoming defer' VMM its URI\n"
"  migrate-outcome here|destination\n"
"                after a hand-over the destination never confirmed:\n"
"                say where the guest runs (here: resume it here)\n"
"  cpr-transfer --to PATH [--main URI]\n"
"                live update: hand the VM to a new ferry-vmm started with\n"
"                --incoming '{\"channel-type\":\"cpr\",\"addr\":{...PATH}}'\n"
"                --incoming URI (main URI default: unix:PATH.main);\n"
"                prints the guest pause\n"
"  cpr-exec --file PATH -- COMMAND [ARG...]\n"
"                live update in place: exec COMMAND (a ferry-vmm with the\n"
"                same machine and --incoming file:PATH), same PID\n"
"\n"
"Options:\n"
"  -q, --qmp PATH       the VMM's QMP socket (unix:PATH also accepted)\n"
"  -j, --json           print the command's result as JSON\n"
"  -t, --timeout SEC    give up waiting for the VMM after SEC seconds (default %d)\n"
"  -D, --downtime-limit MS   migrate: maximum downtime (default 300)\n"
"  -B, --max-bandwidth SIZE  migrate: bytes per second, e.g. 100M (0 = no cap)\n"
"  -A, --switchover-ack      migrate: wait until the destination has loaded\n"
"                            every device's initial data before stopping\n"
"  -n, --no-wait             migrate: start it and return at once\n"
"  -K, --keep-source         migrate: leave the source in postmigrate (by\n"
"                            default it is told to quit once completed)\n"
"  -c, --channels N          migrate, migrate-incoming: N parallel (multifd)\n"
"                            channels, 1 = one stream; set the same on both\n"
"                            ends\n"
"  -h, --help           show this help\n"
"\n"
"Exit status: 0 ok, 1 the VMM returned an error (or the migration\n"
"failed or was cancelled), 2 usage error, 3 the socket is unreachable\n"
"or not a QMP server.\n",
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

/* From now, one --timeout for everything read until ctl_disarm(). */
static void ctl_arm(struct ctl *c)
{
	c->deadline_ns = clock_ns() + (uint64_t)c->timeout_ms * 1000000ull;
}

static void ctl_disarm(struct ctl *c)
{
	c->deadline_ns = 0;
}

static int ctl_wait_ms(const struct ctl *c)
{
	uint64_t now = clock_ns();

	if (!c->deadline_ns)
		return c->timeout_ms;
	return now >= c->deadline_ns ? 0 :
	       (int)((c->deadline_ns - now + 999999) / 1000000);
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
		r = poll(&pfd, 1, ctl_wait_ms(c));
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
			c->eof = true;
			if (!c->eof_expected)
				fail(0, "the VMM closed the connection%s",
				     n < 0 ? " with an error" : "");
			return NULL;
		}
		c->len = (size_t)n;
	}
}

/* Next reply (skipping events), or NULL; within --timeout in all. */
static struct json_object *ctl_reply(struct ctl *c)
{
	struct json_object *o;

	ctl_arm(c);
	while ((o = ctl_read(c))) {
		if (!json_object_is_type(o, json_type_object) ||
		    !json_object_object_get_ex(o, "event", NULL))
			break;
		json_object_put(o);
	}
	ctl_disarm(c);
	return o;
}

static int ctl_send(struct ctl *c, struct json_object *o)
{
	const char *s = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
	int ret;

	ret = fd_write_full(c->fd, s, strlen(s));
	if (!ret)
		ret = fd_write_full(c->fd, "\n", 1);
	if (ret && (ret == -EPIPE || ret == -ECONNRESET) && c->eof_expected) {
		c->eof = true;
		return EXIT_CONNECT;
	}
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
			       qid && json_object_is_type(qid, json_type_string) &&
			       *json_object_get_string(qid) ?
			       json_object_get_string(qid) : "-", backend);
		}
	}
}

/* ---- migrate ------------------------------------------------------- */

#define MIG_POLL_MS		250

struct mig_opts {
	long long downtime_limit;	/* -1: leave as is */
	long long max_bandwidth;
	int channels;			/* 0: leave as is, 1: no multifd */
	const char *cpr_to;		/* cpr-transfer: the cpr socket */
	const char *cpr_main;		/* ...and the main channel's URI */
	const char *cpr_file;		/* cpr-exec: the state file */
	char **exec_argv;		/* cpr-exec: the new image */
	int exec_argc;
	bool switchover_ack;
	bool no_wait;
	bool keep_source;		/* migrate: no quit after completion */
};

static uint64_t jget_u64(struct json_object *o, const char *path)
{
	struct json_object *v = o;
	char key[64];

	/* "ram.transferred" style paths */
	while (v && *path) {
		const char *dot = strchr(path, '.');
		size_t n = dot ? (size_t)(dot - path) : strlen(path);

		if (n >= sizeof(key))
			return 0;
		memcpy(key, path, n);
		key[n] = '\0';
		if (!json_object_object_get_ex(v, key, &v))
			return 0;
		path += n + (dot ? 1 : 0);
	}
	return v ? (uint64_t)json_object_get_int64(v) : 0;
}

/* A string member, NULL if absent or not a string (a VMM's answer is
 * not trusted to have the shape it should). */
static const char *jget_str(struct json_object *o, const char *key)
{
	struct json_object *v;

	return json_object_object_get_ex(o, key, &v) &&
	       json_object_is_type(v, json_type_string) ?
	       json_object_get_string(v) : NULL;
}

static bool jstr_is(struct json_object *o, const char *key, const char *want)
{
	const char *s = jget_str(o, key);

	return s && !strcmp(s, want);
}

static void print_mig_devices(struct json_object *info, const char *sep)
{
	struct json_object *devs;

	if (!json_object_object_get_ex(info, "vfio-user-devices", &devs))
		return;
	for (size_t i = 0; i < json_object_array_length(devs); i++) {
		struct json_object *d = json_object_array_get_idx(devs, i);

		printf("%s%s %s %.1f MiB pre-copy + %.1f MiB stop-copy", sep,
		       jget_str(d, "id") ? jget_str(d, "id") : "?",
		       jget_str(d, "state") ? jget_str(d, "state") : "?",
		       jget_u64(d, "precopy-bytes") / 1048576.0,
		       jget_u64(d, "stopcopy-bytes") / 1048576.0);
	}
}

static void print_mig_progress(struct json_object *info, bool tty)
{
	uint64_t exp = jget_u64(info, "expected-downtime");
	const char *st = jget_str(info, "status");
	struct json_object *ram, *mbps;
	double rate = 0;

	if (json_object_object_get_ex(info, "ram", &ram) &&
	    json_object_object_get_ex(ram, "mbps", &mbps))
		rate = json_object_get_double(mbps);
	printf("%s%-9s %7.1f s  sent %8.1f MiB  remaining %7.1f MiB  "
	       "%6.0f Mbps  ", tty ? "\r" : "",
	       st ? st : "?", jget_u64(info, "total-time") / 1000.0,
	       jget_u64(info, "ram.transferred") / 1048576.0,
	       jget_u64(info, "ram.remaining") / 1048576.0, rate);
	/* The dirty rate is measured at each sync of the dirty log: there
	 * is none before the first pass over RAM ended (the count is 1
	 * from that pass's start, as QEMU's). */
	if (jget_u64(info, "ram.dirty-sync-count") > 1)
		printf("dirty %6.1f MB/s", jget_u64(info,
		       "ram.dirty-pages-rate") *
		       jget_u64(info, "ram.page-size") / 1e6);
	else
		printf("dirty    - MB/s");
	printf("  iter %llu", (unsigned long long)jget_u64(info, "iterations"));
	if (exp)
		printf("  expected downtime %llu ms", (unsigned long long)exp);
	print_mig_devices(info, "  ");
	printf(tty ? "\033[K" : "\n");
	fflush(stdout);
}

static void print_mig_summary(struct json_object *info)
{
	const char *st = jget_str(info, "status");
	const char *why = jget_str(info, "error-desc");

	if (!st) {
		puts("No migration has run.");
		return;
	}
	if (!strcmp(st, "completed") && jget_str(info, "x-mode")) {
		printf("Live update (%s) completed in %.3f s: the guest paused "
		       "%.2f ms\n", jget_str(info, "x-mode"),
		       jget_u64(info, "total-time") / 1000.0,
		       jget_u64(info, "downtime-us") / 1000.0);
		return;
	}
	if (!strcmp(st, "completed")) {
		printf("Migration completed in %.3f s: downtime %.1f ms, "
		       "setup %llu ms, %.1f MiB sent (%llu pages, %llu zero "
		       "pages), %llu iterations\n",
		       jget_u64(info, "total-time") / 1000.0,
		       jget_u64(info, "downtime-us") / 1000.0,
		       (unsigned long long)jget_u64(info, "setup-time"),
		       jget_u64(info, "ram.transferred") / 1048576.0,
		       (unsigned long long)jget_u64(info, "ram.normal"),
		       (unsigned long long)jget_u64(info, "ram.duplicate"),
		       (unsigned long long)jget_u64(info, "iterations"));
		printf("Device DMA logs: %llu dirty pages, %llu found only by "
		       "them\n",
		       (unsigned long long)jget_u64(info, "ram.device-dirty-pages"),
		       (unsigned long long)jget_u64(info,
						    "ram.device-only-dirty-pages"));
		print_mig_devices(info, "Device ");
		printf("%s", json_object_object_get_ex(info, "vfio-user-devices",
						       NULL) ? "\n" : "");
		return;
	}
	printf("Migration %s after %.3f s%s%s\n", st,
	       jget_u64(info, "total-time") / 1000.0, why ? ": " : "",
	       why ? why : "");
	if (json_object_object_get_ex(info, "x-outcome-unknown", NULL))
		puts("The guest may run on the destination: it stays paused "
		     "here. Check the destination, then say where it runs: "
		     "ferryctl migrate-outcome here|destination");
	else if (!strcmp(st, "failed") || !strcmp(st, "cancelled"))
		puts("The guest keeps running on the source.");
}

/* Execute name(args), events allowed in between; 0 or an exit status. */
static int ctl_simple(struct ctl *c, const char *name,
		      struct json_object *args)
{
	struct json_object *cmd = json_object_new_object(), *reply = NULL;
	int status;

	json_object_object_add(cmd, "execute", json_object_new_string(name));
	if (args)
		json_object_object_add(cmd, "arguments", args);
	status = ctl_execute(c, cmd, &reply);
	json_object_put(cmd);
	json_object_put(reply);
	return status;
}

static void mig_cap_add(struct json_object *caps, const char *name,
			bool state)
{
	struct json_object *cap = json_object_new_object();

	json_object_object_add(cap, "capability", json_object_new_string(name));
	json_object_object_add(cap, "state", json_object_new_boolean(state));
	json_object_array_add(caps, cap);
}

/* Both ends: the destination must be set up like the source (the
 * source's configuration section is checked against it). A plain
 * migration is a normal one, whatever an earlier (failed) live update
 * left in "mode". */
static int mig_setup(struct ctl *c, const struct mig_opts *mo)
{
	struct json_object *args = json_object_new_object(), *caps;
	int status;

	json_object_object_add(args, "mode", json_object_new_string("normal"));
	if (mo->downtime_limit >= 0)
		json_object_object_add(args, "downtime-limit",
				json_object_new_int64(mo->downtime_limit));
	if (mo->max_bandwidth >= 0)
		json_object_object_add(args, "max-bandwidth",
				json_object_new_int64(mo->max_bandwidth));
	if (mo->channels > 1)
		json_object_object_add(args, "multifd-channels",
				json_object_new_int(mo->channels));
	status = ctl_simple(c, "migrate-set-parameters", args);
	if (status || (!mo->switchover_ack && !mo->channels))
		return status;
	caps = json_object_new_array();
	if (mo->switchover_ack)
		mig_cap_add(caps, "switchover-ack", true);
	if (mo->channels)
		mig_cap_add(caps, "multifd", mo->channels > 1);
	args = json_object_new_object();
	json_object_object_add(args, "capabilities", caps);
	return ctl_simple(c, "migrate-set-capabilities", args);
}

static bool mig_terminal(const char *st)
{
	return st && (!strcmp(st, "completed") || !strcmp(st, "failed") ||
		      !strcmp(st, "cancelled"));
}

/*
 * Poll query-migrate until a terminal status. The source exits once the
 * destination runs the guest, so the final figures may arrive only in
 * the MIGRATION event's x-info.
 */
static int mig_follow(struct ctl *c, bool json)
{
	struct json_object *final = NULL, *last = NULL;
	bool tty = isatty(STDOUT_FILENO) && !json;
	int status = 0;

	for (;;) {
		struct json_object *cmd = json_object_new_object(), *o;
		bool got_reply = false;

		const char *q;

		json_object_object_add(cmd, "execute",
				       json_object_new_string("query-migrate"));
		q = json_object_to_json_string_ext(cmd, JSON_C_TO_STRING_PLAIN);
		/* A source that completed has exited: a failed send is not
		 * an error yet, its final event may still be queued. */
		(void)(fd_write_full(c->fd, q, strlen(q)) ||
		       fd_write_full(c->fd, "\n", 1));
		json_object_put(cmd);
		/* Stop reading at the final event: the source may be gone
		 * before it answers the query. Events do not keep the wait
		 * for the answer alive past --timeout. */
		ctl_arm(c);
		while (!got_reply && !final && (o = ctl_read(c))) {
			struct json_object *ev, *data, *ret;

			if (json_object_object_get_ex(o, "event", &ev)) {
				if (jstr_is(o, "event", "MIGRATION") &&
				    json_object_object_get_ex(o, "data", &data) &&
				    json_object_object_get_ex(data, "x-info",
							      &ret)) {
					json_object_put(final);
					final = json_object_get(ret);
				}
			} else if (json_object_object_get_ex(o, "return", &ret)) {
				got_reply = true;
				json_object_put(last);
				last = json_object_get(ret);
			} else {
				got_reply = true;
				ctl_report_error(o);
				status = EXIT_QMP_ERROR;
			}
			json_object_put(o);
		}
		ctl_disarm(c);
		if (final || !got_reply || status)
			break;	/* ended, the VMM went away, or it refused */
		if (mig_terminal(jget_str(last, "status"))) {
			if (!final)
				final = json_object_get(last);
			break;
		}
		if (!json)
			print_mig_progress(last, tty);
		poll(NULL, 0, MIG_POLL_MS);
	}
	if (tty)
		printf("\n");
	if (!final) {
		json_object_put(last);
		return status ? status :
		       fail(EXIT_CONNECT, "lost the VMM before the migration "
			    "ended (see its log)");
	}
	if (json)
		print_json(final);
	else
		print_mig_summary(final);
	if (!jstr_is(final, "status", "completed"))
		status = EXIT_QMP_ERROR;
	json_object_put(final);
	json_object_put(last);
	return status;
}

static struct json_object *unix_channel(const char *type, const char *path)
{
	struct json_object *ch = json_object_new_object();
	struct json_object *addr = json_object_new_object();

	json_object_object_add(addr, "transport",
			       json_object_new_string("socket"));
	json_object_object_add(addr, "type", json_object_new_string("unix"));
	json_object_object_add(addr, "path", json_object_new_string(path));
	json_object_object_add(ch, "channel-type",
			       json_object_new_string(type));
	json_object_object_add(ch, "addr", addr);
	return ch;
}

/* The main channel as a QEMU address: unix: or tcp:HOST:PORT. */
static struct json_object *main_channel(const char *uri)
{
	struct json_object *ch, *addr;
	const char *colon;

	if (!strncmp(uri, "unix:", 5))
		return unix_channel("main", uri + 5);
	if (strncmp(uri, "tcp:", 4) || !(colon = strrchr(uri + 4, ':')))
		return NULL;
	ch = json_object_new_object();
	addr = json_object_new_object();
	json_object_object_add(addr, "transport",
			       json_object_new_string("socket"));
	json_object_object_add(addr, "type", json_object_new_string("inet"));
	json_object_object_add(addr, "host", json_object_new_string_len(
		uri + 4, (int)(colon - uri - 4)));
	json_object_object_add(addr, "port", json_object_new_string(colon + 1));
	json_object_object_add(ch, "channel-type",
			       json_object_new_string("main"));
	json_object_object_add(ch, "addr", addr);
	return ch;
}

/* Until the exec: the connection ends (the new image runs), or the
 * migration fails (the exec failed: the guest runs on here). */
static int cpr_exec_follow(struct ctl *c, bool json)
{
	char last[32] = "";
	uint64_t changed = clock_ns();

	c->eof_expected = true;
	for (;;) {
		struct json_object *cmd = json_object_new_object();
		struct json_object *reply = NULL, *ret;
		const char *st;
		int status;

		json_object_object_add(cmd, "execute",
				       json_object_new_string("query-migrate"));
		status = ctl_execute(c, cmd, &reply);
		json_object_put(cmd);
		if (status && c->eof) {
			json_object_put(reply);
			if (json)
				puts("{\"status\": \"exec\"}");
			else
				puts("The new image took over (same process): "
				     "it loads the state and runs the guest; "
				     "its QMP socket is the one its command "
				     "names");
			return 0;
		}
		if (status) {
			json_object_put(reply);
			return status;
		}
		json_object_object_get_ex(reply, "return", &ret);
		st = jget_str(ret, "status");
		if (st && (!strcmp(st, "failed") || !strcmp(st, "cancelled"))) {
			if (json)
				print_json(ret);
			else
				print_mig_summary(ret);
			json_object_put(reply);
			return EXIT_QMP_ERROR;
		}
		/* The exec comes within the VMM's switchover budget: a
		 * status that does not move for --timeout is a stuck VMM,
		 * not a slow one. */
		if (strcmp(st ? st : "", last)) {
			snprintf(last, sizeof(last), "%s", st ? st : "");
			changed = clock_ns();
		}
		json_object_put(reply);
		if (clock_ns() - changed >
		    (uint64_t)c->timeout_ms * 1000000ull)
			return fail(EXIT_QMP_ERROR, "the VMM stayed in '%s' "
				    "for %d s without exec'ing the new image",
				    last[0] ? last : "?", c->timeout_ms / 1000);
		poll(NULL, 0, 20);
	}
}

static int cpr_set_mode(struct ctl *c, const char *mode,
			const struct mig_opts *mo)
{
	struct json_object *args = json_object_new_object();

	json_object_object_add(args, "mode", json_object_new_string(mode));
	if (mo->exec_argv) {
		struct json_object *cmd = json_object_new_array();

		for (int i = 0; i < mo->exec_argc; i++)
			json_object_array_add(cmd, json_object_new_string(
				mo->exec_argv[i]));
		json_object_object_add(args, "cpr-exec-command", cmd);
	}
	return ctl_simple(c, "migrate-set-parameters", args);
}

/*
 * Live update. cpr-transfer: the old VMM exits once the new one runs the
 * guest; its final figures come in the MIGRATION event. cpr-exec: this
 * VMM becomes the new image (same PID) and the connection ends; a
 * failed exec shows as a failed migration instead.
 */
static int run_cpr(struct ctl *c, const char *verb, const struct mig_opts *mo,
		   bool json)
{
	struct json_object *args = json_object_new_object(), *chans, *m;
	char main_uri[300];
	int status;

	if (!strcmp(verb, "cpr-exec")) {
		json_object_put(args);
		status = cpr_set_mode(c, "cpr-exec", mo);
		if (status)
			return status;
		args = json_object_new_object();
		snprintf(main_uri, sizeof(main_uri), "file:%s", mo->cpr_file);
		json_object_object_add(args, "uri",
				       json_object_new_string(main_uri));
		status = ctl_simple(c, "migrate", args);
		return status ? status : cpr_exec_follow(c, json);
	}
	if (mo->cpr_main)
		snprintf(main_uri, sizeof(main_uri), "%s", mo->cpr_main);
	else
		snprintf(main_uri, sizeof(main_uri), "unix:%s.main",
			 mo->cpr_to);
	m = main_channel(main_uri);
	if (!m) {
		json_object_put(args);
		return fail(EXIT_USAGE, "--main '%s': expected unix:PATH or "
			    "tcp:HOST:PORT", main_uri);
	}
	status = cpr_set_mode(c, "cpr-transfer", mo);
	if (status) {
		json_object_put(m);
		json_object_put(args);
		return status;
	}
	chans = json_object_new_array();
	json_object_array_add(chans, m);
	json_object_array_add(chans, unix_channel("cpr", mo->cpr_to));
	json_object_object_add(args, "channels", chans);
	status = ctl_simple(c, "migrate", args);
	return status ? status : mig_follow(c, json);
}

static int run_migrate(struct ctl *c, const char *verb, const char *uri,
		       const struct mig_opts *mo, bool json)
{
	struct json_object *args, *cmd, *reply = NULL, *ret;
	int status;

	if (!strcmp(verb, "migrate-cancel"))
		return ctl_simple(c, "migrate_cancel", NULL) ? EXIT_QMP_ERROR :
		       (puts(json ? "{}" : "Migration cancel requested"), 0);
	if (!strcmp(verb, "migrate-incoming")) {
		status = mig_setup(c, mo);
		if (status)
			return status;
		args = json_object_new_object();
		json_object_object_add(args, "uri", json_object_new_string(uri));
		status = ctl_simple(c, "migrate-incoming", args);
		if (!status && !json)
			printf("Waiting for the migration on %s\n", uri);
		return status;
	}
	if (!strcmp(verb, "migrate-outcome")) {
		args = json_object_new_object();
		json_object_object_add(args, "guest-runs",
				       json_object_new_string(uri));
		status = ctl_simple(c, "x-migrate-outcome", args);
		if (!status && !json)
			printf("%s\n", !strcmp(uri, "here") ?
			       "The guest runs here again" :
			       "The guest runs on the destination; this VMM "
			       "stays in postmigrate until quit");
		return status;
	}
	if (!strcmp(verb, "cpr-transfer") || !strcmp(verb, "cpr-exec"))
		return run_cpr(c, verb, mo, json);
	if (!strcmp(verb, "migrate-status")) {
		cmd = json_object_new_object();
		json_object_object_add(cmd, "execute",
				       json_object_new_string("query-migrate"));
		status = ctl_execute(c, cmd, &reply);
		json_object_put(cmd);
		if (!status && json_object_object_get_ex(reply, "return", &ret)) {
			if (json)
				print_json(ret);
			else if (mig_terminal(jget_str(ret, "status")) ||
				 !jget_str(ret, "status"))
				print_mig_summary(ret);
			else
				print_mig_progress(ret, false);
		}
		json_object_put(reply);
		return status;
	}
	status = mig_setup(c, mo);
	if (status)
		return status;
	args = json_object_new_object();
	json_object_object_add(args, "uri", json_object_new_string(uri));
	status = ctl_simple(c, "migrate", args);
	if (status || mo->no_wait) {
		if (!status && !json)
			printf("Migration to %s started\n", uri);
		return status;
	}
	status = mig_follow(c, json);
	if (status || mo->keep_source)
		return status;
	/* As a management layer does: the source, in postmigrate, has
	 * nothing left to run. One started with --exit-after-migrate is
	 * gone already. */
	c->eof_expected = true;
	if (!ctl_simple(c, "quit", NULL) && !json)
		printf("The source VMM quit (--keep-source keeps it in "
		       "postmigrate)\n");
	return 0;
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
	{ "reset", "system_reset", NULL, "VM reset: the guest boots again" },
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
		{ "downtime-limit", required_argument, NULL, 'D' },
		{ "max-bandwidth", required_argument, NULL, 'B' },
		{ "switchover-ack", no_argument, NULL, 'A' },
		{ "no-wait", no_argument, NULL, 'n' },
		{ "keep-source", no_argument, NULL, 'K' },
		{ "channels", required_argument, NULL, 'c' },
		{ "to", required_argument, NULL, 'T' },
		{ "main", required_argument, NULL, 'M' },
		{ "file", required_argument, NULL, 'F' },
		{ 0 }
	};
	struct mig_opts mo = { .downtime_limit = -1, .max_bandwidth = -1 };
	const char *mig_uri = NULL;
	bool is_mig = false;
	uint64_t size;
	struct ctl c = { .fd = -1, .timeout_ms = CTL_DEFAULT_TIMEOUT_S * 1000 };
	struct json_object *cmd = NULL, *reply = NULL, *ret_val;
	const struct ctl_cmd *cc = NULL;
	const char *path = NULL, *verb;
	bool json = false;
	int opt, status;
	long t;
	char *end;

	signal(SIGPIPE, SIG_IGN);	/* a VMM that exits is an error code */
	opterr = 0;
	while ((opt = getopt_long(argc, argv, ":q:jt:hD:B:AnKc:T:M:F:", longopts, NULL)) != -1) {
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
		case 'D':
			errno = 0;
			t = strtol(optarg, &end, 10);
			if (errno || end == optarg || *end || t < 0 ||
			    t > 2000000)
				return fail(EXIT_USAGE, "--downtime-limit '%s': "
					    "milliseconds from 0 to 2000000",
					    optarg);
			mo.downtime_limit = t;
			break;
		case 'B':
			if (parse_size(optarg, &size) || size > INT64_MAX)
				return fail(EXIT_USAGE, "--max-bandwidth '%s': "
					    "bytes per second, e.g. 100M", optarg);
			mo.max_bandwidth = (long long)size;
			break;
		case 'A':
			mo.switchover_ack = true;
			break;
		case 'n':
			mo.no_wait = true;
			break;
		case 'K':
			mo.keep_source = true;
			break;
		case 'T':
			mo.cpr_to = optarg;
			break;
		case 'M':
			mo.cpr_main = optarg;
			break;
		case 'F':
			mo.cpr_file = optarg;
			break;
		case 'c':
			errno = 0;
			t = strtol(optarg, &end, 10);
			if (errno || end == optarg || *end || t < 1 || t > 64)
				return fail(EXIT_USAGE, "--channels '%s': from 1 "
					    "(one stream) to 64", optarg);
			mo.channels = (int)t;
			break;
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
	if (!strcmp(verb, "migrate") || !strcmp(verb, "migrate-incoming")) {
		if (optind != argc - 1)
			return fail(EXIT_USAGE, "%s takes exactly one URI", verb);
		mig_uri = argv[optind];
		is_mig = true;
	} else if (!strcmp(verb, "cpr-transfer")) {
		if (optind != argc || !mo.cpr_to)
			return fail(EXIT_USAGE, "cpr-transfer takes --to PATH "
				    "(and --main URI), no argument");
		is_mig = true;
	} else if (!strcmp(verb, "cpr-exec")) {
		if (!mo.cpr_file || optind >= argc)
			return fail(EXIT_USAGE, "cpr-exec takes --file PATH and, "
				    "after --, the new image's command");
		mo.exec_argv = argv + optind;
		mo.exec_argc = argc - optind;
		is_mig = true;
	} else if (!strcmp(verb, "migrate-outcome")) {
		if (optind != argc - 1 || (strcmp(argv[optind], "here") &&
					   strcmp(argv[optind], "destination")))
			return fail(EXIT_USAGE, "migrate-outcome takes 'here' or "
				    "'destination'");
		mig_uri = argv[optind];
		is_mig = true;
	} else if (!strcmp(verb, "migrate-status") ||
		   !strcmp(verb, "migrate-cancel")) {
		if (optind != argc)
			return fail(EXIT_USAGE, "'%s' takes no argument", verb);
		is_mig = true;
	} else if (!strcmp(verb, "raw")) {
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
	if (is_mig) {
		status = run_migrate(&c, verb, mig_uri, &mo, json);
		goto out;
	}
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
