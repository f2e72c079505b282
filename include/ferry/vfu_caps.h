/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * VFU_CMD_VERSION capabilities: {"capabilities": {...}} JSON (json-c).
 *
 * Parsing is strict about types and lenient about content: a known key
 * with the wrong JSON type is -EINVAL, unknown keys (the legacy
 * "migration" object, "twin_socket", "write_multiple", vendor keys) are
 * ignored, a missing key keeps its default. The text must be
 * NUL-terminated within len and at most VFU_MAX_JSON_LEN bytes.
 */
#ifndef FERRY_VFU_CAPS_H
#define FERRY_VFU_CAPS_H

#include <stddef.h>
#include <stdint.h>

struct vfu_caps {
	uint16_t major, minor;
	uint32_t max_msg_fds;		/* fds the sender can receive */
	uint32_t max_data_xfer_size;
	uint32_t max_dma_maps;
	uint64_t pgsizes;
};

/* Protocol defaults (what a peer that sends no JSON means). */
void vfu_caps_defaults(struct vfu_caps *caps);

/* Parse json[0..len) into caps (defaults kept for missing keys). len
 * counts the NUL. Returns 0, or -EINVAL for bad JSON, a missing NUL, a
 * wrong type or a zero/negative/out-of-range value. */
int vfu_caps_parse(const char *json, size_t len, struct vfu_caps *caps);

/* Format caps as a NUL-terminated JSON string (malloc'd; caller frees).
 * NULL on ENOMEM. */
char *vfu_caps_format(const struct vfu_caps *caps);

#endif /* FERRY_VFU_CAPS_H */
