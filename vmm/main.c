// SPDX-License-Identifier: BSD-3-Clause
/*
 * ferry-vmm: command line, VM assembly, the main loop (QMP, signals, exit
 * requests) and an orderly teardown on every path.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <json-c/json.h>

#include "cpr.h"
#include "debug_exit.h"
#include "incoming.h"
#include "migration.h"
#include "ferry/log.h"
#include "ferry/mig_channel.h"
#include "ferry/util.h"
#include "multiboot.h"
#include "reset.h"
#include "pci.h"
#include "qmp.h"
#include "serial.h"
#include "ferry/vdev.h"
#include "vfio_pci.h"
#include "vmm.h"

#define EXIT_USAGE		2
#define DEFAULT_MEMORY		(128 * MiB)
#define ERR_LEN			512
#define CMDLINE_MAX		4096

struct dev_opt {
	char *id;
	char *location;		/* vfio-user socket, or sysfs path */
	bool kernel;			/* vfio-pci: Linux's VFIO */
	struct vdev_kernel_opts kopts;
};

struct opts {
	uint64_t memory;
	unsigned cpus;
	const char *kernel;
	const char *append;
	const char *qmp_path;
	const char *serial_file;	/* NULL: stdio */
	const char *incoming;		/* migration URI or "defer" */
	char incoming_buf[256];		/* ...from a JSON main channel */
	char cpr_path[108];		/* live update: the cpr channel */
	struct sock_access sock_access;	/* --socket-mode, --allow-uid */
	struct dev_opt devs[VM_MAX_DEVICES];
	unsigned nr_devs;
	const char *name;		/* --name, for query-name */
	char uuid[VM_UUID_LEN + 1];	/* --uuid, lower case */
	bool verbose;
	bool exit_after_migrate;	/* --exit-after-migrate */
};

static void usage(FILE *f)
{
	fprintf(f,
"Usage: ferry-vmm --kernel ELF [options]\n"
"       ferry-vmm --incoming URI [options]\n"
"\n"
"Run a multiboot (ELF32) kernel in a KVM virtual machine.\n"
"\n"
"  -k, --kernel ELF        multiboot v1 kernel to boot (required unless\n"
"                          --incoming)\n"
"  -a, --append STR        kernel command line arguments\n"
"  -m, --memory SIZE       guest RAM, e.g. 256M, 1G (default 128M)\n"
"  -c, --cpus N            number of vCPUs, 1..%u (default 1)\n"
"  -d, --device vfio-user,socket=PATH,id=NAME\n"
"                          attach a vfio-user PCI device (repeatable, max %u)\n"
"  -d, --device vfio-pci,host=DDDD:BB:DD.F|sysfsdev=PATH[,id=NAME]\n"
"                [,iommufd=on|off][,dirty=all-mapped]\n"
"                          pass through a device bound to Linux's vfio-pci\n"
"                          or an mdev (docs/kernel-vfio.md)\n"
"  -q, --qmp unix:PATH     QMP control socket\n"
"  -s, --serial stdio|file:PATH\n"
"                          where the COM1 console goes (default stdio)\n"
"  -i, --incoming URI      receive a live migration instead of booting:\n"
"                          tcp:HOST:PORT, unix:PATH, file:PATH, or defer\n"
"                          (then QMP migrate-incoming gives the URI); or a\n"
"                          QEMU channel object, e.g. for live update:\n"
"                          '{\"channel-type\":\"cpr\",\"addr\":{\"transport\":\n"
"                          \"socket\",\"type\":\"unix\",\"path\":\"P\"}}' (given\n"
"                          beside the main one: take over the VM of the\n"
"                          process that migrates to P; docs/cpr.md)\n"
"      --socket-mode MODE  file mode of the QMP and unix: migration sockets\n"
"                          (octal, default 0600 whatever the umask)\n"
"      --allow-uid UID     a user besides this one and root who may connect\n"
"                          to them (others are refused by SO_PEERCRED)\n"
"      --name NAME         the VM's name (QMP query-name)\n"
"      --uuid UUID         the VM's UUID (QMP query-uuid)\n"
"      --exit-after-migrate\n"
"                          exit 0 once an outgoing migration handed the guest\n"
"                          over (default: stay in postmigrate until QMP quit,\n"
"                          as QEMU)\n"
"  -v, --verbose           debug logging\n"
"  -h, --help              show this help\n"
"\n"
"Exit status: the value the guest writes to port 0xf4 (0 = pass), 0 after\n"
"QMP quit or SIGTERM/SIGINT, 1 if the VM failed, 2 for configuration errors.\n",
		VM_MAX_CPUS, VM_MAX_DEVICES);
}

/* What query-name may return: printable ASCII, as QEMU's -name. */
static bool name_ok(const char *s)
{
	size_t n = strlen(s);

	if (!n || n > VM_NAME_MAX)
		return false;
	for (; *s; s++)
		if (*s < 0x20 || *s > 0x7e)
			return false;
	return true;
}

/* 8-4-4-4-12 hex digits (QEMU's -uuid form), stored in lower case. */
static int parse_uuid(const char *s, char out[VM_UUID_LEN + 1])
{
	if (strlen(s) != VM_UUID_LEN)
		return -EINVAL;
	for (unsigned i = 0; i < VM_UUID_LEN; i++) {
		bool dash = i == 8 || i == 13 || i == 18 || i == 23;

		if (dash ? s[i] != '-' : !isxdigit((unsigned char)s[i]))
			return -EINVAL;
		out[i] = (char)tolower((unsigned char)s[i]);
	}
	out[VM_UUID_LEN] = '\0';
	return 0;
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
	va_list ap;

	fputs("ferry-vmm: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputs("\nTry 'ferry-vmm --help' for more information.\n", stderr);
	return -EINVAL;
}

/* One property of a vfio-pci device. */
static int parse_kernel_prop(struct dev_opt *d, const char *spec,
			     const char *tok)
{
	const char *v = strchr(tok, '=') + 1;
	char path[PATH_MAX];

	if (!strncmp(tok, "host=", 5)) {
		if (!*v || strchr(v, '/'))
			return usage_error("--device '%s': host= wants a PCI "
					   "address, e.g. 0000:01:00.0", spec);
		/* QEMU accepts the domain-less form too. */
		snprintf(path, sizeof(path), "/sys/bus/pci/devices/%s%s",
			 strchr(v, ':') == strrchr(v, ':') ? "0000:" : "", v);
	} else if (!strncmp(tok, "sysfsdev=", 9)) {
		snprintf(path, sizeof(path), "%s", v);
	} else if (!strcmp(tok, "iommufd=on") || !strcmp(tok, "iommufd=off")) {
		d->kopts.iommu = tok[9] == 'n' ? VDEV_KERNEL_IOMMUFD :
				 VDEV_KERNEL_CONTAINER;
		return 0;
	} else if (!strcmp(tok, "dirty=all-mapped")) {
		d->kopts.dirty_all_mapped = true;
		return 0;
	} else {
		return usage_error("--device '%s': unknown property '%s'",
				   spec, tok);
	}
	free(d->location);
	d->location = strdup(path);
	return d->location ? 0 : -ENOMEM;
}

/*
 * "vfio-user,socket=PATH,id=NAME" or
 * "vfio-pci,host=ADDR|sysfsdev=PATH[,id=NAME][,iommufd=on|off]
 *  [,dirty=all-mapped]"
 */
static int parse_device(struct opts *o, const char *spec)
{
	struct dev_opt *d;
	char *copy, *tok, *save = NULL;
	int ret = 0;

	if (o->nr_devs == VM_MAX_DEVICES)
		return usage_error("at most %u devices", VM_MAX_DEVICES);
	copy = strdup(spec);
	if (!copy)
		return -ENOMEM;
	d = &o->devs[o->nr_devs];
	tok = strtok_r(copy, ",", &save);
	if (!tok || (strcmp(tok, "vfio-user") && strcmp(tok, "vfio-pci"))) {
		ret = usage_error("--device '%s': the device types are "
				  "'vfio-user' and 'vfio-pci'", spec);
		goto out_free;
	}
	d->kernel = !strcmp(tok, "vfio-pci");
	while ((tok = strtok_r(NULL, ",", &save))) {
		if (!strchr(tok, '=')) {
			ret = usage_error("--device '%s': '%s' is not "
					  "NAME=VALUE", spec, tok);
			goto out_free;
		}
		if (!strncmp(tok, "id=", 3)) {
			free(d->id);
			d->id = strdup(tok + 3);
			ret = d->id ? 0 : -ENOMEM;
		} else if (d->kernel) {
			ret = parse_kernel_prop(d, spec, tok);
		} else if (!strncmp(tok, "socket=", 7)) {
			free(d->location);
			d->location = strdup(tok + 7);
			ret = d->location ? 0 : -ENOMEM;
		} else {
			ret = usage_error("--device '%s': unknown property "
					  "'%s'", spec, tok);
		}
		if (ret)
			goto out_free;
	}
	if (d->kernel && d->location && (!d->id || !*d->id)) {
		/* QEMU's id is optional: name it after the device. */
		free(d->id);
		d->id = strdup(strrchr(d->location, '/') ?
			       strrchr(d->location, '/') + 1 : d->location);
		if (!d->id) {
			ret = -ENOMEM;
			goto out_free;
		}
	}
	if (!d->location || !*d->location || !d->id || !*d->id) {
		ret = usage_error(d->kernel ? "--device '%s': needs host=ADDR "
				  "or sysfsdev=PATH" : "--device '%s': needs "
				  "socket=PATH and id=NAME", spec);
		goto out_free;
	}
	for (unsigned i = 0; i < o->nr_devs; i++) {
		if (!strcmp(o->devs[i].id, d->id)) {
			ret = usage_error("--device: duplicate id '%s'", d->id);
			goto out_free;
		}
	}
	o->nr_devs++;
out_free:
	if (ret) {
		free(d->location);
		free(d->id);
		memset(d, 0, sizeof(*d));
	}
	free(copy);
	return ret;
}

static void opts_free(struct opts *o)
{
	for (unsigned i = 0; i < VM_MAX_DEVICES; i++) {
		free(o->devs[i].id);
		free(o->devs[i].location);
	}
}

/* A URI, "defer", or a QEMU channel object (main or cpr); repeatable
 * once per channel type. */
static int parse_incoming(struct opts *o, const char *arg)
{
	char uri[sizeof(o->incoming_buf)], err[256];
	struct json_object *chan;
	bool cpr;
	int ret;

	if (arg[0] != '{') {
		if (o->incoming)
			return usage_error("--incoming given twice");
		o->incoming = arg;
		return 0;
	}
	chan = json_tokener_parse(arg);
	ret = chan ? mig_uri_from_channel(chan, &cpr, uri, sizeof(uri), err,
					  sizeof(err)) : -EINVAL;
	json_object_put(chan);
	if (!chan)
		return usage_error("--incoming '%s': not JSON", arg);
	if (ret)
		return usage_error("--incoming '%s': %s", arg, err);
	if (cpr) {
		if (strncmp(uri, "unix:", 5))
			return usage_error("--incoming: the cpr channel must "
					   "be a unix socket");
		if (o->cpr_path[0])
			return usage_error("--incoming: two cpr channels");
		/* mig_uri_parse() bounded the path to a sun_path. */
		memcpy(o->cpr_path, uri + 5, MIN(strlen(uri + 5) + 1,
						 sizeof(o->cpr_path) - 1));
		return 0;
	}
	if (o->incoming)
		return usage_error("--incoming given twice");
	snprintf(o->incoming_buf, sizeof(o->incoming_buf), "%s", uri);
	o->incoming = o->incoming_buf;
	return 0;
}

static int parse_args(struct opts *o, int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "kernel", required_argument, NULL, 'k' },
		{ "append", required_argument, NULL, 'a' },
		{ "memory", required_argument, NULL, 'm' },
		{ "cpus", required_argument, NULL, 'c' },
		{ "device", required_argument, NULL, 'd' },
		{ "qmp", required_argument, NULL, 'q' },
		{ "serial", required_argument, NULL, 's' },
		{ "incoming", required_argument, NULL, 'i' },
		{ "socket-mode", required_argument, NULL, 'M' },
		{ "allow-uid", required_argument, NULL, 'U' },
		{ "name", required_argument, NULL, 'N' },
		{ "uuid", required_argument, NULL, 'u' },
		{ "exit-after-migrate", no_argument, NULL, 'X' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	unsigned long n;
	char *end;
	int c, ret;

	o->memory = DEFAULT_MEMORY;
	o->cpus = 1;
	o->sock_access = SOCK_ACCESS_PRIVATE;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":k:a:m:c:d:q:s:i:vh", longopts,
				NULL)) != -1) {
		switch (c) {
		case 'k':
			o->kernel = optarg;
			break;
		case 'a':
			o->append = optarg;
			break;
		case 'm':
			if (parse_size(optarg, &o->memory) || !o->memory)
				return usage_error("--memory '%s': not a size (e.g. 256M, 1G)",
						   optarg);
			if (o->memory < 2 * MiB || o->memory > 1024 * GiB ||
			    !IS_ALIGNED(o->memory, 4096))
				return usage_error("--memory '%s': must be a multiple of 4K between 2M and 1T",
						   optarg);
			break;
		case 'c':
			errno = 0;
			n = strtoul(optarg, &end, 10);
			if (errno || end == optarg || *end || *optarg == '-' ||
			    n < 1 || n > VM_MAX_CPUS)
				return usage_error("--cpus '%s': must be a number from 1 to %u",
						   optarg, VM_MAX_CPUS);
			o->cpus = (unsigned)n;
			break;
		case 'd':
			ret = parse_device(o, optarg);
			if (ret)
				return ret;
			break;
		case 'q':
			if (strncmp(optarg, "unix:", 5) || !optarg[5])
				return usage_error("--qmp '%s': expected unix:PATH",
						   optarg);
			o->qmp_path = optarg + 5;
			break;
		case 's':
			if (!strcmp(optarg, "stdio"))
				o->serial_file = NULL;
			else if (!strncmp(optarg, "file:", 5) && optarg[5])
				o->serial_file = optarg + 5;
			else
				return usage_error("--serial '%s': expected stdio or file:PATH",
						   optarg);
			break;
		case 'i':
			ret = parse_incoming(o, optarg);
			if (ret)
				return ret;
			break;
		case 'M':
			if (parse_sock_mode(optarg, &o->sock_access.mode))
				return usage_error("--socket-mode '%s': expected "
						   "an octal mode with owner "
						   "rw, e.g. 0660", optarg);
			break;
		case 'U':
			if (parse_uid(optarg, &o->sock_access.allow_uid))
				return usage_error("--allow-uid '%s': expected a "
						   "numeric uid", optarg);
			break;
		case 'N':
			if (!name_ok(optarg))
				return usage_error("--name '%s': 1 to %d "
						   "printable characters",
						   optarg, VM_NAME_MAX);
			o->name = optarg;
			break;
		case 'u':
			if (parse_uuid(optarg, o->uuid))
				return usage_error("--uuid '%s': expected "
						   "xxxxxxxx-xxxx-xxxx-xxxx-"
						   "xxxxxxxxxxxx (hex)", optarg);
			break;
		case 'v':
			o->verbose = true;
			break;
		case 'X':
			o->exit_after_migrate = true;
			break;
		case 'h':
			usage(stdout);
			exit(0);
		case ':':
			return usage_error("option '%s' needs an argument",
					   argv[optind - 1]);
		default:
			return usage_error("unknown option '%s'",
					   argv[optind - 1]);
		}
	}
	if (optind < argc)
		return usage_error("unexpected argument '%s'", argv[optind]);
	if (o->cpr_path[0] && !o->incoming)
		return usage_error("--incoming with a cpr channel needs the main "
				   "channel too (another --incoming: a URI or "
				   "defer)");
	if (!o->kernel && !o->incoming)
		return usage_error("--kernel ELF is required (or --incoming URI)");
	if (o->kernel && o->incoming)
		return usage_error("--kernel and --incoming exclude each other: "
				   "an incoming VM gets its state from the "
				   "source");
	return 0;
}

/* ---- main loop sources ---- */

struct main_ctx {
	struct vm vm;
	int epfd;
	int sig_fd;
	struct vm_poll_src wake_src;
	struct vm_poll_src sig_src;
	struct serial *serial;
};

static void wake_event(struct vm_poll_src *src, uint32_t events)
{
	struct main_ctx *m = container_of(src, struct main_ctx, wake_src);
	uint64_t v;

	if (read(m->vm.wake_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		pr_warn("wake eventfd: %s", strerror(errno));
}

static void signal_event(struct vm_poll_src *src, uint32_t events)
{
	struct main_ctx *m = container_of(src, struct main_ctx, sig_src);
	struct signalfd_siginfo si;

	if (read(m->sig_fd, &si, sizeof(si)) != sizeof(si))
		return;
	pr_info("received %s, shutting down", strsignal((int)si.ssi_signo));
	vm_request_exit(&m->vm, 0, "host-signal");
}

static int poll_add(struct main_ctx *m, int fd, struct vm_poll_src *src)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = src };

	return epoll_ctl(m->epfd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

static void main_loop(struct main_ctx *m)
{
	/* One event per wait: a handler may free another source's object
	 * (a QMP client), so never hold a batch of stale pointers. */
	while (!atomic_load(&m->vm.exit_requested)) {
		struct epoll_event ev;
		int n = epoll_wait(m->epfd, &ev, 1, -1);

		if (n < 0 && errno != EINTR) {
			pr_err("epoll_wait: %s", strerror(errno));
			vm_request_exit(&m->vm, VM_EXIT_ERROR, "host-error");
			break;
		}
		if (n == 1) {
			struct vm_poll_src *src = ev.data.ptr;

			src->fn(src, ev.events);
		}
	}
}

static int build_cmdline(const struct opts *o, char *buf, size_t len)
{
	int n;

	/* Like GRUB and QEMU: the kernel's name, then its arguments. */
	n = snprintf(buf, len, "%s%s%s", o->kernel, o->append ? " " : "",
		     o->append ? o->append : "");
	return n < 0 || (size_t)n >= len ? -E2BIG : 0;
}

static int open_serial(struct main_ctx *m, const struct opts *o)
{
	int fd = STDOUT_FILENO, ret;

	if (o->serial_file) {
		fd = open(o->serial_file, O_WRONLY | O_CREAT | O_TRUNC |
			  O_CLOEXEC, 0644);
		if (fd < 0) {
			fprintf(stderr, "ferry-vmm: serial file %s: %s\n",
				o->serial_file, strerror(errno));
			return -errno;
		}
	}
	ret = serial_create(&m->vm, fd, o->serial_file != NULL, &m->serial);
	if (ret) {
		if (o->serial_file)
			close(fd);
		fprintf(stderr, "ferry-vmm: serial: %s\n", strerror(-ret));
	}
	return ret;
}

/* The VM's event sink: the QMP socket, once there is one. */
static void emit_to_qmp(void *opaque, const char *name,
			struct json_object *data)
{
	struct vm *vm = opaque;

	qmp_emit(vm->qmp, name, data);
}

/* Everything a configuration error can hit; exit status 2 on failure. */
static int vmm_setup(struct main_ctx *m, const struct opts *o,
		     struct cpr_in *cpr)
{
	struct vm *vm = &m->vm;
	char err[ERR_LEN], cmdline[CMDLINE_MAX];
	struct mb_boot boot;
	int ram_fd = -1;
	sigset_t sigs;
	int ret;

	if (o->kernel && build_cmdline(o, cmdline, sizeof(cmdline))) {
		fprintf(stderr, "ferry-vmm: --append: command line too long\n");
		return -E2BIG;
	}
	if (cpr) {
		/* Live update: the old process's machine, over its RAM. */
		if (!o->incoming) {
			fprintf(stderr, "ferry-vmm: a live update needs "
				"--incoming (file:PATH, a socket, or defer)\n");
			return -EINVAL;
		}
		ret = cpr_in_check(cpr, o->memory, o->cpus, o->nr_devs, err,
				   sizeof(err));
		if (ret) {
			fprintf(stderr, "ferry-vmm: live update: %s\n", err);
			return ret;
		}
		ram_fd = cpr_in_take_ram(cpr);
		if (ram_fd < 0) {
			fprintf(stderr, "ferry-vmm: live update: guest RAM was "
				"not handed over\n");
			return -ENOENT;
		}
	}
	ret = vm_create(vm, o->memory, o->cpus, ram_fd, err, sizeof(err));
	if (ret) {
		fprintf(stderr, "ferry-vmm: cannot create the VM: %s\n", err);
		return ret;
	}
	vm->event_fn = emit_to_qmp;
	vm->event_opaque = vm;
	vm->sock_access = o->sock_access;
	if (o->name)
		snprintf(vm->name, sizeof(vm->name), "%s", o->name);
	memcpy(vm->uuid, o->uuid, sizeof(vm->uuid));
	ret = vcpus_create(vm);
	if (ret) {
		fprintf(stderr, "ferry-vmm: cannot create vCPUs: %s\n",
			strerror(-ret));
		return ret;
	}
	if (o->kernel) {
		ret = multiboot_load(vm, o->kernel, cmdline, &boot, err,
				     sizeof(err));
		if (ret) {
			fprintf(stderr, "ferry-vmm: bad kernel %s: %s\n",
				o->kernel, err);
			return ret;
		}
		ret = vcpu_set_boot_state(&vm->vcpus[0], boot.entry,
					  MB_BOOTLOADER_MAGIC, boot.info);
		if (ret) {
			fprintf(stderr, "ferry-vmm: cannot set the boot vCPU "
				"state: %s\n", strerror(-ret));
			return ret;
		}
		/* What system_reset goes back to. */
		ret = vm_reset_snapshot(vm, err, sizeof(err));
		if (ret) {
			fprintf(stderr, "ferry-vmm: %s\n", err);
			return ret;
		}
	}
	ret = open_serial(m, o);
	if (ret)
		return ret;
	vm->serial = m->serial;
	ret = debug_exit_init(vm);
	if (ret) {
		fprintf(stderr, "ferry-vmm: exit port: %s\n", strerror(-ret));
		return ret;
	}
	vm->pci = pci_bus_create(vm);
	if (!vm->pci) {
		fprintf(stderr, "ferry-vmm: cannot create the PCI bus\n");
		return -ENOMEM;
	}
	for (unsigned i = 0; i < o->nr_devs; i++) {
		struct vdev *vdev;

		if (cpr)
			ret = cpr_in_adopt_device(vm, vm->pci, cpr, i,
						  o->devs[i].id,
						  o->devs[i].location,
						  &vm->devs[vm->nr_devs], err,
						  sizeof(err));
		else if (o->devs[i].kernel)
			ret = vdev_vfio_kernel_open(o->devs[i].id,
						    o->devs[i].location,
						    &o->devs[i].kopts, &vdev,
						    err, sizeof(err));
		else
			ret = vdev_vfio_user_open(o->devs[i].id,
						  o->devs[i].location, &vdev,
						  err, sizeof(err));
		if (!ret && !cpr)
			ret = vfio_pci_create(vm, vm->pci, vdev,
					      &vm->devs[vm->nr_devs], err,
					      sizeof(err));
		if (ret) {
			fprintf(stderr, "ferry-vmm: device %s (%s): %s\n",
				o->devs[i].id, o->devs[i].location, err);
			return ret;
		}
		vm->nr_devs++;
	}
	ret = migration_init(vm, err, sizeof(err));
	if (ret) {
		fprintf(stderr, "ferry-vmm: %s\n", err);
		return ret;
	}
	migration_set_exit_after(vm, o->exit_after_migrate);
	if (cpr) {
		ret = migration_cpr_incoming(vm, cpr->mode, cpr->id);
		if (ret)
			return ret;
	}

	m->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (m->epfd < 0) {
		ret = -errno;
		fprintf(stderr, "ferry-vmm: epoll: %s\n", strerror(errno));
		return ret;
	}
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	m->sig_fd = signalfd(-1, &sigs, SFD_CLOEXEC | SFD_NONBLOCK);
	if (m->sig_fd < 0) {
		ret = -errno;
		fprintf(stderr, "ferry-vmm: signalfd: %s\n", strerror(errno));
		return ret;
	}
	m->wake_src.fn = wake_event;
	m->sig_src.fn = signal_event;
	ret = poll_add(m, vm->wake_fd, &m->wake_src);
	if (!ret)
		ret = poll_add(m, m->sig_fd, &m->sig_src);
	if (ret) {
		fprintf(stderr, "ferry-vmm: epoll: %s\n", strerror(-ret));
		return ret;
	}
	if (o->qmp_path) {
		ret = qmp_create(vm, m->epfd, o->qmp_path, &vm->qmp, err,
				 sizeof(err));
		if (ret) {
			fprintf(stderr, "ferry-vmm: %s\n", err);
			return ret;
		}
	}
	if (o->incoming) {
		ret = incoming_start(vm, o->incoming, err, sizeof(err));
		if (ret) {
			fprintf(stderr, "ferry-vmm: --incoming %s: %s\n",
				o->incoming, err);
			return ret;
		}
	}
	return 0;
}

/* Safe after a partial vmm_setup(). */
static void vmm_teardown(struct main_ctx *m)
{
	struct vm *vm = &m->vm;
	struct qmp *q = vm->qmp;

	/* The migration threads use vCPUs and devices: join them first. */
	migration_fini(vm);
	vcpus_stop(vm);
	if (q && atomic_load(&vm->exit_requested)) {
		struct json_object *d = json_object_new_object();

		json_object_object_add(d, "guest", json_object_new_boolean(
			!strncmp(vm->exit_reason, "guest", 5)));
		json_object_object_add(d, "reason",
				       json_object_new_string(vm->exit_reason));
		qmp_emit(q, "SHUTDOWN", d);
		json_object_put(d);
	}
	/* Devices before QMP: their threads may still emit events. */
	while (vm->nr_devs)
		vfio_pci_destroy(vm->devs[--vm->nr_devs]);
	if (vm->pci)
		pci_bus_destroy(vm->pci);
	vm->pci = NULL;
	vm->qmp = NULL;
	qmp_destroy(q);
	serial_destroy(m->serial);
	m->serial = NULL;
	vm->serial = NULL;
	vcpus_destroy(vm);
	vm_destroy(vm);
	close_safely(&m->sig_fd);
	close_safely(&m->epfd);
}

/* Live update: the old process's fds, from the cpr channel or across
 * exec, before anything is built. */
static int cpr_take(const struct opts *o, struct cpr_in *in, bool *have)
{
	char err[ERR_LEN];
	int ret;

	*have = false;
	if (o->cpr_path[0]) {
		ret = cpr_in_receive(o->cpr_path, &o->sock_access, in, err,
				     sizeof(err));
		*have = !ret;
	} else {
		ret = cpr_in_from_exec(in, have, err, sizeof(err));
	}
	if (ret)
		fprintf(stderr, "ferry-vmm: live update: %s\n", err);
	return ret;
}

int main(int argc, char **argv)
{
	static struct main_ctx m;
	struct opts o = { 0 };
	struct cpr_in cpr;
	bool have_cpr;
	sigset_t sigs;
	int ret, status;

	log_init(argv[0]);
	ret = parse_args(&o, argc, argv);
	if (ret) {
		opts_free(&o);
		return EXIT_USAGE;
	}
	if (o.verbose)
		log_set_level(LOG_LVL_DEBUG);

	/* Every thread (vCPUs, device workers) inherits this mask: signals
	 * are taken by signalfd on the main loop, and SIGUSR1 only by the
	 * vCPU threads that unblock it to leave KVM_RUN. */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	m.epfd = m.sig_fd = -1;
	ret = cpr_take(&o, &cpr, &have_cpr);
	if (!ret)
		ret = vmm_setup(&m, &o, have_cpr ? &cpr : NULL);
	/* What nobody took is closed (and reported). */
	if (have_cpr)
		cpr_in_free(&cpr);
	if (ret) {
		vmm_teardown(&m);
		opts_free(&o);
		return ret == -EINTR ? 0 : EXIT_USAGE;
	}
	/* An incoming VM runs when its state has arrived (incoming.c). */
	if (!o.incoming) {
		ret = vcpus_start(&m.vm);
		if (ret) {
			pr_err("cannot start vCPU threads: %s", strerror(-ret));
			vm_request_exit(&m.vm, VM_EXIT_ERROR, "host-error");
		}
		pr_debug("VM running: %llu MiB, %u vCPU(s), kernel %s",
			 (unsigned long long)(o.memory / MiB), o.cpus,
			 o.kernel);
	}
	main_loop(&m);
	status = m.vm.exit_status;
	vmm_teardown(&m);
	opts_free(&o);
	return status;
}
