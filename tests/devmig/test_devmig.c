// SPDX-License-Identifier: BSD-3-Clause
/*
 * Device migration over vfio-user: two (or three) real ferry-dev
 * processes, the tools/devmig driver in between.
 *  1. migrate A->B with jobs running: device memory, RUNNING_CRC, ring
 *     state and completions match; the interrupt pending at switchover
 *     is delivered once, by B; the DMA dirty report covers every page
 *     the jobs wrote while logging, and a negative control that drops
 *     one page shows the coverage check catches it; again between two
 *     devices with the minimum device memory (64 KiB);
 *  2. B rejects a truncated, bit-flipped, wrong-magic, wrong-version and
 *     wrong-size stream, and DEVICE_RESET makes it usable again;
 *  3. a device with --dirty-rate reports dirty bytes in pre-copy.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "devmig.h"
#include "ferry/log.h"
#include "ferry/util.h"
#include "ferry/vfu_client.h"
#include "../check.h"

#define SKIP		77
#define START_WAIT_MS	10000
#define MAX_DEVS	6
#define MIG_BUF		(1u << 20)
/* Reads of MIG_BUF for the dirty-rate device's initial pass: its 4 MiB
 * and what it dirtied meanwhile, with room to spare. */
#define DIRTY_DRAIN_READS	64

static int failures;
static char tmpdir[64];
static pid_t pids[MAX_DEVS];
static int nr_pids;

static void sleep_ms(unsigned int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

/* Start ferry-dev on tmpdir/name; wait until its socket exists. */
static int spawn(const char *dev, const char *name, const char *extra1,
		 const char *extra2, char *path, size_t pathlen)
{
	struct stat st;
	pid_t pid;
	int waited;

	snprintf(path, pathlen, "%s/%s", tmpdir, name);
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		const char *argv[8] = { dev, "--socket", path, "--name", name };
		int i = 5;

		/* Never outlive the test, even if it is killed. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (extra1)
			argv[i++] = extra1;
		if (extra2)
			argv[i++] = extra2;
		execv(dev, (char **)argv);
		_exit(127);
	}
	pids[nr_pids++] = pid;
	for (waited = 0; waited < START_WAIT_MS; waited += 10) {
		if (stat(path, &st) == 0 && S_ISSOCK(st.st_mode))
			return 0;
		if (waitpid(pid, NULL, WNOHANG) == pid) {
			pids[nr_pids - 1] = 0;
			return -ECHILD;
		}
		sleep_ms(10);
	}
	return -ETIMEDOUT;
}

static void reap_all(void)
{
	int i, waited;

	for (i = 0; i < nr_pids; i++) {
		if (pids[i] <= 0)
			continue;
		kill(pids[i], SIGTERM);
		for (waited = 0; waited < 5000; waited += 10) {
			if (waitpid(pids[i], NULL, WNOHANG) == pids[i])
				break;
			sleep_ms(10);
		}
		if (waited >= 5000) {
			kill(pids[i], SIGKILL);
			waitpid(pids[i], NULL, 0);
		}
		pids[i] = 0;
	}
	nr_pids = 0;
}

static void cleanup_dir(void)
{
	char cmd[128];

	if (!tmpdir[0])
		return;
	/* Sockets are unlinked by ferry-dev on SIGTERM; remove leftovers
	 * of a killed one. */
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	if (system(cmd) != 0)
		fprintf(stderr, "cannot remove %s\n", tmpdir);
}

static void test_migrate(const char *a, const char *b)
{
	struct devmig_opts o = { .src_path = a, .dst_path = b };
	struct devmig_result r;
	uint64_t p, *dropped, words;
	int ret;

	ret = devmig_run(&o, &r);
	devmig_result_print(&r);
	CHECK(ret == 0, "driver: %s", r.why);
	CHECK(r.ok, "verdict: %s", r.why);
	CHECK(r.devmem_crc_src == r.devmem_crc_dst, "devmem crc");
	CHECK(r.running_crc_dev == r.running_crc_shadow, "running crc");
	CHECK(r.ring_state_equal, "ring state");
	CHECK(r.bad_completions == 0, "completions");
	CHECK(r.irq_src_after_stop == 0, "A signalled %llu after STOP",
	      (unsigned long long)r.irq_src_after_stop);
	CHECK(r.irq_dst_after_unmask == 1, "B signalled %llu (want 1)",
	      (unsigned long long)r.irq_dst_after_unmask);
	CHECK(r.precopy_bytes > 0 && r.stopcopy_bytes > 0, "data moved");
	CHECK(r.pages_truth > 0 && r.pages_missing == 0,
	      "dirty coverage: %llu written, %llu missing",
	      (unsigned long long)r.pages_truth,
	      (unsigned long long)r.pages_missing);

	/* Negative control: one written page dropped from the report must
	 * be caught by the same coverage check. */
	if (r.truth && r.reported) {
		words = DIV_ROUND_UP(r.nr_pages, 64);
		dropped = malloc(words * sizeof(*dropped));
		memcpy(dropped, r.reported, words * sizeof(*dropped));
		for (p = 0; p < r.nr_pages; p++)
			if (r.truth[p / 64] & (1ull << (p % 64)))
				break;
		CHECK(p < r.nr_pages, "a written page exists");
		if (p < r.nr_pages)
			dropped[p / 64] &= ~(1ull << (p % 64));
		CHECK(devmig_coverage_missing(r.truth, dropped, r.nr_pages) == 1,
		      "negative control: dropping page %llu must be detected",
		      (unsigned long long)p);
		free(dropped);
	}
	devmig_result_free(&r);
}

/* A driver that cannot reach its source cleans up only what it opened. */
static void test_unreachable(const char *b)
{
	struct devmig_opts o = { .src_path = "/nonexistent/ferry-dev.sock",
				 .dst_path = b };
	struct devmig_result r;
	int ret;

	/* With stdin closed, the lowest free fd is 0: make it open. */
	if (fcntl(STDIN_FILENO, F_GETFD) < 0)
		CHECK(open("/dev/null", O_RDONLY) == STDIN_FILENO, "fd 0");
	ret = devmig_run(&o, &r);
	CHECK(ret < 0 && !r.ok, "unreachable source fails: %d", ret);
	CHECK(fcntl(STDIN_FILENO, F_GETFD) >= 0,
	      "fd 0 still open after a failed run");
	devmig_result_free(&r);
}

/* A valid STOP_COPY stream of a fresh device, read over the socket. */
static int record_stream(const char *path, uint8_t **out, size_t *len)
{
	struct vfu_client *c;
	size_t cap = 8 * MIG_BUF;
	uint8_t *buf = malloc(cap);
	ssize_t n;
	int ret;

	*len = 0;
	ret = vfu_client_connect(path, NULL, &c);
	if (ret)
		return ret;
	ret = vfu_client_region_write(c, VFU_PCI_BAR2_REGION_INDEX, 100,
				      "state", 5);
	if (!ret)
		ret = vfu_client_mig_set_state(c, VFU_MIG_STATE_STOP_COPY);
	while (!ret) {
		if (cap - *len < MIG_BUF) {
			cap *= 2;
			buf = realloc(buf, cap);
		}
		n = vfu_client_mig_read(c, buf + *len, MIG_BUF);
		if (n <= 0) {
			ret = (int)n;
			break;
		}
		*len += (size_t)n;
	}
	if (!ret)
		ret = vfu_client_mig_set_state(c, VFU_MIG_STATE_RUNNING);
	vfu_client_close(c);
	*out = buf;
	return ret;
}

static void expect_reject(const char *path, const char *what,
			  const uint8_t *buf, size_t len)
{
	enum vfu_mig_state st = VFU_MIG_STATE_ERROR;
	struct vfu_client *c;
	int wr, ret;

	ret = vfu_client_connect(path, NULL, &c);
	CHECK(ret == 0, "%s: connect %d", what, ret);
	if (ret)
		return;
	ret = vfu_client_mig_set_state(c, VFU_MIG_STATE_RESUMING);
	CHECK(ret == 0, "%s: RESUMING %d", what, ret);
	wr = len ? vfu_client_mig_write(c, buf, len) : 0;
	ret = vfu_client_mig_set_state(c, VFU_MIG_STATE_STOP);
	CHECK(ret < 0, "%s: RESUMING->STOP accepted (write %d)", what, wr);
	CHECK(vfu_client_reset(c) == 0, "%s: reset", what);
	CHECK(vfu_client_mig_get_state(c, &st) == 0 &&
	      st == VFU_MIG_STATE_RUNNING, "%s: state after reset %d", what,
	      st);
	vfu_client_close(c);
}

static void test_bad_streams(const char *src, const char *dst,
			     const char *big)
{
	uint8_t *s = NULL, *bad;
	size_t len, off;
	int ret;

	ret = record_stream(src, &s, &len);
	CHECK(ret == 0 && len > 48, "record stream: %d, %zu bytes", ret, len);
	if (ret || len <= 48) {
		free(s);
		return;
	}
	bad = malloc(len);
	expect_reject(dst, "truncated header", s, 20);
	expect_reject(dst, "truncated", s, len - 10);
	memcpy(bad, s, len);
	bad[0] ^= 0xff;
	expect_reject(dst, "wrong magic", bad, len);
	memcpy(bad, s, len);
	bad[8]++;
	expect_reject(dst, "wrong major version", bad, len);
	for (off = 30; off < len; off += len / 7) {
		memcpy(bad, s, len);
		bad[off] ^= 0x10;
		expect_reject(dst, "bit flip", bad, len);
	}
	expect_reject(big, "device memory size mismatch", s, len);

	/* Control: after all that, the intact stream loads on dst. */
	{
		struct vfu_client *c;

		ret = vfu_client_connect(dst, NULL, &c);
		if (!ret) {
			ret = vfu_client_mig_set_state(c, VFU_MIG_STATE_RESUMING);
			if (!ret)
				ret = vfu_client_mig_write(c, s, len);
			if (!ret)
				ret = vfu_client_mig_set_state(c,
						VFU_MIG_STATE_RUNNING);
			vfu_client_close(c);
		}
		CHECK(ret == 0, "intact stream loads after rejections: %d",
		      ret);
	}
	free(bad);
	free(s);
}

static void test_dirty_rate(const char *path)
{
	struct vfu_feature_precopy_info info = { 0 };
	struct vfu_client *c;
	uint8_t *buf = malloc(MIG_BUF);
	int i, ret;

	ret = vfu_client_connect(path, NULL, &c);
	CHECK(ret == 0, "connect %d", ret);
	if (ret) {
		free(buf);
		return;
	}
	ret = vfu_client_mig_set_state(c, VFU_MIG_STATE_PRE_COPY);
	CHECK(ret == 0, "PRE_COPY %d", ret);
	/* The initial pass. Bounded: a device dirtying 64 MB/s outruns a
	 * slow reader (ASan), whose pre-copy data then never runs dry. */
	for (i = 0; !ret && i < DIRTY_DRAIN_READS; i++)
		if (vfu_client_mig_read(c, buf, MIG_BUF) <= 0)
			break;
	/* Bounded poll: the device dirties its memory every few ms. */
	for (i = 0; !ret && i < 500; i++) {
		if (vfu_client_precopy_info(c, &info) == 0 && info.dirty_bytes)
			break;
		sleep_ms(10);
	}
	CHECK(info.dirty_bytes > 0, "device with --dirty-rate reports dirty "
	      "bytes");
	printf("dirty-rate device: %llu dirty bytes after the initial pass\n",
	       (unsigned long long)info.dirty_bytes);
	vfu_client_mig_set_state(c, VFU_MIG_STATE_RUNNING);
	vfu_client_close(c);
	free(buf);
}

int main(void)
{
	const char *dev = getenv("FERRY_DEV");
	char a[128], b[128], big[128], dirty[128], s1[128], s2[128];
	int ret;

	log_init("test_devmig");
	signal(SIGPIPE, SIG_IGN);
	if (!dev || access(dev, X_OK)) {
		fprintf(stderr, "SKIP: FERRY_DEV not set to ferry-dev\n");
		return SKIP;
	}
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/ferry-devmig-XXXXXX");
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		return 1;
	}
	ret = spawn(dev, "a", NULL, NULL, a, sizeof(a));
	if (!ret)
		ret = spawn(dev, "b", NULL, NULL, b, sizeof(b));
	if (!ret)
		ret = spawn(dev, "big", "--device-memory", "8M", big,
			    sizeof(big));
	if (!ret)
		ret = spawn(dev, "dirty", "--dirty-rate", "64M", dirty,
			    sizeof(dirty));
	/* The smallest device memory: smaller than the driver's jobs. */
	if (!ret)
		ret = spawn(dev, "small1", "--device-memory", "64K", s1,
			    sizeof(s1));
	if (!ret)
		ret = spawn(dev, "small2", "--device-memory", "64K", s2,
			    sizeof(s2));
	if (ret) {
		fprintf(stderr, "cannot start ferry-dev: %s\n", strerror(-ret));
		reap_all();
		cleanup_dir();
		return 1;
	}

	test_migrate(a, b);
	test_migrate(s1, s2);
	test_unreachable(b);
	test_bad_streams(a, b, big);
	test_dirty_rate(dirty);

	reap_all();
	cleanup_dir();
	if (failures) {
		fprintf(stderr, "%d check(s) failed\n", failures);
		return 1;
	}
	printf("device migration tests passed\n");
	return 0;
}
