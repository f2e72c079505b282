// SPDX-License-Identifier: BSD-3-Clause
/*
 * ferry-dev: a vfio-user device server hosting one ferry-dma device on a
 * UNIX socket. The model's host ops are bound to the server's DMA and IRQ
 * services here; everything else is the model's and the server's.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ferry/log.h"
#include "ferry/util.h"
#include "ferry/vfu_server.h"
#include "ferry_dma.h"

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

static int host_irq_trigger(void *host, uint32_t vector)
{
	struct dev_host *h = host;

	return vfu_server_irq_trigger(h->srv, VFU_PCI_MSIX_IRQ_INDEX, vector);
}

static const struct ferry_dma_host_ops dev_host_ops = {
	.dma_read = host_dma_read,
	.dma_write = host_dma_write,
	.irq_trigger = host_irq_trigger,
};

static void on_signal(int sig)
{
	if (g_srv)
		vfu_server_stop(g_srv);
}

static void usage(FILE *f)
{
	fprintf(f,
"usage: ferry-dev --socket PATH [options]\n"
"\n"
"Serve one vfio-user device on a UNIX socket.\n"
"\n"
"  -s, --socket PATH         listening socket (required)\n"
"  -m, --model NAME          device model: dma (default)\n"
"  -n, --name NAME           device name for logs (default: socket name)\n"
"      --device-memory SIZE  BAR2 size, power of two >= 64K (default 4M)\n"
"      --msix-vectors N      MSI-X vectors, 1..%u (default %u)\n"
"      --dirty-rate BYTES    device dirties its own memory, bytes/s (0)\n"
"      --load-latency MS     delay after the resume header is loaded (0)\n"
"      --no-precopy          offer no PRE_COPY: all state at the switchover\n"
"      --socket-mode MODE    file mode of the socket (octal, default 0600\n"
"                            whatever the umask)\n"
"      --allow-uid UID       a user besides this one and root who may\n"
"                            connect (others are refused by SO_PEERCRED)\n"
"  -v, --verbose             debug logging\n"
"  -h, --help                this text\n",
		FERRY_DMA_MAX_VECTORS, FERRY_DMA_DEFAULT_VECTORS);
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
	OPT_DIRTY,
	OPT_LATENCY,
	OPT_NO_PRECOPY,
	OPT_SOCK_MODE,
	OPT_ALLOW_UID,
};

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "model", required_argument, NULL, 'm' },
		{ "name", required_argument, NULL, 'n' },
		{ "device-memory", required_argument, NULL, OPT_DEVMEM },
		{ "msix-vectors", required_argument, NULL, OPT_VECTORS },
		{ "dirty-rate", required_argument, NULL, OPT_DIRTY },
		{ "load-latency", required_argument, NULL, OPT_LATENCY },
		{ "no-precopy", no_argument, NULL, OPT_NO_PRECOPY },
		{ "socket-mode", required_argument, NULL, OPT_SOCK_MODE },
		{ "allow-uid", required_argument, NULL, OPT_ALLOW_UID },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct sock_access acc = SOCK_ACCESS_PRIVATE;
	struct ferry_dma_config cfg = { 0 };
	struct vfu_device_desc desc;
	struct dev_host host = { 0 };
	struct ferry_dma *dma;
	struct sigaction sa;
	const char *socket_path = NULL, *name = NULL;
	char err[160], namebuf[64];
	uint64_t v;
	int opt, ret;

	log_init(argv[0]);
	while ((opt = getopt_long(argc, argv, "s:m:n:vh", opts, NULL)) != -1) {
		switch (opt) {
		case 's':
			socket_path = optarg;
			break;
		case 'm':
			if (strcmp(optarg, "dma")) {
				fprintf(stderr, "ferry-dev: unknown model '%s' "
					"(known: dma)\n", optarg);
				return EXIT_USAGE;
			}
			break;
		case 'n':
			name = optarg;
			break;
		case OPT_DEVMEM:
			if (parse_size(optarg, &v) || !v) {
				fprintf(stderr, "ferry-dev: --device-memory: "
					"bad size '%s'\n", optarg);
				return EXIT_USAGE;
			}
			cfg.devmem_size = v;
			break;
		case OPT_VECTORS:
			if (parse_u64(optarg, &v) || v < 1 ||
			    v > FERRY_DMA_MAX_VECTORS) {
				fprintf(stderr, "ferry-dev: --msix-vectors: "
					"'%s' is not 1..%u\n", optarg,
					FERRY_DMA_MAX_VECTORS);
				return EXIT_USAGE;
			}
			cfg.msix_vectors = (uint32_t)v;
			break;
		case OPT_DIRTY:
			if (parse_size(optarg, &v)) {
				fprintf(stderr, "ferry-dev: --dirty-rate: bad "
					"rate '%s'\n", optarg);
				return EXIT_USAGE;
			}
			cfg.dirty_rate = v;
			break;
		case OPT_LATENCY:
			if (parse_u64(optarg, &v) || v > MAX_LOAD_LATENCY_MS) {
				fprintf(stderr, "ferry-dev: --load-latency: "
					"'%s' is not 0..%u ms\n", optarg,
					MAX_LOAD_LATENCY_MS);
				return EXIT_USAGE;
			}
			cfg.load_latency_ms = (uint32_t)v;
			break;
		case OPT_NO_PRECOPY:
			cfg.no_precopy = true;
			break;
		case OPT_SOCK_MODE:
			if (parse_sock_mode(optarg, &acc.mode)) {
				fprintf(stderr, "ferry-dev: --socket-mode: '%s' "
					"is not an octal mode with owner rw\n",
					optarg);
				return EXIT_USAGE;
			}
			break;
		case OPT_ALLOW_UID:
			if (parse_uid(optarg, &acc.allow_uid)) {
				fprintf(stderr, "ferry-dev: --allow-uid: '%s' is "
					"not a numeric uid\n", optarg);
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
	if (!socket_path) {
		fprintf(stderr, "ferry-dev: --socket PATH is required\n");
		usage(stderr);
		return EXIT_USAGE;
	}
	if (ferry_dma_config_check(&cfg, err, sizeof(err))) {
		fprintf(stderr, "ferry-dev: %s\n", err);
		return EXIT_USAGE;
	}
	if (!name) {
		const char *slash = strrchr(socket_path, '/');

		snprintf(namebuf, sizeof(namebuf), "dma@%s",
			 slash ? slash + 1 : socket_path);
		name = namebuf;
	}
	cfg.name = name;

	ret = ferry_dma_create(&cfg, &dev_host_ops, &host, &dma);
	if (ret) {
		fprintf(stderr, "ferry-dev: %s: cannot create device: %s\n",
			name, strerror(-ret));
		return 1;
	}
	ferry_dma_describe(dma, &desc);
	host.srv = vfu_server_create(&desc, NULL);
	if (!host.srv) {
		fprintf(stderr, "ferry-dev: %s: cannot create server\n", name);
		ret = -ENOMEM;
		goto err_destroy_dma;
	}
	ret = vfu_server_listen(host.srv, socket_path, &acc);
	if (ret) {
		fprintf(stderr, "ferry-dev: %s: cannot listen on %s: %s\n",
			name, socket_path, strerror(-ret));
		goto err_destroy_srv;
	}

	g_srv = host.srv;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	pr_info("%s: serving on %s (device memory %" PRIu64 " bytes, %u "
		"MSI-X vectors, dirty rate %" PRIu64 " B/s, load latency %u "
		"ms%s)", name, socket_path, ferry_dma_devmem_size(dma),
		cfg.msix_vectors ? cfg.msix_vectors : FERRY_DMA_DEFAULT_VECTORS,
		cfg.dirty_rate, cfg.load_latency_ms,
		cfg.no_precopy ? ", no pre-copy" : "");
	ret = vfu_server_run(host.srv);
	if (ret)
		fprintf(stderr, "ferry-dev: %s: server failed: %s\n", name,
			strerror(-ret));
	else
		pr_info("%s: stopping", name);
	g_srv = NULL;

err_destroy_srv:
	/* The device threads may still call into the server: stop the
	 * device first. */
	ferry_dma_destroy(dma);
	dma = NULL;
	vfu_server_destroy(host.srv);
	if (unlink(socket_path) < 0 && errno != ENOENT)
		pr_warn("%s: cannot remove %s: %s", name, socket_path,
			strerror(errno));
	return ret ? 1 : 0;

err_destroy_dma:
	ferry_dma_destroy(dma);
	return 1;
}
