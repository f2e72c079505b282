/* SPDX-License-Identifier: BSD-3-Clause */
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/util.h"
#include "ferry/vfio_user.h"
#include "ferry/vfu_caps.h"

void vfu_caps_defaults(struct vfu_caps *caps)
{
	memset(caps, 0, sizeof(*caps));
	caps->major = VFU_VERSION_MAJOR;
	caps->minor = VFU_VERSION_MINOR;
	caps->max_msg_fds = VFU_DEFAULT_MAX_MSG_FDS;
	caps->max_data_xfer_size = VFU_DEFAULT_MAX_DATA_XFER;
	caps->max_dma_maps = VFU_DEFAULT_MAX_DMA_MAPS;
	caps->pgsizes = VFU_DEFAULT_PGSIZES;
}

/* Read an integer key into *out if present; range [1, max]. */
static int caps_get_uint(struct json_object *obj, const char *key,
			 uint64_t max, uint64_t *out)
{
	struct json_object *v;
	int64_t n;

	if (!json_object_object_get_ex(obj, key, &v))
		return 0;
	if (!json_object_is_type(v, json_type_int))
		return -EINVAL;
	errno = 0;
	n = json_object_get_int64(v);
	if (errno || n <= 0 || (uint64_t)n > max)
		return -EINVAL;
	*out = (uint64_t)n;
	return 0;
}

int vfu_caps_parse(const char *json, size_t len, struct vfu_caps *caps)
{
	struct json_tokener *tok;
	struct json_object *root, *c;
	uint64_t v;
	int ret = -EINVAL;

	if (!json || len == 0 || len > VFU_MAX_JSON_LEN ||
	    memchr(json, '\0', len) != json + len - 1)
		return -EINVAL;
	tok = json_tokener_new();
	if (!tok)
		return -ENOMEM;
	root = json_tokener_parse_ex(tok, json, (int)len);
	/* Trailing garbage after the object is malformed too. */
	if (!root || json_tokener_get_error(tok) != json_tokener_success ||
	    json_tokener_get_parse_end(tok) != len - 1)
		goto out_free;
	if (!json_object_is_type(root, json_type_object))
		goto out_free;
	if (!json_object_object_get_ex(root, "capabilities", &c)) {
		ret = 0;	/* an empty document keeps the defaults */
		goto out_free;
	}
	if (!json_object_is_type(c, json_type_object))
		goto out_free;

	v = caps->max_msg_fds;
	if (caps_get_uint(c, "max_msg_fds", VFU_MAX_MSG_FDS_LIMIT, &v))
		goto out_free;
	caps->max_msg_fds = (uint32_t)v;
	v = caps->max_data_xfer_size;
	if (caps_get_uint(c, "max_data_xfer_size", UINT32_MAX, &v))
		goto out_free;
	caps->max_data_xfer_size = (uint32_t)v;
	v = caps->max_dma_maps;
	if (caps_get_uint(c, "max_dma_maps", UINT32_MAX, &v))
		goto out_free;
	caps->max_dma_maps = (uint32_t)v;
	v = caps->pgsizes;
	if (caps_get_uint(c, "pgsizes", INT64_MAX, &v))
		goto out_free;
	caps->pgsizes = v;
	ret = 0;

out_free:
	if (root)
		json_object_put(root);
	json_tokener_free(tok);
	return ret;
}

char *vfu_caps_format(const struct vfu_caps *caps)
{
	struct json_object *root = json_object_new_object();
	struct json_object *c = json_object_new_object();
	char *out = NULL;

	if (!root || !c)
		goto out_put;
	json_object_object_add(c, "max_msg_fds",
			       json_object_new_int64(caps->max_msg_fds));
	json_object_object_add(c, "max_data_xfer_size",
			       json_object_new_int64(caps->max_data_xfer_size));
	json_object_object_add(c, "max_dma_maps",
			       json_object_new_int64(caps->max_dma_maps));
	json_object_object_add(c, "pgsizes",
			       json_object_new_int64((int64_t)caps->pgsizes));
	json_object_object_add(root, "capabilities", c);
	c = NULL;
	out = strdup(json_object_to_json_string_ext(root,
						    JSON_C_TO_STRING_PLAIN));
out_put:
	json_object_put(c);
	json_object_put(root);
	return out;
}
