/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * ferry migration stream framing (docs/migration-stream.md).
 *
 *   stream  := header section* end-section
 *   header  := "FERRYMIG" u16 major u16 minor u32 crc32c(previous 12 bytes)
 *   section := u16 type, u16 flags, u32 id, u64 length,
 *              u32 crc32c(payload), u32 crc32c(previous 20 bytes), payload
 *
 * All integers little-endian. A reader rejects: a bad magic, another
 * major version (an older minor is accepted, a newer one refused), a
 * section header whose CRC does not match (framing corruption), a length
 * above MIG_SECTION_MAX_LEN (before allocating), a payload whose CRC does
 * not match, an unknown section type unless it carries
 * MIG_SEC_F_OPTIONAL (then it is skipped), and EOF anywhere before the
 * end section. CRCs only catch accidents; the stream is not
 * authenticated.
 *
 * The same framing runs on the return path (destination to source) with
 * the MIG_RP_* types.
 */
#ifndef FERRY_MIG_STREAM_H
#define FERRY_MIG_STREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/mig_channel.h"

#define MIG_STREAM_MAGIC	"FERRYMIG"
/* A multifd channel's header: the same but for its magic, so that the
 * destination knows a channel's role from its first bytes, whichever
 * arrives first. */
#define MIG_MF_MAGIC		"FERRYMFD"
#define MIG_STREAM_MAJOR	1
/* 1: with a return path, the switchover is a hand-over in three steps
 * (END, READY, COMMIT); 2: multifd channels (written only when used).
 * See docs/migration-stream.md. */
#define MIG_STREAM_MINOR	2
#define MIG_STREAM_MINOR_1CH	1	/* what a single-channel stream says */
#define MIG_STREAM_HDR_SIZE	16u
#define MIG_SECTION_HDR_SIZE	24u
/* Largest section payload accepted: a RAM batch or a device chunk. */
#define MIG_SECTION_MAX_LEN	(16u << 20)

#define MIG_SEC_F_OPTIONAL	(1u << 0)	/* skip if unknown */

enum mig_section_type {
	MIG_SEC_CONFIG		= 1,	/* JSON: compatibility check */
	MIG_SEC_RAM		= 2,	/* a batch of guest pages */
	MIG_SEC_DEV_DATA	= 3,	/* id = device: opaque device stream */
	MIG_SEC_DEV_INIT_DONE	= 4,	/* id = device: initial data sent */
	MIG_SEC_DEV_END		= 5,	/* id = device: STOP_COPY drained */
	MIG_SEC_VCPU		= 6,	/* id = vCPU index */
	MIG_SEC_IRQCHIP		= 7,
	MIG_SEC_PIT		= 8,
	MIG_SEC_CLOCK		= 9,
	MIG_SEC_SERIAL		= 10,
	MIG_SEC_PCI_DEV		= 11,	/* id = device: config space, MSI-X */
	MIG_SEC_ITER_END	= 12,	/* end of one pre-copy iteration */
	MIG_SEC_COMMIT		= 13,	/* after END and READY: the source
					   gives the guest up, run it */
	MIG_SEC_MF_HELLO	= 14,	/* first on a multifd channel */
	MIG_SEC_MF_SYNC		= 15,	/* id = pass: all of it is sent */
	MIG_SEC_DEV_PACKET	= 16,	/* id = device: {idx, flags, data} */
	MIG_SEC_DEV_MAIN_DONE	= 17,	/* main channel: its device data is
					   all sent */
	MIG_SEC_MF_END		= 18,	/* a multifd channel's last */
	MIG_SEC_END		= 0xffff,

	/* return path */
	MIG_RP_SWITCHOVER_ACK	= 0x100,	/* every device loaded its
						   initial data */
	MIG_RP_RESUMED		= 0x101,	/* destination runs the guest */
	MIG_RP_ERROR		= 0x102,	/* payload: message text */
	MIG_RP_READY		= 0x103,	/* everything loaded and
						   checked; the guest runs
						   on COMMIT */
};

struct mig_section {
	uint16_t type;
	uint16_t flags;
	uint32_t id;
	uint64_t length;
	uint32_t payload_crc;
	uint32_t hdr_crc;
} __attribute__((packed));

_Static_assert(sizeof(struct mig_section) == MIG_SECTION_HDR_SIZE, "sec");

/* Write the stream header (a single-channel stream's version; or
 * minor's); a multifd channel's. 0 or -errno. */
int mig_stream_write_header(struct mig_channel *ch);
int mig_stream_write_header_minor(struct mig_channel *ch, uint16_t minor);
int mig_stream_write_mf_header(struct mig_channel *ch);
/* Read and check the stream header; *minor (may be NULL) gets the
 * writer's minor version. On error a reason in err. */
int mig_stream_read_header(struct mig_channel *ch, uint16_t *minor,
			   char *err, size_t errlen);
/* The same check on MIG_STREAM_HDR_SIZE bytes already read: a main
 * stream's header; or (_kind) either kind, *multifd saying which. */
int mig_stream_check_header(const uint8_t *h, uint16_t *minor, char *err,
			    size_t errlen);
int mig_stream_check_header_kind(const uint8_t *h, uint16_t *minor,
				 bool *multifd, char *err, size_t errlen);

/* Write one section (payload may be split over two buffers, e.g. a
 * small header and bulk data). */
int mig_section_write(struct mig_channel *ch, uint16_t type, uint16_t flags,
		      uint32_t id, const void *a, size_t alen,
		      const void *b, size_t blen);

/*
 * Read one section: header checked, payload read into *payload (malloc'd,
 * caller frees; NULL for an empty payload) and its CRC checked. Returns 0
 * or -errno with a reason in err: -EPIPE truncated, -EBADMSG corrupt,
 * -EFBIG too long.
 */
int mig_section_read(struct mig_channel *ch, struct mig_section *sec,
		     void **payload, char *err, size_t errlen);

/* The two halves of mig_section_read(), for a reader that takes some
 * payloads its own way (RAM straight into guest memory): the header,
 * checked; then the payload, read and checked. */
int mig_section_read_header(struct mig_channel *ch, struct mig_section *sec,
			    char *err, size_t errlen);
int mig_section_read_payload(struct mig_channel *ch,
			     const struct mig_section *sec, void **payload,
			     char *err, size_t errlen);

const char *mig_section_name(uint16_t type);

#endif /* FERRY_MIG_STREAM_H */
