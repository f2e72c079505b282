// SPDX-License-Identifier: BSD-3-Clause
/*
 * Live update of the device server: real ferry-dev processes, no KVM.
 *
 * A vfio-user client (libferry's) plays the VMM and the guest at once:
 * guest RAM is a memfd it maps for DMA, a second small region has no fd
 * (the server reaches it with DMA_READ/DMA_WRITE messages), two MSI-X
 * eventfds, BAR2 mmap'd. A job thread runs batches of DMA descriptors of
 * every kind without pause (lengths up to 8 slices, so takeovers land in
 * the middle of descriptors), half of them with the IRQ flag, and checks
 * every completion (cookie, status, CRC, sequence, running CRC), every
 * result, the device memory against a shadow after every batch, and the
 * interrupts: vector 0 must count exactly the flagged completions.
 *
 * Before each takeover the client leaves an ERROR interrupt pending (a
 * bad descriptor with the ERROR cause masked); after it, unmasking must
 * deliver it exactly once on vector 1, from the new process.
 *
 *  1. 20 takeovers in a row, each by a fresh ferry-dev --takeover; the
 *     old one must exit 0, the jobs never stop, RESETS stays 0, the fd
 *     count of this process does not move. Pause per takeover: the
 *     longest gap between two completions around it (client side) and
 *     the new server's paused_us (quiesce in the old to resume in the
 *     new), median and max printed.
 *  2. Failures before "taken": the new process SIGKILLed, a corrupted
 *     state blob, a missing fd, a new process too slow for the old one's
 *     timeout, different device options, a migration session open. Each
 *     time the new process exits non-zero, the old one serves on (jobs,
 *     the pending interrupt, registers) and the client saw only a stall.
 *  3. Negative controls: a new process that drops the pending IRQ state,
 *     and one that drops RING_TAIL; the same checks must catch both.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ferry/crc32c.h"
#include "ferry/ferry_dma_hw.h"
#include "ferry/log.h"
#include "ferry/util.h"
#include "ferry/vfu_client.h"
#include "../check.h"

#define SKIP		77
#define TAKEOVERS	20
#define START_WAIT_MS	10000
#define EXIT_WAIT_MS	20000
#define IRQ_WAIT_MS	5000
#define STEP_WAIT_MS	20000
#define OLD_TIMEOUT	"2000"		/* --takeover-timeout of every server */
#define STALL_MS	"3000"		/* a new process slower than that */

#define DEVMEM_SIZE	(1u << 20)
#define RAM_SIZE	(32u << 20)
#define RAM_IOVA	0x10000000ull
#define MSG_SIZE	(256u << 10)
#define MSG_IOVA	0x80000000ull
#define RING_ENTRIES	256u
#define BATCH_MAX	16u
#define SLOT		(512u << 10)	/* per job: up to 8 engine slices */
#define RING_OFF	0u
#define COMP_OFF	(64u << 10)
#define SRC_OFF		(1u << 20)
#define DST_OFF		(SRC_OFF + BATCH_MAX * SLOT)
#define DEV_SLOT	(DEVMEM_SIZE / BATCH_MAX)
#define MSG_SLOT	(MSG_SIZE / 2 / BATCH_MAX)
#define OP_BAD		0x7fu		/* completes with EINVAL */

static char tmpdir[64];
static const char *dev_bin;
static int failures;

static void sleep_us(unsigned int us)
{
	struct timespec ts = { us / 1000000, (long)(us % 1000000) * 1000L };

	nanosleep(&ts, NULL);
}

static uint64_t now_ns(void)
{
	return clock_ns();
}

static uint64_t xorshift(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*s = x;
	return x;
}

static void fill_random(uint8_t *p, size_t len, uint64_t *seed)
{
	while (len >= 8) {
		uint64_t v = xorshift(seed);

		memcpy(p, &v, 8);
		p += 8;
		len -= 8;
	}
	while (len--)
		*p++ = (uint8_t)xorshift(seed);
}

/* ---- ferry-dev processes ---- */

struct proc {
	pid_t pid;
	char log[128];
};

static int spawn(struct proc *p, const char *tag, const char *const *args)
{
	static unsigned int seq;
	const char *argv[24];
	int n = 0;

	snprintf(p->log, sizeof(p->log), "%s/%s-%u.log", tmpdir, tag, seq++);
	argv[n++] = dev_bin;
	while (*args && n < (int)ARRAY_SIZE(argv) - 1)
		argv[n++] = *args++;
	argv[n] = NULL;
	p->pid = fork();
	if (p->pid < 0)
		return -errno;
	if (p->pid == 0) {
		int fd = open(p->log, O_WRONLY | O_CREAT | O_TRUNC, 0600);

		/* Never outlive the test, even if it is killed. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (fd >= 0) {
			dup2(fd, STDERR_FILENO);
			close(fd);
		}
		execv(dev_bin, (char **)argv);
		_exit(127);
	}
	return 0;
}

/* Exit status (waitpid's) within timeout_ms, or -ETIMEDOUT. */
static int wait_exit(struct proc *p, unsigned int timeout_ms)
{
	for (unsigned int t = 0; t < timeout_ms; t += 5) {
		int st;

		if (waitpid(p->pid, &st, WNOHANG) == p->pid) {
			p->pid = 0;
			return st;
		}
		sleep_us(5000);
	}
	return -ETIMEDOUT;
}

static bool alive(const struct proc *p)
{
	return p->pid > 0 && waitpid(p->pid, NULL, WNOHANG) == 0;
}

static void stop(struct proc *p)
{
	if (p->pid <= 0)
		return;
	kill(p->pid, SIGTERM);
	if (wait_exit(p, 5000) == -ETIMEDOUT) {
		kill(p->pid, SIGKILL);
		waitpid(p->pid, NULL, 0);
		p->pid = 0;
	}
}

static char *read_log(const char *path)
{
	static char buf[65536];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;

	if (fd >= 0)
		close(fd);
	buf[n > 0 ? n : 0] = '\0';
	return buf;
}

static void dump_log(const char *path)
{
	fprintf(stderr, "--- %s\n%s", path, read_log(path));
}

/* A "key=N" the process logged (the line may come a little late). */
static int64_t log_value(const char *path, const char *key)
{
	for (int i = 0; i < 200; i++) {
		const char *p = strstr(read_log(path), key);

		if (p)
			return strtoll(p + strlen(key), NULL, 10);
		sleep_us(10000);
	}
	return -1;
}

/* ---- one device server and its client ---- */

struct run {
	const char *name;
	const char *extra;		/* an option every server gets */
	char sock[128], ctl[128];
	struct proc cur;		/* the process serving now */
	struct vfu_client *c;
	int ram_fd;
	uint8_t *ram;
	uint8_t *msgbuf;
	int efd[2];
	uint8_t *devmem;
	uint8_t shadow[DEVMEM_SIZE];
	uint64_t seed;

	/* job thread */
	pthread_t thread;
	bool thread_started;
	atomic_bool stop;
	uint32_t head;
	uint64_t seq, cookie;
	uint32_t run_crc;		/* RUNNING_CRC state shadow */
	uint64_t flagged, v0, v1, v1_expected, errors;
	atomic_uint_fast64_t batches, completions;
	/* main <-> job thread: leave an ERROR interrupt pending, then
	 * deliver it by unmasking; ring a heavy batch (the takeover then
	 * lands in the middle of a long descriptor) */
	atomic_int err_req, err_ready, unmask_req, unmask_done;
	atomic_int heavy_req, heavy_rung;
	/* the longest gap between two completions since main reset it */
	uint64_t last_ns;
	atomic_uint_fast64_t gap_max_ns;

	atomic_int failed;
	char why[512];
	bool quiet;			/* negative control: failure expected */
};

static void run_fail(struct run *r, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void run_fail(struct run *r, const char *fmt, ...)
{
	va_list ap;

	if (atomic_load(&r->failed))
		return;
	va_start(ap, fmt);
	vsnprintf(r->why, sizeof(r->why), fmt, ap);
	va_end(ap);
	atomic_store(&r->failed, 1);
	fprintf(stderr, "%s %s: %s\n", r->quiet ? "caught" : "FAIL", r->name,
		r->why);
}

static int reg_read(struct run *r, uint32_t off, uint32_t *v)
{
	return vfu_client_region_read(r->c, VFU_PCI_BAR0_REGION_INDEX, off, v,
				      4);
}

static int reg_write(struct run *r, uint32_t off, uint32_t v)
{
	return vfu_client_region_write(r->c, VFU_PCI_BAR0_REGION_INDEX, off,
				       &v, 4);
}

static uint64_t reg_read64(struct run *r, uint32_t lo)
{
	uint32_t a = 0, b = 0;

	reg_read(r, lo, &a);
	reg_read(r, lo + 4, &b);
	return a | (uint64_t)b << 32;
}

static const char *const *server_args(struct run *r, const char **a,
				      const char *mode, const char *path,
				      const char *fault)
{
	int n = 0;

	a[n++] = mode;
	a[n++] = path;
	if (!strcmp(mode, "--socket")) {
		a[n++] = "--control";
		a[n++] = r->ctl;
	}
	a[n++] = "--name";
	a[n++] = r->name;
	a[n++] = "--device-memory";
	a[n++] = r->extra ? r->extra : "1M";
	a[n++] = "--takeover-timeout";
	a[n++] = OLD_TIMEOUT;
	if (fault) {
		a[n++] = "--x-takeover-fault";
		a[n++] = fault;
	}
	a[n] = NULL;
	return a;
}

static int run_start_server(struct run *r)
{
	const char *a[16];
	struct stat st;
	int ret;

	snprintf(r->sock, sizeof(r->sock), "%s/%s.sock", tmpdir, r->name);
	snprintf(r->ctl, sizeof(r->ctl), "%s/%s.ctl", tmpdir, r->name);
	ret = spawn(&r->cur, r->name, server_args(r, a, "--socket", r->sock,
						  NULL));
	if (ret)
		return ret;
	for (int t = 0; t < START_WAIT_MS; t += 10) {
		if (stat(r->ctl, &st) == 0)
			return 0;
		if (!alive(&r->cur))
			return -ECHILD;
		sleep_us(10000);
	}
	return -ETIMEDOUT;
}

/* Client, DMA maps, eventfds, BAR2, registers. */
static int run_connect(struct run *r)
{
	struct vfu_client_region bar2;
	int ret;

	ret = vfu_client_connect(r->sock, NULL, &r->c);
	if (ret)
		return ret;
	r->ram_fd = memfd_create("takeover-ram", MFD_CLOEXEC);
	if (r->ram_fd < 0 || ftruncate(r->ram_fd, RAM_SIZE) < 0)
		return -errno;
	r->ram = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
		      r->ram_fd, 0);
	r->msgbuf = malloc(MSG_SIZE);
	if (r->ram == MAP_FAILED || !r->msgbuf)
		return -ENOMEM;
	fill_random(r->msgbuf, MSG_SIZE, &r->seed);
	ret = vfu_client_dma_map(r->c, RAM_IOVA, RAM_SIZE, r->ram_fd, 0,
				 VFU_DMA_FLAG_READ | VFU_DMA_FLAG_WRITE, r->ram);
	if (ret)
		return ret;
	/* No fd: the server reaches it with DMA_READ/DMA_WRITE messages. */
	ret = vfu_client_dma_map(r->c, MSG_IOVA, MSG_SIZE, -1, 0,
				 VFU_DMA_FLAG_READ | VFU_DMA_FLAG_WRITE,
				 r->msgbuf);
	if (ret)
		return ret;
	for (int i = 0; i < 2; i++) {
		r->efd[i] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (r->efd[i] < 0)
			return -errno;
	}
	ret = vfu_client_set_irqs(r->c, VFU_PCI_MSIX_IRQ_INDEX, 0, 2, r->efd);
	if (ret)
		return ret;
	ret = vfu_client_region_info(r->c, VFU_PCI_BAR2_REGION_INDEX, &bar2);
	if (ret)
		return ret;
	if (bar2.fd < 0 || bar2.size != DEVMEM_SIZE) {
		vfu_client_region_release(&bar2);
		return -EPROTO;
	}
	/* The guest's direct mapping of device memory: it must stay valid
	 * across every takeover (the memfd moves, it is not copied). */
	r->devmem = mmap(NULL, DEVMEM_SIZE, PROT_READ | PROT_WRITE,
			 MAP_SHARED, bar2.fd, (off_t)bar2.fd_offset);
	vfu_client_region_release(&bar2);
	if (r->devmem == MAP_FAILED)
		return -errno;
	fill_random(r->devmem, DEVMEM_SIZE, &r->seed);
	memcpy(r->shadow, r->devmem, DEVMEM_SIZE);

	r->run_crc = CRC32C_INIT;
	ret = reg_write(r, FERRY_DMA_REG_IRQ_MASK, FERRY_DMA_IRQ_ERROR);
	if (!ret)
		ret = reg_write(r, FERRY_DMA_REG_RING_BASE_LO,
				(uint32_t)(RAM_IOVA + RING_OFF));
	if (!ret)
		ret = reg_write(r, FERRY_DMA_REG_RING_BASE_HI,
				(uint32_t)((RAM_IOVA + RING_OFF) >> 32));
	if (!ret)
		ret = reg_write(r, FERRY_DMA_REG_RING_SIZE, RING_ENTRIES);
	if (!ret)
		ret = reg_write(r, FERRY_DMA_REG_CTRL, FERRY_DMA_CTRL_ENABLE);
	return ret;
}

/* ---- the job thread ---- */

struct job {
	uint32_t op;
	bool irq;
	uint64_t src, dst, len, pattern, cookie;
	uint32_t crc;			/* expected completion CRC */
	uint32_t run;			/* expected RUNNING_CRC after it */
	uint8_t *dst_ptr;		/* where the client sees the result */
	const uint8_t *src_ptr;
};

static uint32_t job_bytes_crc(const struct run *r, const struct job *j,
			      uint32_t crc)
{
	uint8_t pat[4096];

	uint64_t left;

	switch (j->op) {
	case FERRY_DMA_OP_FILL:
		for (size_t i = 0; i < sizeof(pat); i += 8)
			memcpy(pat + i, &j->pattern, 8);
		for (left = j->len; left; ) {
			size_t n = MIN(left, (uint64_t)sizeof(pat));

			crc = crc32c_update(crc, pat, n);
			left -= n;
		}
		return crc;
	case FERRY_DMA_OP_FROM_DEV:
		return crc32c_update(crc, r->shadow + j->src, j->len);
	default:
		return crc32c_update(crc, j->src_ptr, j->len);
	}
}

/* Job k of a batch: its own source, destination, device and message
 * slots, so that results within a batch never overlap. */
static void job_build(struct run *r, unsigned int k, struct job *j)
{
	uint64_t pick = xorshift(&r->seed) % 16;
	uint64_t maxlen = (xorshift(&r->seed) & 3) ? 64u << 10 : SLOT;
	uint8_t *src = r->ram + SRC_OFF + (size_t)k * SLOT;
	uint8_t *dst = r->ram + DST_OFF + (size_t)k * SLOT;

	memset(j, 0, sizeof(*j));
	j->len = 1 + xorshift(&r->seed) % maxlen;
	j->irq = xorshift(&r->seed) & 1;
	j->pattern = xorshift(&r->seed);
	if (pick < 4) {
		j->op = FERRY_DMA_OP_COPY;
	} else if (pick < 7) {
		j->op = FERRY_DMA_OP_FILL;
	} else if (pick < 9) {
		j->op = FERRY_DMA_OP_CRC;
	} else if (pick < 11) {
		j->op = FERRY_DMA_OP_TO_DEV;
	} else if (pick < 13) {
		j->op = FERRY_DMA_OP_FROM_DEV;
	} else if (pick < 14) {
		/* CRC of the message-based region: DMA_READ messages */
		j->op = FERRY_DMA_OP_CRC;
		j->len = 1 + j->len % (MSG_SIZE / 2);
		j->src = MSG_IOVA + xorshift(&r->seed) %
			 (MSG_SIZE / 2 - j->len + 1);
		j->src_ptr = r->msgbuf + (j->src - MSG_IOVA);
		return;
	} else if (pick < 15) {
		/* FILL into it: DMA_WRITE messages */
		j->op = FERRY_DMA_OP_FILL;
		j->len = 1 + j->len % MSG_SLOT;
		j->dst = MSG_IOVA + MSG_SIZE / 2 + (uint64_t)k * MSG_SLOT;
		j->dst_ptr = r->msgbuf + (j->dst - MSG_IOVA);
		return;
	} else {
		j->op = FERRY_DMA_OP_COPY;
	}
	if (j->op == FERRY_DMA_OP_TO_DEV || j->op == FERRY_DMA_OP_FROM_DEV)
		j->len = 1 + j->len % DEV_SLOT;
	j->src = RAM_IOVA + SRC_OFF + (uint64_t)k * SLOT;
	j->dst = RAM_IOVA + DST_OFF + (uint64_t)k * SLOT;
	j->src_ptr = src;
	j->dst_ptr = dst;
	if (j->op == FERRY_DMA_OP_TO_DEV) {
		j->dst = (uint64_t)k * DEV_SLOT;
		j->dst_ptr = NULL;
	}
	if (j->op == FERRY_DMA_OP_FROM_DEV)
		j->src = (uint64_t)k * DEV_SLOT;
	if (j->op == FERRY_DMA_OP_COPY || j->op == FERRY_DMA_OP_CRC ||
	    j->op == FERRY_DMA_OP_TO_DEV)
		fill_random(src, j->len, &r->seed);
}

static void desc_put(struct run *r, struct job *j)
{
	uint32_t slot = r->head % RING_ENTRIES;
	struct ferry_dma_desc d = {
		.op = j->op, .flags = j->irq ? FERRY_DMA_DESC_F_IRQ : 0,
		.src = j->src, .dst = j->dst, .len = j->len,
		.pattern = j->pattern,
		.completion = RAM_IOVA + COMP_OFF +
			      slot * sizeof(struct ferry_dma_completion),
	};

	j->cookie = ++r->cookie;
	d.cookie = j->cookie;
	memset(r->ram + COMP_OFF + slot * sizeof(struct ferry_dma_completion),
	       0, sizeof(struct ferry_dma_completion));
	memcpy(r->ram + RING_OFF + slot * sizeof(d), &d, sizeof(d));
	r->head++;
}

static uint64_t efd_take(int fd)
{
	uint64_t v = 0;

	if (read(fd, &v, sizeof(v)) != sizeof(v))
		return 0;
	return v;
}

static void note_completion(struct run *r)
{
	uint64_t now = now_ns();

	if (r->last_ns && now - r->last_ns > atomic_load(&r->gap_max_ns))
		atomic_store(&r->gap_max_ns, now - r->last_ns);
	r->last_ns = now;
	atomic_fetch_add(&r->completions, 1);
}

/* Wait for completion slot of job j; false on timeout or stop. */
static bool wait_completion(struct run *r, uint32_t idx,
			    struct ferry_dma_completion *out)
{
	volatile struct ferry_dma_completion *c =
		(volatile void *)(r->ram + COMP_OFF + (idx % RING_ENTRIES) *
				  sizeof(struct ferry_dma_completion));
	uint64_t end = now_ns() + STEP_WAIT_MS * 1000000ull;

	while (now_ns() < end) {
		if (c->seq) {
			struct ferry_dma_completion again;

			/* One 32-byte store after the data, in principle;
			 * two equal reads make sure it is whole. */
			__atomic_thread_fence(__ATOMIC_ACQUIRE);
			memcpy(out, (const void *)c, sizeof(*out));
			sleep_us(1);
			memcpy(&again, (const void *)c, sizeof(again));
			if (out->cookie && !memcmp(out, &again, sizeof(again)))
				return true;
		}
		sleep_us(50);
	}
	return false;
}

static bool check_job(struct run *r, const struct job *j,
		      const struct ferry_dma_completion *c)
{
	bool bad_op = j->op == OP_BAD;
	uint8_t pat[4096];

	r->seq++;
	if (c->cookie != j->cookie || c->seq != r->seq ||
	    c->status != (bad_op ? FERRY_DMA_ST_EINVAL : FERRY_DMA_ST_OK) ||
	    c->crc != (bad_op ? 0 : j->crc) ||
	    c->running_crc != crc32c_final(j->run)) {
		run_fail(r, "bad completion: op %u len %" PRIu64 " cookie %"
			 PRIu64 "/%" PRIu64 " seq %" PRIu64 "/%" PRIu64
			 " status %d crc 0x%08x/0x%08x running 0x%08" PRIx64
			 "/0x%08x", j->op, j->len, c->cookie, j->cookie,
			 c->seq, r->seq, c->status, c->crc, j->crc,
			 c->running_crc, crc32c_final(j->run));
		return false;
	}
	switch (j->op) {
	case FERRY_DMA_OP_COPY:
		if (memcmp(j->dst_ptr, j->src_ptr, j->len))
			goto bad_data;
		break;
	case FERRY_DMA_OP_FILL:
		for (size_t i = 0; i < sizeof(pat); i += 8)
			memcpy(pat + i, &j->pattern, 8);
		for (uint64_t i = 0; i < j->len; i += sizeof(pat))
			if (memcmp(j->dst_ptr + i, pat,
				   MIN(j->len - i, (uint64_t)sizeof(pat))))
				goto bad_data;
		break;
	case FERRY_DMA_OP_TO_DEV:
		memcpy(r->shadow + j->dst, j->src_ptr, j->len);
		if (memcmp(r->devmem + j->dst, j->src_ptr, j->len))
			goto bad_data;
		break;
	case FERRY_DMA_OP_FROM_DEV:
		if (memcmp(j->dst_ptr, r->shadow + j->src, j->len))
			goto bad_data;
		break;
	}
	if (j->irq && !bad_op)
		r->flagged++;
	if (bad_op)
		r->errors++;
	return true;

bad_data:
	run_fail(r, "op %u cookie %" PRIu64 " len %" PRIu64 ": wrong data",
		 j->op, j->cookie, j->len);
	return false;
}

/* Interrupts settle to exactly what is expected: never more (checked
 * at once), and the rest within IRQ_WAIT_MS. */
static bool irqs_settle(struct run *r)
{
	uint64_t end = now_ns() + IRQ_WAIT_MS * 1000000ull;

	for (;;) {
		r->v0 += efd_take(r->efd[0]);
		r->v1 += efd_take(r->efd[1]);
		if (r->v0 > r->flagged || r->v1 > r->v1_expected) {
			run_fail(r, "spurious interrupt: vector 0 %" PRIu64
				 " for %" PRIu64 " flagged, vector 1 %" PRIu64
				 " for %" PRIu64, r->v0, r->flagged, r->v1,
				 r->v1_expected);
			return false;
		}
		if (r->v0 == r->flagged && r->v1 == r->v1_expected)
			return true;
		if (now_ns() > end) {
			run_fail(r, "lost interrupt: vector 0 %" PRIu64 " for %"
				 PRIu64 " flagged, vector 1 %" PRIu64 " for %"
				 PRIu64 " expected", r->v0, r->flagged, r->v1,
				 r->v1_expected);
			return false;
		}
		sleep_us(100);
	}
}

/* Unmask the ERROR cause: the one pending must arrive, once. */
static bool deliver_pending_error(struct run *r)
{
	uint32_t st = 0;

	r->v1_expected++;
	if (reg_write(r, FERRY_DMA_REG_IRQ_MASK, 0) ||
	    reg_read(r, FERRY_DMA_REG_IRQ_STATUS, &st) ||
	    reg_write(r, FERRY_DMA_REG_IRQ_STATUS, FERRY_DMA_IRQ_ERROR) ||
	    reg_write(r, FERRY_DMA_REG_IRQ_MASK, FERRY_DMA_IRQ_ERROR)) {
		run_fail(r, "register access failed");
		return false;
	}
	if (!(st & FERRY_DMA_IRQ_ERROR)) {
		run_fail(r, "IRQ_STATUS 0x%x lost the pending ERROR", st);
		return false;
	}
	return irqs_settle(r);
}

static bool batch_run(struct run *r)
{
	struct job jobs[BATCH_MAX];
	unsigned int n = 4 + xorshift(&r->seed) % (BATCH_MAX - 3);
	bool with_error = atomic_load(&r->err_req) &&
			  !atomic_load(&r->err_ready);
	bool heavy = atomic_load(&r->heavy_req) && !atomic_load(&r->heavy_rung);
	struct ferry_dma_completion c;
	uint32_t first = r->head, off;
	uint8_t chunk[256];

	if (atomic_load(&r->unmask_req) && !atomic_load(&r->unmask_done)) {
		if (!deliver_pending_error(r))
			return false;
		atomic_store(&r->unmask_done, 1);
	}
	for (unsigned int k = 0; k < n; k++)
		job_build(r, k, &jobs[k]);
	if (heavy) {
		/* Whole-slot FILLs: cheap to check here, long for the
		 * engine (8 slices each, the pattern made byte by byte). */
		n = BATCH_MAX;
		for (unsigned int k = 0; k < n; k++) {
			struct job *j = &jobs[k];

			memset(j, 0, sizeof(*j));
			j->op = FERRY_DMA_OP_FILL;
			j->dst = RAM_IOVA + DST_OFF + (uint64_t)k * SLOT;
			j->dst_ptr = r->ram + DST_OFF + (size_t)k * SLOT;
			j->len = SLOT;
			j->pattern = xorshift(&r->seed);
			j->irq = k & 1;
		}
	}
	if (with_error) {
		struct job *j = &jobs[n - 1];

		memset(j, 0, sizeof(*j));
		j->op = OP_BAD;
		j->len = 1;
		j->irq = true;	/* an error never signals vector 0 */
	}
	/* Expected values first: once the doorbell rings, this thread only
	 * watches, so a gap between completions is the device's. */
	for (unsigned int k = 0; k < n; k++) {
		desc_put(r, &jobs[k]);
		if (jobs[k].op != OP_BAD) {
			jobs[k].crc = crc32c_final(job_bytes_crc(r, &jobs[k],
								 CRC32C_INIT));
			r->run_crc = job_bytes_crc(r, &jobs[k], r->run_crc);
		}
		jobs[k].run = r->run_crc;
	}
	__atomic_thread_fence(__ATOMIC_RELEASE);
	if (reg_write(r, FERRY_DMA_REG_RING_HEAD, r->head)) {
		run_fail(r, "doorbell failed");
		return false;
	}
	if (heavy)
		atomic_store(&r->heavy_rung, 1);
	for (unsigned int k = 0; k < n; k++) {
		if (!wait_completion(r, first + k, &c)) {
			run_fail(r, "no completion for cookie %" PRIu64
				 " within %u ms", jobs[k].cookie, STEP_WAIT_MS);
			return false;
		}
		note_completion(r);
		if (!check_job(r, &jobs[k], &c))
			return false;
	}
	if (!irqs_settle(r))
		return false;
	if (crc32c(r->devmem, DEVMEM_SIZE) != crc32c(r->shadow, DEVMEM_SIZE)) {
		run_fail(r, "device memory differs from its shadow");
		return false;
	}
	if (with_error)
		atomic_store(&r->err_ready, 1);
	/* The guest writes device memory directly; a FROM_DEV of a later
	 * batch reads it back through the device. */
	off = (uint32_t)(xorshift(&r->seed) % (DEVMEM_SIZE - sizeof(chunk)));
	fill_random(chunk, sizeof(chunk), &r->seed);
	memcpy(r->devmem + off, chunk, sizeof(chunk));
	memcpy(r->shadow + off, chunk, sizeof(chunk));
	atomic_fetch_add(&r->batches, 1);
	return true;
}

static void *job_thread(void *arg)
{
	struct run *r = arg;

	while (!atomic_load(&r->stop) && !atomic_load(&r->failed))
		if (!batch_run(r))
			break;
	return NULL;
}

static bool wait_flag(struct run *r, atomic_int *flag)
{
	uint64_t end = now_ns() + (uint64_t)STEP_WAIT_MS * 2 * 1000000ull;

	while (!atomic_load(flag)) {
		if (atomic_load(&r->failed) || now_ns() > end)
			return false;
		sleep_us(200);
	}
	return true;
}

/* At least n more batches, all checked. */
static bool wait_batches(struct run *r, unsigned int n)
{
	uint64_t want = atomic_load(&r->batches) + n;
	uint64_t end = now_ns() + (uint64_t)STEP_WAIT_MS * 2 * 1000000ull;

	while (atomic_load(&r->batches) < want) {
		if (atomic_load(&r->failed) || now_ns() > end)
			return false;
		sleep_us(200);
	}
	return true;
}

static int run_setup(struct run *r, const char *name, uint64_t seed)
{
	int ret;

	memset(r, 0, sizeof(*r));
	r->name = name;
	r->seed = seed;
	r->ram_fd = r->efd[0] = r->efd[1] = -1;
	ret = run_start_server(r);
	if (ret) {
		fprintf(stderr, "%s: cannot start ferry-dev: %s\n", name,
			strerror(-ret));
		return ret;
	}
	ret = run_connect(r);
	if (ret) {
		fprintf(stderr, "%s: client set-up failed: %s\n", name,
			strerror(-ret));
		dump_log(r->cur.log);
		return ret;
	}
	ret = -pthread_create(&r->thread, NULL, job_thread, r);
	if (ret)
		return ret;
	r->thread_started = true;
	return wait_batches(r, 3) ? 0 : -ETIMEDOUT;
}

static void run_teardown(struct run *r)
{
	atomic_store(&r->stop, true);
	if (r->thread_started)
		pthread_join(r->thread, NULL);
	r->thread_started = false;
	if (r->c)
		vfu_client_close(r->c);
	r->c = NULL;
	stop(&r->cur);
	if (r->devmem && r->devmem != MAP_FAILED)
		munmap(r->devmem, DEVMEM_SIZE);
	if (r->ram && r->ram != MAP_FAILED)
		munmap(r->ram, RAM_SIZE);
	free(r->msgbuf);
	close_safely(&r->ram_fd);
	close_safely(&r->efd[0]);
	close_safely(&r->efd[1]);
}

/* ---- takeovers ---- */

struct tk_result {
	bool ok;			/* what was expected happened */
	double gap_ms;			/* longest completion gap around it */
	int64_t paused_us;		/* the new server's figure */
	int64_t in_flight;		/* a descriptor was cut in the middle */
	int64_t quiesce_us, taken_us;	/* the old server's figures */
};

/*
 * One takeover attempt under load. expect_taken: the new process must
 * take the device and the old exit 0; else the new one must fail and the
 * old serve on. Either way the pending ERROR interrupt must then arrive
 * once, and jobs go on.
 */
static struct tk_result takeover(struct run *r, bool ctl, bool heavy,
				 const char *fault, const char *devmem,
				 bool expect_taken)
{
	struct tk_result res = { .paused_us = -1, .in_flight = -1 };
	const char *a[16];
	struct proc nw;
	int st;

	atomic_store(&r->err_ready, 0);
	atomic_store(&r->err_req, 1);
	if (!wait_flag(r, &r->err_ready) || !wait_batches(r, 1))
		return res;
	atomic_store(&r->err_req, 0);
	atomic_store(&r->gap_max_ns, 0);
	if (heavy) {
		atomic_store(&r->heavy_rung, 0);
		atomic_store(&r->heavy_req, 1);
		if (!wait_flag(r, &r->heavy_rung))
			return res;
		atomic_store(&r->heavy_req, 0);
	}

	if (!ctl) {
		/* Baseline: the same window, no takeover in it. */
		goto deliver;
	}
	r->extra = devmem;
	server_args(r, a, "--takeover", r->ctl, fault);
	r->extra = NULL;
	if (spawn(&nw, "new", a)) {
		run_fail(r, "cannot start ferry-dev --takeover");
		return res;
	}
	if (expect_taken) {
		st = wait_exit(&r->cur, EXIT_WAIT_MS);
		if (st == -ETIMEDOUT || !WIFEXITED(st) || WEXITSTATUS(st)) {
			run_fail(r, "old server: %s %d after the takeover",
				 st == -ETIMEDOUT ? "still running" :
				 WIFEXITED(st) ? "exit" : "signal",
				 st == -ETIMEDOUT ? 0 : WIFEXITED(st) ?
				 WEXITSTATUS(st) : WTERMSIG(st));
			dump_log(r->cur.log);
			dump_log(nw.log);
			stop(&nw);
			return res;
		}
		if (!alive(&nw)) {
			run_fail(r, "the new server is gone");
			dump_log(nw.log);
			return res;
		}
		res.in_flight = log_value(r->cur.log, "in_flight=");
		res.quiesce_us = log_value(r->cur.log, "quiesce_us=");
		res.taken_us = log_value(r->cur.log, "taken_us=");
		r->cur = nw;
		res.paused_us = log_value(nw.log, "paused_us=");
	} else {
		st = wait_exit(&nw, EXIT_WAIT_MS);
		if (st == -ETIMEDOUT || (WIFEXITED(st) && !WEXITSTATUS(st))) {
			run_fail(r, "new server with %s: %s", fault,
				 st == -ETIMEDOUT ? "still running" :
				 "exit 0");
			dump_log(nw.log);
			stop(&nw);
			return res;
		}
		if (!alive(&r->cur)) {
			run_fail(r, "old server died after a failed takeover");
			dump_log(r->cur.log);
			return res;
		}
	}
deliver:
	atomic_store(&r->unmask_done, 0);
	atomic_store(&r->unmask_req, 1);
	if (!wait_flag(r, &r->unmask_done) || !wait_batches(r, 3))
		return res;
	atomic_store(&r->unmask_req, 0);
	res.gap_ms = atomic_load(&r->gap_max_ns) / 1e6;
	res.ok = !atomic_load(&r->failed);
	return res;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static void print_stats(const char *what, double *v, int n,
			const char *unit)
{
	qsort(v, (size_t)n, sizeof(*v), cmp_double);
	printf("%s over %d takeovers: median %.3f %s, max %.3f %s\n", what, n,
	       n ? (n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2) : 0,
	       unit, n ? v[n - 1] : 0, unit);
}

static void check_registers(struct run *r)
{
	uint32_t crc = 0, errors = 0, resets = 1;
	uint64_t done = reg_read64(r, FERRY_DMA_REG_COMPLETED_LO);
	uint64_t raised = reg_read64(r, FERRY_DMA_REG_IRQS_RAISED_LO);

	reg_read(r, FERRY_DMA_REG_RUNNING_CRC, &crc);
	reg_read(r, FERRY_DMA_REG_ERRORS, &errors);
	reg_read(r, FERRY_DMA_REG_RESETS, &resets);
	CHECK(done == r->seq, "COMPLETED %" PRIu64 ", %" PRIu64 " seen", done,
	      r->seq);
	CHECK(crc == crc32c_final(r->run_crc), "RUNNING_CRC 0x%08x, shadow "
	      "0x%08x", crc, crc32c_final(r->run_crc));
	CHECK(errors == r->errors, "ERRORS %u, %" PRIu64 " bad descriptors",
	      errors, r->errors);
	CHECK(resets == 0, "RESETS %u", resets);
	CHECK(raised == r->v0 + r->v1, "IRQS_RAISED %" PRIu64 ", %" PRIu64
	      " received", raised, r->v0 + r->v1);
	CHECK(r->v0 == r->flagged, "vector 0: %" PRIu64 " for %" PRIu64
	      " flagged", r->v0, r->flagged);
}

/* 1: TAKEOVERS in a row; 2: the failure paths, on the same chain. */
static void test_chain(void)
{
	struct run *r = calloc(1, sizeof(*r));
	double gaps[TAKEOVERS], paused[TAKEOVERS], base[TAKEOVERS];
	int fds0, fds1, n = 0, cut = 0;
	uint32_t resets = 1;
	static const struct {
		const char *what, *fault, *devmem;
	} fails[] = {
		{ "new process killed before taken", "die-before-taken", NULL },
		{ "corrupted state blob", "corrupt-blob", NULL },
		{ "missing fd (irq.2.1)", "drop-fd=irq.2.1", NULL },
		{ "missing fd (dma.0)", "drop-fd=dma.0", NULL },
		{ "new process slower than the old one's timeout",
		  "stall-before-taken=" STALL_MS, NULL },
		{ "different device options", NULL, "2M" },
	};

	if (run_setup(r, "chain", 0x9e3779b97f4a7c15ull)) {
		failures++;
		run_teardown(r);
		free(r);
		return;
	}
	/* What the client sees without a takeover, for comparison. */
	for (int i = 0; i < TAKEOVERS && !atomic_load(&r->failed); i++)
		base[i] = takeover(r, false, i & 1, NULL, NULL,
				   true).gap_ms;
	print_stats("client-side longest completion gap, no takeover", base,
		    TAKEOVERS, "ms");
	fds0 = count_open_fds();
	for (int i = 0; i < TAKEOVERS && !atomic_load(&r->failed); i++) {
		struct tk_result t = takeover(r, true, i & 1, NULL, NULL,
					      true);

		if (!t.ok)
			break;
		cut += t.in_flight == 1;
		reg_read(r, FERRY_DMA_REG_RESETS, &resets);
		CHECK(resets == 0, "RESETS %u after takeover %d", resets,
		      i + 1);
		printf("takeover %2d: pid %d, client gap %.3f ms, server "
		       "paused %" PRId64 " us (quiesced in %" PRId64 ", taken "
		       "after %" PRId64 "), %s, %" PRIu64 " completions so "
		       "far\n", i + 1, (int)r->cur.pid, t.gap_ms, t.paused_us,
		       t.quiesce_us, t.taken_us, t.in_flight == 1 ?
		       "descriptor cut in flight" : "between descriptors",
		       (uint64_t)atomic_load(&r->completions));
		gaps[n] = t.gap_ms;
		paused[n] = (double)t.paused_us;
		n++;
	}
	CHECK(n == TAKEOVERS, "%d of %d takeovers: %s", n, TAKEOVERS, r->why);
	print_stats("client-side pause (longest completion gap)", gaps, n,
		    "ms");
	print_stats("server-side pause (quiesce -> resume)", paused, n, "us");
	printf("%d of %d takeovers cut a descriptor in flight\n", cut, n);

	for (size_t i = 0; i < ARRAY_SIZE(fails) && !atomic_load(&r->failed);
	     i++) {
		struct tk_result t = takeover(r, true, i & 1, fails[i].fault,
					      fails[i].devmem, false);

		CHECK(t.ok, "%s: %s", fails[i].what, r->why);
		printf("failed takeover (%s): old server pid %d serves on, "
		       "client gap %.3f ms\n", fails[i].what, (int)r->cur.pid,
		       t.gap_ms);
	}
	/* A migration data session does not travel: refused, serves on. */
	if (!atomic_load(&r->failed)) {
		struct tk_result t;
		int ret = vfu_client_mig_set_state(r->c,
						   VFU_MIG_STATE_PRE_COPY);

		CHECK(ret == 0, "PRE_COPY: %d", ret);
		t = takeover(r, true, false, NULL, NULL, false);
		CHECK(t.ok, "takeover in PRE_COPY: %s", r->why);
		ret = vfu_client_mig_set_state(r->c, VFU_MIG_STATE_RUNNING);
		CHECK(ret == 0, "back to RUNNING: %d", ret);
		printf("takeover refused in PRE_COPY; old server serves on\n");
	}
	/* And after all that, a takeover still works. */
	if (!atomic_load(&r->failed)) {
		struct tk_result t = takeover(r, true, true, NULL, NULL, true);

		CHECK(t.ok, "takeover after the failures: %s", r->why);
	}
	fds1 = count_open_fds();
	CHECK(fds0 == fds1, "fds of the test process: %d before, %d after",
	      fds0, fds1);

	atomic_store(&r->stop, true);
	pthread_join(r->thread, NULL);
	r->thread_started = false;
	CHECK(!atomic_load(&r->failed), "%s", r->why);
	if (!atomic_load(&r->failed))
		check_registers(r);
	if (failures)
		dump_log(r->cur.log);
	printf("chain: %" PRIu64 " completions, %" PRIu64 " interrupts on "
	       "vector 0, %" PRIu64 " on vector 1, device memory intact\n",
	       (uint64_t)atomic_load(&r->completions), r->v0, r->v1);
	run_teardown(r);
	free(r);
}

/* 3: what the checks are worth: a takeover that loses state. */
static void test_negative(const char *fault, uint64_t seed)
{
	struct run *r = calloc(1, sizeof(*r));
	int i;

	if (run_setup(r, "negative", seed)) {
		failures++;
		run_teardown(r);
		free(r);
		return;
	}
	r->quiet = true;
	for (i = 0; i < 3 && !atomic_load(&r->failed); i++)
		takeover(r, true, i & 1, fault, NULL, true);
	CHECK(atomic_load(&r->failed), "negative control %s not caught in %d "
	      "takeovers", fault, i);
	if (atomic_load(&r->failed))
		printf("negative control %s caught after %d takeover(s): %s\n",
		       fault, i, r->why);
	run_teardown(r);
	free(r);
}

int main(void)
{
	char cmd[128];

	log_init("test_takeover");
	signal(SIGPIPE, SIG_IGN);
	dev_bin = getenv("FERRY_DEV");
	if (!dev_bin || access(dev_bin, X_OK)) {
		fprintf(stderr, "SKIP: FERRY_DEV not set to ferry-dev\n");
		return SKIP;
	}
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/ferry-takeover-XXXXXX");
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		return 1;
	}
	test_chain();
	test_negative("lose-irq-pending", 7);
	test_negative("lose-ring-tail", 11);

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	if (system(cmd) != 0)
		fprintf(stderr, "cannot remove %s\n", tmpdir);
	if (failures) {
		fprintf(stderr, "%d check(s) failed\n", failures);
		return 1;
	}
	printf("device server live update tests passed\n");
	return 0;
}
