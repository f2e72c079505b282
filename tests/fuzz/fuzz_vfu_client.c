// SPDX-License-Identifier: BSD-3-Clause
/*
 * Fuzz target: the vfio-user client against a malicious server. The input
 * is the server's side of a session, a sequence of vfio-user messages
 * (each framed by its header's msg_size, at least a header, cut at the
 * end of the input):
 *
 *  - an "answer" (a reply whose msg_id is not 0xffff) is sent in reply
 *    to the next request the client makes, its msg_id replaced by the
 *    request's (the client picks ids at random);
 *  - anything else (a server request such as DMA_READ/DMA_WRITE, a reply
 *    with msg_id 0xffff, an unknown type) is sent as it comes, between
 *    answers.
 *
 * The client makes the call each answer answers: the answer's command
 * (and, for DEVICE_FEATURE, its feature) names it, and where the client
 * checks a reply against its request (region index, offset, count,
 * sizes) the arguments are taken from the answer, so that a recorded
 * session (gen_corpus.c) replays. Bit 0 of an answer's msg_id picks a
 * variant of the call; bit 1 toggles the fd that goes with it (a region
 * info reply for an mmap'able region carries one). A first answer to
 * VERSION makes the client connect and negotiate; otherwise it adopts a
 * connection with default capabilities. A call that sends nothing
 * (refused by the client itself) turns its answer into an unsolicited
 * message.
 *
 * Threads: this one drives the client; a writer sends the input; a
 * reader takes the client's requests (ids for the writer) and its
 * replies to our DMA requests (dropped). The reader never blocks on
 * anything but the socket, so the client can always send.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "ferry/util.h"
#include "ferry/vfu_caps.h"
#include "ferry/vfu_client.h"
#include "fuzz.h"
#include "fuzz_vfu.h"

#define FZC_MAX_MSGS		4096u
/* Every request is answered at once or the connection ends: only a
 * harness bug would wait this long. */
#define FZC_TIMEOUT_MS		2000u
#define FZC_UNSOLICITED_ID	0xffffu
#define FZC_ID_VARIANT		(1u << 0)
#define FZC_ID_TOGGLE_FD	(1u << 1)
#define FZC_REPORT_MAX_PAGES	4096u
#define FZC_MAX_RX_FDS		64u
#define FZC_MAX_RX_MSG		(16u << 20)

struct fzc_msg {
	const uint8_t *p;
	size_t len;
	struct vfu_hdr hdr;	/* as in the input */
	bool answer;
	bool cut;		/* the input ends inside it */
};

struct fzc_run {
	int fd;			/* our (the server's) end */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	/* reader -> writer: ids of requests not answered yet */
	uint16_t ids[FZC_MAX_MSGS];
	size_t ids_head, ids_tail;
	bool eof;		/* the client is gone */
	/* writer <-> driver */
	size_t answers_done;	/* answered or sent unsolicited */
	size_t skip;		/* answer index to send unsolicited */
	bool writer_done;
	bool disconnected;	/* the client noticed the end */
};

static struct fzc_msg msgs[FZC_MAX_MSGS];
static size_t nr_msgs;
static size_t answer_at[FZC_MAX_MSGS];	/* message index of answer k */
static size_t nr_answers;

static int listen_fd = -1;
static char sock_path[108];
static int region_fd = -1, irq_fd = -1;
static uint8_t *dma_mem;
static uint8_t iobuf[FZC_XFER];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };

	if (dma_mem)
		return 0;
	fuzz_log_init();
	signal(SIGPIPE, SIG_IGN);
	fuzz_tmp_path(sock_path, sizeof(sock_path), "vfu-client.sock");
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock_path);
	listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (listen_fd < 0 || bind(listen_fd, (struct sockaddr *)&sa,
				  sizeof(sa)) || listen(listen_fd, 4))
		abort();
	region_fd = memfd_create("fuzz-region", MFD_CLOEXEC);
	irq_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	dma_mem = calloc(FZC_NR_MAPS, FZC_MAP_SIZE);
	if (region_fd < 0 || irq_fd < 0 || !dma_mem ||
	    ftruncate(region_fd, FZC_MAP_SIZE))
		abort();
	return 0;
}

static void split_input(const uint8_t *data, size_t size)
{
	size_t off = 0;

	nr_msgs = nr_answers = 0;
	while (off < size && nr_msgs < FZC_MAX_MSGS) {
		struct fzc_msg *m = &msgs[nr_msgs++];
		size_t left = size - off;

		memset(&m->hdr, 0, sizeof(m->hdr));
		memcpy(&m->hdr, data + off, MIN(left, sizeof(m->hdr)));
		m->p = data + off;
		m->len = MAX((size_t)m->hdr.msg_size, sizeof(m->hdr));
		m->cut = m->len > left;
		m->len = MIN(m->len, left);
		m->answer = !m->cut && m->hdr.msg_id != FZC_UNSOLICITED_ID &&
			    (m->hdr.flags & VFU_F_TYPE_MASK) ==
			    VFU_F_TYPE_REPLY;
		if (m->answer)
			answer_at[nr_answers++] = nr_msgs - 1;
		off += m->len;
	}
}

/* ---- the server's side ---- */

static bool wants_fd(const struct fzc_msg *m)
{
	struct vfu_region_info ri;
	bool fd = false;

	if (m->hdr.cmd == VFU_CMD_DEVICE_GET_REGION_INFO &&
	    m->len >= sizeof(m->hdr) + sizeof(ri)) {
		memcpy(&ri, m->p + sizeof(m->hdr), sizeof(ri));
		fd = ri.flags & VFU_REGION_FLAG_MMAP;
	}
	if (m->answer && (m->hdr.msg_id & FZC_ID_TOGGLE_FD))
		fd = !fd;
	return fd;
}

/* Send m, with id as its msg_id; false once the client is gone. */
static bool send_msg(struct fzc_run *r, const struct fzc_msg *m, uint16_t id)
{
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	struct vfu_hdr hdr = m->hdr;
	bool body = m->len > sizeof(hdr);
	struct iovec iov[2] = {
		{ &hdr, MIN(m->len, sizeof(hdr)) },
		{ body ? (void *)(m->p + sizeof(hdr)) : NULL,
		  body ? m->len - sizeof(hdr) : 0 },
	};
	struct msghdr mh = { .msg_iov = iov, .msg_iovlen = 2 };
	size_t total = iov[0].iov_len + iov[1].iov_len, sent = 0;

	hdr.msg_id = id;
	if (wants_fd(m)) {
		struct cmsghdr *c;

		memset(&u, 0, sizeof(u));
		mh.msg_control = u.buf;
		mh.msg_controllen = sizeof(u.buf);
		c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &region_fd, sizeof(int));
	}
	while (sent < total) {
		ssize_t n = sendmsg(r->fd, &mh, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return false;
		sent += (size_t)n;
		/* The fd went with the first byte; skip what was sent. */
		mh.msg_control = NULL;
		mh.msg_controllen = 0;
		while (n > 0 && mh.msg_iovlen) {
			size_t k = MIN((size_t)n, mh.msg_iov->iov_len);

			mh.msg_iov->iov_base = (char *)mh.msg_iov->iov_base + k;
			mh.msg_iov->iov_len -= k;
			n -= (ssize_t)k;
			if (!mh.msg_iov->iov_len) {
				mh.msg_iov++;
				mh.msg_iovlen--;
			}
		}
	}
	return true;
}

static void *writer_fn(void *arg)
{
	struct fzc_run *r = arg;
	size_t k = 0;

	for (size_t i = 0; i < nr_msgs; i++) {
		const struct fzc_msg *m = &msgs[i];
		uint16_t id = m->hdr.msg_id;
		bool ok;

		if (m->answer) {
			pthread_mutex_lock(&r->lock);
			while (r->ids_head == r->ids_tail && r->skip != k &&
			       !r->eof)
				pthread_cond_wait(&r->cond, &r->lock);
			if (r->ids_head != r->ids_tail) {
				id = r->ids[r->ids_tail++ % FZC_MAX_MSGS];
			} else if (r->skip != k) {
				pthread_mutex_unlock(&r->lock);
				break;	/* the client is gone */
			}
			/* Counted before the client can see it: the driver
			 * reads this after its call returned. */
			r->answers_done = ++k;
			pthread_cond_broadcast(&r->cond);
			pthread_mutex_unlock(&r->lock);
		}
		ok = send_msg(r, m, id);
		if (!ok || m->cut)
			break;
	}
	/* The client reads what was sent, then EOF. */
	shutdown(r->fd, SHUT_WR);
	pthread_mutex_lock(&r->lock);
	r->writer_done = true;
	r->answers_done = nr_answers;
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->lock);
	return NULL;
}

static bool read_full(int fd, void *buf, size_t len)
{
	uint8_t *p = buf;

	while (len) {
		ssize_t n = read(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return false;
		p += n;
		len -= (size_t)n;
	}
	return true;
}

/* One message from the client; its fds are closed. */
static bool recv_msg(int fd, struct vfu_hdr *hdr)
{
	union {
		char buf[CMSG_SPACE(FZC_MAX_RX_FDS * sizeof(int))];
		struct cmsghdr align;
	} u;
	struct iovec iov = { hdr, sizeof(*hdr) };
	struct msghdr mh = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = u.buf, .msg_controllen = sizeof(u.buf),
	};
	ssize_t n;

	do {
		n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
	} while (n < 0 && errno == EINTR);
	if (n <= 0)
		return false;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c;
	     c = CMSG_NXTHDR(&mh, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		for (size_t i = 0; i < (c->cmsg_len - CMSG_LEN(0)) /
				       sizeof(int); i++) {
			int cfd;

			memcpy(&cfd, CMSG_DATA(c) + i * sizeof(int),
			       sizeof(cfd));
			close(cfd);
		}
	}
	if ((size_t)n < sizeof(*hdr) &&
	    !read_full(fd, (uint8_t *)hdr + n, sizeof(*hdr) - (size_t)n))
		return false;
	/* Our own client: a bad size is a harness bug, not an input. */
	if (hdr->msg_size < sizeof(*hdr) || hdr->msg_size > FZC_MAX_RX_MSG)
		abort();
	for (size_t left = hdr->msg_size - sizeof(*hdr); left;) {
		static uint8_t sink[FZC_XFER];
		size_t k = MIN(left, sizeof(sink));

		if (!read_full(fd, sink, k))
			return false;
		left -= k;
	}
	return true;
}

static void *reader_fn(void *arg)
{
	struct fzc_run *r = arg;
	struct vfu_hdr hdr;

	while (recv_msg(r->fd, &hdr)) {
		if ((hdr.flags & VFU_F_TYPE_MASK) != VFU_F_TYPE_COMMAND)
			continue;	/* its reply to our DMA request */
		pthread_mutex_lock(&r->lock);
		r->ids[r->ids_head++ % FZC_MAX_MSGS] = hdr.msg_id;
		pthread_cond_broadcast(&r->cond);
		pthread_mutex_unlock(&r->lock);
	}
	pthread_mutex_lock(&r->lock);
	r->eof = true;
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->lock);
	return NULL;
}

/* ---- the client's side ---- */

static void on_disconnect(void *opaque)
{
	struct fzc_run *r = opaque;

	pthread_mutex_lock(&r->lock);
	r->disconnected = true;
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->lock);
}

/* Payload field at off of answer m, or dflt if the answer is shorter. */
static uint64_t field(const struct fzc_msg *m, size_t off, size_t len,
		      uint64_t dflt)
{
	uint64_t v = 0;

	off += sizeof(m->hdr);
	if (off + len > m->len)
		return dflt;
	memcpy(&v, m->p + off, len);
	return v;
}

static void call_feature(struct vfu_client *c, const struct fzc_msg *m,
			 bool variant)
{
	uint32_t flags = (uint32_t)field(m, 4, 4, VFU_FEATURE_GET);
	uint32_t feature = flags & VFU_FEATURE_MASK;
	struct vfu_feature_precopy_info pi;
	struct vfu_dma_log_range range = { FZC_IOVA, FZC_MAP_SIZE };
	enum vfu_mig_state st;
	uint64_t v, page = 4096;
	size_t got;

	switch (feature) {
	case VFU_FEATURE_MIGRATION:
		vfu_client_mig_flags(c, &v);
		break;
	case VFU_FEATURE_MIG_DEVICE_STATE:
		if (flags & VFU_FEATURE_SET)
			vfu_client_mig_set_state(c, (enum vfu_mig_state)
				(field(m, 8, 4, VFU_MIG_STATE_STOP) %
				 VFU_MIG_STATE_NR));
		else
			vfu_client_mig_get_state(c, &st);
		break;
	case VFU_FEATURE_FERRY_PRECOPY_INFO:
		vfu_client_precopy_info(c, &pi);
		break;
	case VFU_FEATURE_MIG_DATA_SIZE:
		vfu_client_mig_data_size(c, &v);
		break;
	case VFU_FEATURE_DMA_LOGGING_START:
		vfu_client_dma_log_start(c, &page, &range, variant ? 0 : 1);
		break;
	case VFU_FEATURE_DMA_LOGGING_STOP:
		vfu_client_dma_log_stop(c);
		break;
	case VFU_FEATURE_DMA_LOGGING_REPORT: {
		uint64_t iova = field(m, 8, 8, FZC_IOVA);
		uint64_t len = field(m, 16, 8, FZC_MAP_SIZE);
		uint64_t *bm;

		page = field(m, 24, 8, 4096);
		/* What the caller asks is ours to bound (the bitmap is
		 * sized from it); the replies are the input. */
		if (!page || page > (1ull << 30) || !len ||
		    len / page > FZC_REPORT_MAX_PAGES) {
			page = 4096;
			len = FZC_MAP_SIZE;
		}
		bm = calloc(FZC_REPORT_MAX_PAGES / 64 + 1, sizeof(*bm));
		if (bm)
			vfu_client_dma_log_report(c, iova, len, page, bm);
		free(bm);
		break;
	}
	default:
		vfu_client_feature(c, feature, flags & (VFU_FEATURE_GET |
				   VFU_FEATURE_SET | VFU_FEATURE_PROBE),
				   variant ? iobuf : NULL, variant ? 16 : 0,
				   iobuf, 256, &got);
		break;
	}
}

static void call_for(struct vfu_client *c, const struct fzc_msg *m,
		     unsigned *nr_maps)
{
	bool variant = m->hdr.msg_id & FZC_ID_VARIANT;
	struct vfu_write_multi_entry ents[VFU_WRITE_MULTI_MAX];
	struct vfu_client_region reg;
	struct vfu_device_info di;
	struct vfu_irq_info ii;
	uint64_t off, iova, n;
	uint32_t idx, count;

	switch (m->hdr.cmd) {
	case VFU_CMD_DMA_MAP:
		iova = FZC_IOVA + (uint64_t)(*nr_maps % FZC_NR_MAPS) *
		       FZC_MAP_SIZE;
		vfu_client_dma_map(c, iova, FZC_MAP_SIZE, -1, 0,
				   VFU_DMA_FLAG_READ | (variant ? 0 :
				   VFU_DMA_FLAG_WRITE),
				   dma_mem + (iova - FZC_IOVA));
		(*nr_maps)++;
		break;
	case VFU_CMD_DMA_UNMAP:
		if (field(m, 4, 4, 0) & VFU_DMA_UNMAP_FLAG_ALL)
			vfu_client_dma_unmap_all(c);
		else
			vfu_client_dma_unmap(c, field(m, 8, 8, FZC_IOVA),
					     field(m, 16, 8, FZC_MAP_SIZE));
		break;
	case VFU_CMD_DEVICE_GET_INFO:
		vfu_client_device_info(c, &di);
		break;
	case VFU_CMD_DEVICE_GET_REGION_INFO:
		if (!vfu_client_region_info(c, (uint32_t)field(m, 8, 4, 0),
					    &reg))
			vfu_client_region_release(&reg);
		break;
	case VFU_CMD_DEVICE_GET_IRQ_INFO:
		vfu_client_irq_info(c, (uint32_t)field(m, 8, 4, 0), &ii);
		break;
	case VFU_CMD_DEVICE_SET_IRQS:
		vfu_client_set_irqs(c, VFU_PCI_MSIX_IRQ_INDEX, 0,
				    variant ? 0 : 1, variant ? NULL : &irq_fd);
		break;
	case VFU_CMD_REGION_READ:
	case VFU_CMD_REGION_WRITE:
		off = field(m, 0, 8, 0);
		idx = (uint32_t)field(m, 8, 4, 0);
		count = (uint32_t)MIN(field(m, 12, 4, 4), (uint64_t)FZC_XFER);
		if (m->hdr.cmd == VFU_CMD_REGION_READ)
			vfu_client_region_read(c, idx, off, iobuf, count);
		else
			vfu_client_region_write(c, idx, off, iobuf, count);
		break;
	case VFU_CMD_DEVICE_RESET:
		vfu_client_reset(c);
		break;
	case VFU_CMD_REGION_WRITE_MULTI:
		n = field(m, 0, 8, 1);
		n = n < 1 ? 1 : MIN(n, (uint64_t)VFU_WRITE_MULTI_MAX);
		fzc_multi_entries(ents, (uint32_t)n);
		vfu_client_write_multi(c, ents, (uint32_t)n);
		break;
	case VFU_CMD_DEVICE_FEATURE:
		call_feature(c, m, variant);
		break;
	case VFU_CMD_MIG_DATA_READ:
		vfu_client_mig_read(c, iobuf, MIN(field(m, 4, 4, 64),
						  (uint64_t)FZC_XFER));
		break;
	case VFU_CMD_MIG_DATA_WRITE:
		n = MIN(field(m, 4, 4, 64), (uint64_t)FZC_XFER);
		vfu_client_mig_write(c, iobuf, n ? n : 1);
		break;
	default:
		break;	/* no call: sent unsolicited */
	}
}

struct connect_arg {
	struct vfu_client *c;
	int ret;
};

static void *connect_fn(void *arg)
{
	struct vfu_client_opts opts = {
		.max_data_xfer_size = FZC_XFER,
		.timeout_ms = FZC_TIMEOUT_MS,
	};
	struct connect_arg *a = arg;

	a->ret = vfu_client_connect(sock_path, &opts, &a->c);
	return NULL;
}

static void wait_until(struct fzc_run *r, bool *flag, unsigned ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&r->lock);
	while (!*flag)
		if (pthread_cond_timedwait(&r->cond, &r->lock, &ts))
			break;
	pthread_mutex_unlock(&r->lock);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct vfu_client_opts opts = {
		.max_data_xfer_size = FZC_XFER,
		.timeout_ms = FZC_TIMEOUT_MS,
	};
	struct fzc_run r = { .fd = -1, .skip = SIZE_MAX };
	struct connect_arg ca = { 0 };
	pthread_t reader, writer, conn;
	struct vfu_client *c = NULL;
	unsigned nr_maps = 0;
	size_t k = 0;
	int sv[2];

	LLVMFuzzerInitialize(NULL, NULL);
	split_input(data, size);
	pthread_mutex_init(&r.lock, NULL);
	pthread_cond_init(&r.cond, NULL);

	if (nr_answers && msgs[answer_at[0]].hdr.cmd == VFU_CMD_VERSION &&
	    answer_at[0] == 0) {
		struct pollfd p = { .fd = listen_fd, .events = POLLIN };

		/* Negotiation is the first call. */
		if (pthread_create(&conn, NULL, connect_fn, &ca))
			abort();
		if (poll(&p, 1, FZC_TIMEOUT_MS) != 1)
			abort();
		r.fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC);
		if (r.fd < 0)
			abort();
	} else {
		struct vfu_caps caps;

		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
			abort();
		vfu_caps_defaults(&caps);
		if (vfu_client_adopt(sv[0], &caps, &opts, &c))
			abort();
		r.fd = sv[1];
	}
	if (pthread_create(&reader, NULL, reader_fn, &r) ||
	    pthread_create(&writer, NULL, writer_fn, &r))
		abort();
	if (!c) {
		pthread_join(conn, NULL);
		c = ca.ret ? NULL : ca.c;
		k = 1;
	}
	if (c) {
		vfu_client_set_disconnect_cb(c, on_disconnect, &r);
		/* Gone before the callback was in place: no call comes. */
		if (!vfu_client_connected(c))
			on_disconnect(&r);
	}

	while (c && k < nr_answers && vfu_client_connected(c)) {
		size_t before;

		pthread_mutex_lock(&r.lock);
		before = r.answers_done;
		pthread_mutex_unlock(&r.lock);
		if (before > k) {
			k = before;
			continue;
		}
		call_for(c, &msgs[answer_at[k]], &nr_maps);
		pthread_mutex_lock(&r.lock);
		if (r.answers_done == k) {
			/* Nothing was asked: the answer goes out as it is. */
			r.skip = k;
			pthread_cond_broadcast(&r.cond);
			while (r.answers_done == k && !r.writer_done)
				pthread_cond_wait(&r.cond, &r.lock);
		}
		k = r.answers_done;
		pthread_mutex_unlock(&r.lock);
	}
	/* Let the client take in what follows the last answer (server DMA
	 * requests) up to EOF, so that every input ends the same way. */
	wait_until(&r, &r.writer_done, FZC_TIMEOUT_MS);
	if (c) {
		wait_until(&r, &r.disconnected, FZC_TIMEOUT_MS);
		vfu_client_close(c);
	} else {
		/* Negotiation failed: the client closed its end. */
		shutdown(r.fd, SHUT_RDWR);
	}
	pthread_join(writer, NULL);
	shutdown(r.fd, SHUT_RDWR);
	pthread_join(reader, NULL);
	close(r.fd);
	pthread_cond_destroy(&r.cond);
	pthread_mutex_destroy(&r.lock);
	return 0;
}
