/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * key=value parameters from the multiboot command line. The caller sets
 * defaults in the variables first. Values: decimal or 0x-hex, with an
 * optional k/m/g suffix (powers of 1024). A first word without '=' is the
 * image name some loaders (QEMU) put there and is skipped; any other
 * unknown key or malformed value is reported and ignored.
 */
#ifndef GUEST_CMDLINE_H
#define GUEST_CMDLINE_H

#include <stddef.h>
#include <stdint.h>

struct param {
	const char *key;
	uint64_t *value;
};

void params_parse(const struct param *params, size_t n);

#endif /* GUEST_CMDLINE_H */
