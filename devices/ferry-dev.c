// SPDX-License-Identifier: BSD-3-Clause
/*
 * ferry-dev: a vfio-user device server hosting one ferry-dma device on a
 * UNIX socket. The model's host ops are bound to the server's DMA and IRQ
 * services here; everything else is the model's and the server's. With
 * --control it can hand the running device to a new ferry-dev started
 * with --takeover (takeover.c): a live update of the device server.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "ferry/cpr_fds.h"
#include "ferry/log.h"
#include "ferry/util.h"
#include "ferry/vfu_server.h"
#include "ferry_dma.h"
#include "takeover.h"

#define EXIT_USAGE	2
#define MAX_LOAD_LATENCY_MS	600000u

struct dev_host {
	struct vfu_server *srv;
};

static struct vfu_server *g_srv;

static int host_dma_read(void *host, uint64_t iova, void *buf, size_t len)
{
	struct dev_host *h = host;

	return vfu_server_dma_read(h->srv, iova, buf, len);
}

static int host_dma_write(void *host, uint64_t iova, const void *buf,
			  size_t len)
{
	struct dev_host *h = host;

	return vfu_server_dma_write(h->srv, iova, buf, len);
}

static int host_irq_trigger(void *host, uint32_t index, uint32_t vector)
{
	struct dev_host *h = host;

	return vfu_server_irq_trigger(h->srv, index, vector);
}

static const struct ferry_dma_host_ops dev_host_ops = {
	.dma_read = host_dma_read,
	.dma_write = host_dma_write,
	.irq_trigger = host_irq_trigger,
};

static const char *const irq_mode_names[FERRY_DMA_IRQ_MODE_NR] = {
	[FERRY_DMA_IRQ_MODE_MSIX] = "msix",
	[FERRY_DMA_IRQ_MODE_MSI] = "msi",
	[FERRY_DMA_IRQ_MODE_INTX] = "intx",
};

static int parse_irq_mode(const char *s, enum ferry_dma_irq_mode *out)
{
	for (unsigned int i = 0; i < FERRY_DMA_IRQ_MODE_NR; i++) {
		if (!strcmp(s, irq_mode_names[i])) {
			*out = (enum ferry_dma_irq_mode)i;
			return 0;
		}
	}
	return -EINVAL;
}

static void on_signal(int sig)
{
	if (g_srv)
		vfu_server_stop(g_srv);
}

static void usage(FILE *f)
{
	fprintf(f,
"usage: ferry-dev --socket PATH [options]\n"
"       ferry-dev --takeover CONTROL [same device options]\n"
"\n"
"Serve one vfio-user device on a UNIX socket.\n"
"\n"
"  -s, --socket PATH         listening socket (required unless --takeover)\n"
"  -m, --model NAME          device model: dma (default)\n"
"  -n, --name NAME           device name for logs (default: socket name)\n"
"      --device-memory SIZE  BAR2 size, power of two >= 64K (default 4M)\n"
"      --msix-vectors N      MSI-X vectors, 1..%u (default %u)\n"
"      --irq-mode MODE       interrupts: msix (default), msi (MSI, 2\n"
"                            vectors) or intx (level INTA# only)\n"
"      --dirty-rate BYTES    device dirties its own memory, bytes/s (0)\n"
"      --load-latency MS     delay after the resume header is loaded (0)\n"
"      --no-precopy          offer no PRE_COPY: all state at the switchover\n"
"      --socket-mode MODE    file mode of the socket (octal, default 0600\n"
"                            whatever the umask)\n"
"      --allow-uid UID       a user besides this one and root who may\n"
"                            connect (others are refused by SO_PEERCRED)\n"
"      --control PATH        control socket (0600, same users as the\n"
"                            socket): a new ferry-dev may take the device\n"
"                            over through it (live update)\n"
"      --takeover CONTROL    take the device over from the ferry-dev whose\n"
"                            control socket is CONTROL: its socket, client,\n"
"                            device state and control socket, no reset\n"
"      --takeover-timeout MS how long a takeover may take before this\n"
"                            server gives up and serves on (default %u)\n"
"  -v, --verbose             debug logging\n"
"  -h, --help                this text\n",
		FERRY_DMA_MAX_VECTORS, FERRY_DMA_DEFAULT_VECTORS,
		TK_DEFAULT_TIMEOUT_MS);
}

static int parse_u64(const char *s, uint64_t *out)
{
	char *end;

	if (!*s || *s == '-')
		return -EINVAL;
	errno = 0;
	*out = strtoull(s, &end, 0);
	if (errno || *end)
		return -EINVAL;
	return 0;
}

enum {
	OPT_DEVMEM = 256,
	OPT_VECTORS,
	OPT_IRQ_MODE,
	OPT_DIRTY,
	OPT_LATENCY,
	OPT_NO_PRECOPY,
	OPT_SOCK_MODE,
	OPT_ALLOW_UID,
	OPT_CONTROL,
	OPT_TAKEOVER,
	OPT_TAKEOVER_TIMEOUT,
	OPT_X_TAKEOVER_FAULT,
};

/* Everything main() decides, and what it builds. */
struct dev_ctx {
	struct ferry_dma_config cfg;
	struct sock_access acc;
	const char *socket_path;	/* --socket */
	const char *control_path;	/* --control */
	const char *takeover_path;	/* --takeover */
	const char *name;		/* --name */
	unsigned int takeover_timeout_ms;
	struct tk_fault_opt fault;

	char namebuf[64];
	/* The paths this process removes when it stops (unless it handed
	 * them over): ours, or the ones a takeover brought. */
	char sock_file[sizeof(((struct sockaddr_un *)0)->sun_path) + 1];
	char ctl_file[sizeof(((struct sockaddr_un *)0)->sun_path) + 1];
	struct dev_host host;
	struct ferry_dma *dma;
	int control_fd;
};

static void default_name(struct dev_ctx *c)
{
	const char *slash;

	if (c->name)
		return;
	slash = strrchr(c->sock_file, '/');
	snprintf(c->namebuf, sizeof(c->namebuf), "dma@%.59s",
		 slash ? slash + 1 : c->sock_file);
	c->name = c->namebuf;
}

/* The path a listening UNIX socket is bound to ("" if none). */
static void sock_file_of(int fd, char *out, size_t cap)
{
	struct sockaddr_un sa;
	socklen_t len = sizeof(sa);
	size_t n;

	out[0] = '\0';
	if (fd < 0 || getsockname(fd, (struct sockaddr *)&sa, &len) < 0 ||
	    len <= offsetof(struct sockaddr_un, sun_path) ||
	    sa.sun_family != AF_UNIX || !sa.sun_path[0])
		return;
	n = strnlen(sa.sun_path, len - offsetof(struct sockaddr_un, sun_path));
	n = MIN(n, cap - 1);
	memcpy(out, sa.sun_path, n);
	out[n] = '\0';
}

/* A new device and server, listening on --socket (and --control). */
static int dev_fresh(struct dev_ctx *c)
{
	struct sock_access ctl_acc = { 0, c->acc.allow_uid };
	struct vfu_device_desc desc;
	int ret;

	snprintf(c->sock_file, sizeof(c->sock_file), "%s", c->socket_path);
	default_name(c);
	c->cfg.name = c->name;
	ret = ferry_dma_create(&c->cfg, &dev_host_ops, &c->host, &c->dma);
	if (ret) {
		fprintf(stderr, "ferry-dev: %s: cannot create device: %s\n",
			c->name, strerror(-ret));
		return ret;
	}
	ferry_dma_describe(c->dma, &desc);
	c->host.srv = vfu_server_create(&desc, NULL);
	if (!c->host.srv) {
		fprintf(stderr, "ferry-dev: %s: cannot create server\n",
			c->name);
		ret = -ENOMEM;
		goto err_destroy_dma;
	}
	ret = vfu_server_listen(c->host.srv, c->socket_path, &c->acc);
	if (ret) {
		fprintf(stderr, "ferry-dev: %s: cannot listen on %s: %s\n",
			c->name, c->socket_path, strerror(-ret));
		goto err_destroy_srv;
	}
	if (c->control_path) {
		/* 0600 whatever --socket-mode says: taking the device over
		 * is the owner's business (and root's, and --allow-uid's,
		 * whom SO_PEERCRED lets in as on the main socket). */
		c->control_fd = unix_socket_listen(c->control_path, 4,
						   &ctl_acc);
		if (c->control_fd < 0) {
			ret = c->control_fd;
			fprintf(stderr, "ferry-dev: %s: cannot listen on %s: "
				"%s\n", c->name, c->control_path,
				strerror(-ret));
			goto err_unlink_sock;
		}
		snprintf(c->ctl_file, sizeof(c->ctl_file), "%s",
			 c->control_path);
	}
	pr_info("%s: serving on %s (device memory %" PRIu64 " bytes, "
		"interrupts %s, %u MSI-X vectors, dirty rate %" PRIu64 " B/s, "
		"load latency %u ms%s%s%s)", c->name, c->socket_path,
		ferry_dma_devmem_size(c->dma), irq_mode_names[c->cfg.irq_mode],
		c->cfg.msix_vectors ? c->cfg.msix_vectors :
		FERRY_DMA_DEFAULT_VECTORS, c->cfg.dirty_rate,
		c->cfg.load_latency_ms, c->cfg.no_precopy ? ", no pre-copy" : "",
		c->control_path ? ", control " : "",
		c->control_path ? c->control_path : "");
	return 0;

err_unlink_sock:
	unlink(c->socket_path);
err_destroy_srv:
	vfu_server_destroy(c->host.srv);
	c->host.srv = NULL;
err_destroy_dma:
	ferry_dma_destroy(c->dma);
	c->dma = NULL;
	return ret;
}

/* Tear down what a failed takeover built: this process's copies only. */
static void dev_take_undo(struct dev_ctx *c)
{
	ferry_dma_destroy(c->dma);
	c->dma = NULL;
	vfu_server_destroy(c->host.srv);
	c->host.srv = NULL;
	close_safely(&c->control_fd);
}

/*
 * Rebuild the device and server from what the running ferry-dev hands
 * over; nothing is sent to the client and the device does not run
 * before the old process has committed.
 */
static int dev_take(struct dev_ctx *c)
{
	struct ferry_dma_adopt from = { .devmem_fd = -1 };
	struct vfu_device_desc desc;
	struct tk_take *t;
	struct cpr_fds *fds;
	const void *sstate;
	size_t slen;
	char err[256];
	unsigned int extra;
	int ret;

	ret = tk_take_connect(c->takeover_path, &c->fault, &t, err,
			      sizeof(err));
	if (ret) {
		fprintf(stderr, "ferry-dev: takeover through %s failed: %s\n",
			c->takeover_path, err);
		return ret;
	}
	fds = tk_take_fds(t);
	sock_file_of(cpr_fds_peek(fds, "listen"), c->sock_file,
		     sizeof(c->sock_file));
	sock_file_of(cpr_fds_peek(fds, "control"), c->ctl_file,
		     sizeof(c->ctl_file));
	default_name(c);
	c->cfg.name = c->name;
	if (c->socket_path && strcmp(c->socket_path, c->sock_file)) {
		snprintf(err, sizeof(err), "--socket %s, but the running "
			 "server listens on %s", c->socket_path, c->sock_file);
		ret = -EINVAL;
		goto err_abort;
	}

	from.devmem_fd = cpr_fds_take(fds, "devmem");
	if (from.devmem_fd < 0) {
		snprintf(err, sizeof(err), "no \"devmem\" fd");
		ret = -ENOENT;
		goto err_abort;
	}
	tk_take_device_state(t, &from.blob, &from.len);
	if (c->fault.kind == TK_FAULT_LOSE_IRQ_PENDING)
		from.x_lose = FERRY_DMA_X_LOSE_IRQ_PENDING;
	if (c->fault.kind == TK_FAULT_LOSE_RING_TAIL)
		from.x_lose = FERRY_DMA_X_LOSE_RING_TAIL;
	ret = ferry_dma_adopt(&c->cfg, &dev_host_ops, &c->host, &from, err,
			      sizeof(err), &c->dma);
	if (ret)
		goto err_abort;
	ferry_dma_describe(c->dma, &desc);
	c->host.srv = vfu_server_create(&desc, NULL);
	if (!c->host.srv) {
		snprintf(err, sizeof(err), "cannot create the server");
		ret = -ENOMEM;
		goto err_undo;
	}
	tk_take_server_state(t, &sstate, &slen);
	ret = vfu_server_restore(c->host.srv, fds, sstate, slen, &c->acc,
				 err, sizeof(err));
	if (ret)
		goto err_undo;
	if (vfu_server_mig_state(c->host.srv) != ferry_dma_mig_state(c->dma)) {
		snprintf(err, sizeof(err), "server in %s, device in %s",
			 vfu_mig_state_name(vfu_server_mig_state(c->host.srv)),
			 vfu_mig_state_name(ferry_dma_mig_state(c->dma)));
		ret = -EINVAL;
		goto err_undo;
	}
	c->control_fd = cpr_fds_take(fds, "control");
	if (c->control_fd < 0) {
		snprintf(err, sizeof(err), "no \"control\" fd");
		ret = -ENOENT;
		goto err_undo;
	}
	extra = cpr_fds_untaken(fds);
	if (extra) {
		snprintf(err, sizeof(err), "%u fds nobody asked for", extra);
		ret = -EINVAL;
		goto err_undo;
	}

	ret = tk_take_commit(t, err, sizeof(err));
	if (ret) {
		fprintf(stderr, "ferry-dev: %s: takeover failed: %s\n",
			c->name, err);
		dev_take_undo(c);
		goto out_free;
	}
	ferry_dma_unpause(c->dma);
	if (c->fault.kind == TK_FAULT_RESET_DEVICE) {
		pr_warn("%s: debug: resetting the device taken over", c->name);
		desc.ops->reset(desc.dev);
	}
	tk_take_report(t, c->name);
	pr_info("%s: serving on %s (taken over, device memory %" PRIu64
		" bytes%s%s)", c->name, c->sock_file,
		ferry_dma_devmem_size(c->dma), c->ctl_file[0] ? ", control " : "",
		c->ctl_file);
	goto out_free;

err_undo:
	dev_take_undo(c);
err_abort:
	fprintf(stderr, "ferry-dev: %s: takeover failed: %s\n", c->name, err);
	tk_take_abort(t, err);
out_free:
	tk_take_free(t);
	return ret;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "model", required_argument, NULL, 'm' },
		{ "name", required_argument, NULL, 'n' },
		{ "device-memory", required_argument, NULL, OPT_DEVMEM },
		{ "msix-vectors", required_argument, NULL, OPT_VECTORS },
		{ "irq-mode", required_argument, NULL, OPT_IRQ_MODE },
		{ "dirty-rate", required_argument, NULL, OPT_DIRTY },
		{ "load-latency", required_argument, NULL, OPT_LATENCY },
		{ "no-precopy", no_argument, NULL, OPT_NO_PRECOPY },
		{ "socket-mode", required_argument, NULL, OPT_SOCK_MODE },
		{ "allow-uid", required_argument, NULL, OPT_ALLOW_UID },
		{ "control", required_argument, NULL, OPT_CONTROL },
		{ "takeover", required_argument, NULL, OPT_TAKEOVER },
		{ "takeover-timeout", required_argument, NULL,
		  OPT_TAKEOVER_TIMEOUT },
		/* Tests only (negative controls, failure paths). */
		{ "x-takeover-fault", required_argument, NULL,
		  OPT_X_TAKEOVER_FAULT },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct dev_ctx c = {
		.acc = SOCK_ACCESS_PRIVATE,
		.takeover_timeout_ms = TK_DEFAULT_TIMEOUT_MS,
		.control_fd = -1,
	};
	struct tk_give *give = NULL;
	struct sigaction sa;
	bool handed;
	char err[160];
	uint64_t v;
	int opt, ret;

	log_init(argv[0]);
	while ((opt = getopt_long(argc, argv, "s:m:n:vh", opts, NULL)) != -1) {
		switch (opt) {
		case 's':
			c.socket_path = optarg;
			break;
		case 'm':
			if (strcmp(optarg, "dma")) {
				fprintf(stderr, "ferry-dev: unknown model '%s' "
					"(known: dma)\n", optarg);
				return EXIT_USAGE;
			}
			break;
		case 'n':
			c.name = optarg;
			break;
		case OPT_DEVMEM:
			if (parse_size(optarg, &v) || !v) {
				fprintf(stderr, "ferry-dev: --device-memory: "
					"bad size '%s'\n", optarg);
				return EXIT_USAGE;
			}
			c.cfg.devmem_size = v;
			break;
		case OPT_VECTORS:
			if (parse_u64(optarg, &v) || v < 1 ||
			    v > FERRY_DMA_MAX_VECTORS) {
				fprintf(stderr, "ferry-dev: --msix-vectors: "
					"'%s' is not 1..%u\n", optarg,
					FERRY_DMA_MAX_VECTORS);
				return EXIT_USAGE;
			}
			c.cfg.msix_vectors = (uint32_t)v;
			break;
		case OPT_IRQ_MODE:
			if (parse_irq_mode(optarg, &c.cfg.irq_mode)) {
				fprintf(stderr, "ferry-dev: --irq-mode: '%s' is "
					"not msix, msi or intx\n", optarg);
				return EXIT_USAGE;
			}
			break;
		case OPT_DIRTY:
			if (parse_size(optarg, &v)) {
				fprintf(stderr, "ferry-dev: --dirty-rate: bad "
					"rate '%s'\n", optarg);
				return EXIT_USAGE;
			}
			c.cfg.dirty_rate = v;
			break;
		case OPT_LATENCY:
			if (parse_u64(optarg, &v) || v > MAX_LOAD_LATENCY_MS) {
				fprintf(stderr, "ferry-dev: --load-latency: "
					"'%s' is not 0..%u ms\n", optarg,
					MAX_LOAD_LATENCY_MS);
				return EXIT_USAGE;
			}
			c.cfg.load_latency_ms = (uint32_t)v;
			break;
		case OPT_NO_PRECOPY:
			c.cfg.no_precopy = true;
			break;
		case OPT_SOCK_MODE:
			if (parse_sock_mode(optarg, &c.acc.mode)) {
				fprintf(stderr, "ferry-dev: --socket-mode: '%s' "
					"is not an octal mode with owner rw\n",
					optarg);
				return EXIT_USAGE;
			}
			break;
		case OPT_ALLOW_UID:
			if (parse_uid(optarg, &c.acc.allow_uid)) {
				fprintf(stderr, "ferry-dev: --allow-uid: '%s' is "
					"not a numeric uid\n", optarg);
				return EXIT_USAGE;
			}
			break;
		case OPT_CONTROL:
			c.control_path = optarg;
			break;
		case OPT_TAKEOVER:
			c.takeover_path = optarg;
			break;
		case OPT_TAKEOVER_TIMEOUT:
			if (parse_u64(optarg, &v) || v < 1 ||
			    v > TK_MAX_TIMEOUT_MS) {
				fprintf(stderr, "ferry-dev: --takeover-timeout: "
					"'%s' is not 1..%u ms\n", optarg,
					TK_MAX_TIMEOUT_MS);
				return EXIT_USAGE;
			}
			c.takeover_timeout_ms = (unsigned int)v;
			break;
		case OPT_X_TAKEOVER_FAULT:
			if (tk_fault_parse(optarg, &c.fault)) {
				fprintf(stderr, "ferry-dev: --x-takeover-fault: "
					"unknown fault '%s'\n", optarg);
				return EXIT_USAGE;
			}
			break;
		case 'v':
			log_set_level(LOG_LVL_DEBUG);
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return EXIT_USAGE;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "ferry-dev: unexpected argument '%s'\n",
			argv[optind]);
		return EXIT_USAGE;
	}
	if (!c.socket_path && !c.takeover_path) {
		fprintf(stderr, "ferry-dev: --socket PATH is required\n");
		usage(stderr);
		return EXIT_USAGE;
	}
	if (c.takeover_path && c.control_path) {
		fprintf(stderr, "ferry-dev: --takeover brings the control "
			"socket along; --control is for a fresh server\n");
		return EXIT_USAGE;
	}
	if (ferry_dma_config_check(&c.cfg, err, sizeof(err))) {
		fprintf(stderr, "ferry-dev: %s\n", err);
		return EXIT_USAGE;
	}
	signal(SIGPIPE, SIG_IGN);

	ret = c.takeover_path ? dev_take(&c) : dev_fresh(&c);
	if (ret)
		return 1;
	if (c.control_fd >= 0) {
		struct tk_give_opts go = {
			.name = c.name, .listen_fd = c.control_fd,
			.access = c.acc, .timeout_ms = c.takeover_timeout_ms,
			.srv = c.host.srv, .dma = c.dma,
		};

		ret = tk_give_start(&go, &give);
		if (ret) {
			/* Still a working server, only not updatable. */
			pr_err("%s: control socket disabled: %s", c.name,
			       strerror(-ret));
			close_safely(&c.control_fd);
			if (c.ctl_file[0])
				unlink(c.ctl_file);
			c.ctl_file[0] = '\0';
		}
		c.control_fd = -1;	/* the give thread's now */
	}

	g_srv = c.host.srv;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);

	ret = vfu_server_run(c.host.srv);
	handed = tk_give_handed_over(give);
	if (ret)
		fprintf(stderr, "ferry-dev: %s: server failed: %s\n", c.name,
			strerror(-ret));
	else if (handed)
		pr_info("%s: device handed over; exiting", c.name);
	else
		pr_info("%s: stopping", c.name);
	g_srv = NULL;
	tk_give_stop(give);

	/* The device threads may still call into the server: stop the
	 * device first. After a handover both only close and unmap this
	 * process's copies: the new process owns the device. */
	ferry_dma_destroy(c.dma);
	vfu_server_destroy(c.host.srv);
	if (!handed) {
		if (c.sock_file[0] && unlink(c.sock_file) < 0 &&
		    errno != ENOENT)
			pr_warn("%s: cannot remove %s: %s", c.name,
				c.sock_file, strerror(errno));
		if (c.ctl_file[0] && unlink(c.ctl_file) < 0 && errno != ENOENT)
			pr_warn("%s: cannot remove %s: %s", c.name,
				c.ctl_file, strerror(errno));
	}
	return ret ? 1 : 0;
}
