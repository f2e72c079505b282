/* SPDX-License-Identifier: BSD-3-Clause */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "ferry/crc32c.h"
#include "ferry/mig_stream.h"
#include "ferry/trace.h"
#include "ferry/util.h"

int mig_stream_write_header(struct mig_channel *ch)
{
	return mig_stream_write_header_minor(ch, MIG_STREAM_MINOR_1CH);
}

static int write_header(struct mig_channel *ch, const char *magic,
			uint16_t minor)
{
	uint8_t h[MIG_STREAM_HDR_SIZE];
	uint16_t major = MIG_STREAM_MAJOR;
	uint32_t crc;

	memcpy(h, magic, 8);
	memcpy(h + 8, &major, 2);
	memcpy(h + 10, &minor, 2);
	crc = crc32c(h, 12);
	memcpy(h + 12, &crc, 4);
	return mig_write(ch, h, sizeof(h));
}

int mig_stream_write_header_minor(struct mig_channel *ch, uint16_t minor)
{
	return write_header(ch, MIG_STREAM_MAGIC, minor);
}

int mig_stream_write_mf_header(struct mig_channel *ch)
{
	return write_header(ch, MIG_MF_MAGIC, MIG_STREAM_MINOR);
}

int mig_stream_read_header(struct mig_channel *ch, uint16_t *minor_out,
			   char *err, size_t errlen)
{
	uint8_t h[MIG_STREAM_HDR_SIZE];
	int ret;

	ret = mig_read(ch, h, sizeof(h));
	if (ret) {
		snprintf(err, errlen, "stream ended before its header (%s)",
			 strerror(-ret));
		return ret;
	}
	return mig_stream_check_header(h, minor_out, err, errlen);
}

int mig_stream_check_header(const uint8_t *h, uint16_t *minor_out,
			    char *err, size_t errlen)
{
	bool multifd;
	int ret = mig_stream_check_header_kind(h, minor_out, &multifd, err,
					       errlen);

	if (!ret && multifd) {
		snprintf(err, errlen, "a multifd channel where the migration "
			 "stream was expected");
		return -EBADMSG;
	}
	return ret;
}

int mig_stream_check_header_kind(const uint8_t *h, uint16_t *minor_out,
				 bool *multifd, char *err, size_t errlen)
{
	uint16_t major, minor;
	uint32_t crc;

	*multifd = !memcmp(h, MIG_MF_MAGIC, 8);
	if (!*multifd && memcmp(h, MIG_STREAM_MAGIC, 8)) {
		snprintf(err, errlen, "not a ferry migration stream (bad magic "
			 "%02x%02x%02x%02x%02x%02x%02x%02x)", h[0], h[1], h[2],
			 h[3], h[4], h[5], h[6], h[7]);
		return -EBADMSG;
	}
	memcpy(&crc, h + 12, 4);
	if (crc != crc32c(h, 12)) {
		snprintf(err, errlen, "stream header CRC mismatch");
		return -EBADMSG;
	}
	memcpy(&major, h + 8, 2);
	memcpy(&minor, h + 10, 2);
	if (major != MIG_STREAM_MAJOR || minor > MIG_STREAM_MINOR) {
		snprintf(err, errlen, "unsupported stream version %u.%u "
			 "(this ferry reads %u.0 to %u.%u)", major, minor,
			 MIG_STREAM_MAJOR, MIG_STREAM_MAJOR, MIG_STREAM_MINOR);
		return -EPROTONOSUPPORT;
	}
	if (minor_out)
		*minor_out = minor;
	return 0;
}

int mig_section_write(struct mig_channel *ch, uint16_t type, uint16_t flags,
		      uint32_t id, const void *a, size_t alen,
		      const void *b, size_t blen)
{
	struct mig_section sec = { .type = type, .flags = flags, .id = id };
	uint32_t crc = CRC32C_INIT;
	struct iovec iov[3];
	size_t len;

	if (check_add_overflow(alen, blen, &len) || len > MIG_SECTION_MAX_LEN)
		return -EFBIG;
	sec.length = len;
	if (alen)
		crc = crc32c_update(crc, a, alen);
	if (blen)
		crc = crc32c_update(crc, b, blen);
	sec.payload_crc = crc32c_final(crc);
	sec.hdr_crc = crc32c(&sec, offsetof(struct mig_section, hdr_crc));
	FERRY_TRACE(migration_section_send, type, id, len);
	iov[0] = (struct iovec){ &sec, sizeof(sec) };
	iov[1] = (struct iovec){ (void *)a, alen };
	iov[2] = (struct iovec){ (void *)b, blen };
	return mig_writev(ch, iov, 3);
}

int mig_section_read_header(struct mig_channel *ch, struct mig_section *sec,
			    char *err, size_t errlen)
{
	int ret = mig_read(ch, sec, sizeof(*sec));

	if (ret) {
		snprintf(err, errlen, "stream truncated: no section header "
			 "(%s)", strerror(-ret));
		return ret;
	}
	if (sec->hdr_crc != crc32c(sec, offsetof(struct mig_section, hdr_crc))) {
		snprintf(err, errlen, "corrupt section header (CRC mismatch)");
		return -EBADMSG;
	}
	FERRY_TRACE(migration_section_recv, sec->type, sec->id, sec->length);
	if (sec->length > MIG_SECTION_MAX_LEN) {
		snprintf(err, errlen, "section %s is %llu bytes, limit %u",
			 mig_section_name(sec->type),
			 (unsigned long long)sec->length, MIG_SECTION_MAX_LEN);
		return -EFBIG;
	}
	return 0;
}

int mig_section_read(struct mig_channel *ch, struct mig_section *sec,
		     void **payload, char *err, size_t errlen)
{
	int ret;

	*payload = NULL;
	ret = mig_section_read_header(ch, sec, err, errlen);
	if (ret)
		return ret;
	return mig_section_read_payload(ch, sec, payload, err, errlen);
}

int mig_section_read_payload(struct mig_channel *ch,
			     const struct mig_section *sec, void **payload,
			     char *err, size_t errlen)
{
	void *buf = NULL;
	int ret;

	*payload = NULL;
	if (sec->length) {
		buf = malloc(sec->length);
		if (!buf) {
			snprintf(err, errlen, "out of memory");
			return -ENOMEM;
		}
		ret = mig_read(ch, buf, sec->length);
		if (ret) {
			snprintf(err, errlen, "stream truncated inside section "
				 "%s (%s)", mig_section_name(sec->type),
				 strerror(-ret));
			free(buf);
			return ret;
		}
	}
	if (crc32c(buf ? buf : "", sec->length) != sec->payload_crc) {
		snprintf(err, errlen, "section %s id %u: payload CRC mismatch",
			 mig_section_name(sec->type), sec->id);
		free(buf);
		return -EBADMSG;
	}
	*payload = buf;
	return 0;
}

const char *mig_section_name(uint16_t type)
{
	switch (type) {
	case MIG_SEC_CONFIG: return "CONFIG";
	case MIG_SEC_RAM: return "RAM";
	case MIG_SEC_DEV_DATA: return "DEV_DATA";
	case MIG_SEC_DEV_INIT_DONE: return "DEV_INIT_DONE";
	case MIG_SEC_DEV_END: return "DEV_END";
	case MIG_SEC_VCPU: return "VCPU";
	case MIG_SEC_IRQCHIP: return "IRQCHIP";
	case MIG_SEC_PIT: return "PIT";
	case MIG_SEC_CLOCK: return "CLOCK";
	case MIG_SEC_SERIAL: return "SERIAL";
	case MIG_SEC_PCI_DEV: return "PCI_DEV";
	case MIG_SEC_ITER_END: return "ITER_END";
	case MIG_SEC_COMMIT: return "COMMIT";
	case MIG_SEC_MF_HELLO: return "MF_HELLO";
	case MIG_SEC_MF_SYNC: return "MF_SYNC";
	case MIG_SEC_DEV_PACKET: return "DEV_PACKET";
	case MIG_SEC_DEV_MAIN_DONE: return "DEV_MAIN_DONE";
	case MIG_SEC_MF_END: return "MF_END";
	case MIG_SEC_END: return "END";
	case MIG_RP_SWITCHOVER_ACK: return "SWITCHOVER_ACK";
	case MIG_RP_RESUMED: return "RESUMED";
	case MIG_RP_ERROR: return "ERROR";
	case MIG_RP_READY: return "READY";
	}
	return "UNKNOWN";
}
