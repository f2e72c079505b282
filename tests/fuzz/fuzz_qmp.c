// SPDX-License-Identifier: BSD-3-Clause
/*
 * Fuzz target: ferry-vmm's QMP server (vmm/qmp.c: the incremental JSON
 * parser, resynchronisation, the dispatcher, argument checks) and the
 * QMP face of migration (vmm/migration.c, with libferry's real engine:
 * parameters, capabilities, query-migrate). The input is what a client
 * sends: the target connects to the QMP socket, the server accepts it
 * from its epoll loop (driven here as main.c drives it), the input goes
 * in, the client shuts its sending side and the replies are drained
 * until the server hangs up.
 *
 * The VM around it is a stand-in: a run state machine (prelaunch,
 * running, paused, shutdown) for stop/cont/quit/query-status, one
 * passthrough device for query-pci, and an incoming migration pending
 * while the VM is in prelaunch. Nothing leaves the process: the engine's
 * mig_save_start() is replaced at link time (-Wl,--wrap) by one that
 * only parses the URI, and migrate-incoming only parses its URI too.
 * Every input starts from a fresh VM in prelaunch with default
 * migration parameters.
 */
#include <errno.h>
#include <json-c/json.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "ferry/mig_engine.h"
#include "ferry/util.h"
#include "fuzz.h"
#include "fuzz_qmp.h"
#include "incoming.h"
#include "migration.h"
#include "qmp.h"
#include "vfio_pci.h"
#include "vm_mig.h"
#include "reset.h"
#include "vmm.h"

#define FZQ_WAIT_MS		2000	/* only a hang waits this long */
#define FZQ_RAM_SIZE		(64ull << 20)

static struct vm vm;
static struct vdev fake_vdev = { .id = (char *)"dma0" };
static int fake_pci;		/* a distinct address for vm.devs[0] */
static struct mig_params default_params;
static int epfd = -1;
static char qmp_path[108];

/* ---- the VM stand-in (vmm.h, vm.h, vfio_pci.h, incoming.h) ---- */

enum vm_run_state vm_run_state(struct vm *v)
{
	return v->state;
}

uint64_t vm_pause_ns(struct vm *v)
{
	return v->pause_ns;
}

bool vm_user_stop(struct vm *v)
{
	if (v->state != VM_STATE_RUNNING)
		return false;
	v->state = VM_STATE_PAUSED;
	return true;
}

bool vm_user_cont(struct vm *v)
{
	if (v->state != VM_STATE_PAUSED && v->state != VM_STATE_PRELAUNCH)
		return false;
	v->state = VM_STATE_RUNNING;
	return true;
}

void vm_request_exit(struct vm *v, int status, const char *reason)
{
	/* The main loop would tear down now; the state says so. */
	v->state = VM_STATE_SHUTDOWN;
}

int vm_system_reset(struct vm *v, char *err, size_t errlen)
{
	/* The real refusals (migration.c); a reset itself is the VM's. */
	const char *why = migration_reset_refusal(v);

	if (why) {
		snprintf(err, errlen, "%s", why);
		return -EBUSY;
	}
	return 0;
}

uint64_t vm_ram_size(struct vm *v)
{
	return FZQ_RAM_SIZE;
}

struct vdev *vfio_pci_vdev(struct vfio_pci *dev)
{
	return &fake_vdev;
}

struct json_object *vfio_pci_describe(struct vfio_pci *dev)
{
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, "id", json_object_new_string("dma0"));
	json_object_object_add(o, "backend",
			       json_object_new_string("vfio-user"));
	json_object_object_add(o, "slot", json_object_new_int(3));
	json_object_object_add(o, "vendor-id", json_object_new_int(0xfe44));
	json_object_object_add(o, "device-id", json_object_new_int(0xd0a1));
	return o;
}

/* A VM started with --incoming defer waits in prelaunch. */
bool incoming_pending(struct vm *v)
{
	return v->state == VM_STATE_PRELAUNCH;
}

int incoming_start(struct vm *v, const char *uri, char *err, size_t errlen)
{
	struct mig_uri u;

	return mig_uri_parse(uri, &u, err, errlen);
}

/* The engine is never started (see the wrapper below): no host op runs;
 * ram_describe fails in case one ever does. */
static int no_ram(void *host, struct mig_ram *ram)
{
	return -ENOSYS;
}

const struct mig_host_ops vm_mig_host_ops = {
	.ram_describe = no_ram,
};

int __wrap_mig_save_start(struct mig_engine *e, const char *uri, char *err,
			  size_t errlen);

/* migrate: the URI is parsed as the engine would, nothing connects. */
int __wrap_mig_save_start(struct mig_engine *e, const char *uri, char *err,
			  size_t errlen)
{
	struct mig_uri u;
	int ret;

	if (!uri) {
		snprintf(err, errlen, "no migration URI");
		return -EINVAL;
	}
	ret = mig_uri_parse(uri, &u, err, errlen);
	if (ret)
		return ret;
	snprintf(err, errlen, "fuzz: not migrating to %s", uri);
	return -ECONNREFUSED;
}

static void forward_event(void *opaque, const char *name,
			  struct json_object *data)
{
	qmp_emit(vm.qmp, name, data);
}

/* ---- the main loop ---- */

static void teardown(void)
{
	qmp_destroy(vm.qmp);
	migration_fini(&vm);
	close_safely(&epfd);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	char err[256];

	if (epfd >= 0)
		return 0;
	fuzz_log_init();
	signal(SIGPIPE, SIG_IGN);
	vm.sock_access = SOCK_ACCESS_PRIVATE;
	vm.devs[0] = (struct vfio_pci *)&fake_pci;
	vm.nr_devs = 1;
	vm.event_fn = forward_event;
	epfd = epoll_create1(EPOLL_CLOEXEC);
	fuzz_tmp_path(qmp_path, sizeof(qmp_path), "qmp.sock");
	if (epfd < 0 || migration_init(&vm, err, sizeof(err)) ||
	    qmp_create(&vm, epfd, qmp_path, &vm.qmp, err, sizeof(err))) {
		fprintf(stderr, "fuzz-qmp: set-up failed: %s\n", err);
		abort();
	}
	mig_engine_get_params(vm.mig->engine, &default_params);
	atexit(teardown);
	return 0;
}

/* Serve whatever is ready; false if nothing was within ms. */
bool fzq_serve(int ms)
{
	struct epoll_event ev[8];
	int n = epoll_wait(epfd, ev, ARRAY_SIZE(ev), ms);

	for (int i = 0; i < n; i++) {
		struct vm_poll_src *src = ev[i].data.ptr;

		src->fn(src, ev[i].events);
	}
	return n > 0;
}

const char *fzq_socket(void)
{
	return qmp_path;
}

void fzq_reset(void)
{
	char err[256];

	LLVMFuzzerInitialize(NULL, NULL);
	vm.state = VM_STATE_PRELAUNCH;
	vm.mig->return_path = false;
	if (mig_engine_set_params(vm.mig->engine, &default_params, err,
				  sizeof(err)))
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	uint64_t deadline;
	size_t sent = 0;
	int fd;

	fzq_reset();
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", qmp_path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)))
		abort();
	if (!size)
		shutdown(fd, SHUT_WR);
	/* Until the server hangs up: it reads to our EOF, then closes. */
	deadline = clock_ns() + FZQ_WAIT_MS * 1000000ull;
	for (;;) {
		char buf[4096];
		ssize_t n;
		bool eof = false;

		if (sent < size) {
			n = send(fd, data + sent, size - sent, MSG_NOSIGNAL);
			if (n > 0)
				sent += (size_t)n;
			if (sent == size)
				shutdown(fd, SHUT_WR);
		}
		while ((n = recv(fd, buf, sizeof(buf), 0)) > 0)
			;
		if (n == 0 || (n < 0 && errno != EAGAIN))
			eof = true;
		if (eof)
			break;
		if (fzq_serve(sent < size ? 0 : 10)) {
			deadline = clock_ns() + FZQ_WAIT_MS * 1000000ull;
		} else if (clock_ns() > deadline) {
			fprintf(stderr, "fuzz-qmp: the server stopped "
				"reading\n");
			abort();
		}
	}
	close(fd);
	return 0;
}
