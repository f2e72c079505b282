/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * key=value parameters from the multiboot command line. The caller sets
 * defaults in the variables first. Values: decimal or 0x-hex, with an
 * optional k/m/g suffix (powers of 1024). A first word without '=' is the
 * image name some loaders (QEMU) put there and is skipped; any other
 * unknown key or malformed value is reported and ignored.
 *
 * Word parameters (struct param_word) take their value as text, copied
 * into the caller's buffer (NUL-terminated); the caller checks it, since
 * only it knows the words it accepts. A value that does not fit is
 * reported and ignored like a malformed number.
 */
#ifndef GUEST_CMDLINE_H
#define GUEST_CMDLINE_H

#include <stddef.h>
#include <stdint.h>

struct param {
	const char *key;
	uint64_t *value;
};

struct param_word {
	const char *key;
	char *buf;		/* holds the default, gets the value */
	size_t size;
};

void params_parse(const struct param *params, size_t n);
void params_parse_words(const struct param *params, size_t n,
			const struct param_word *words, size_t nwords);

#endif /* GUEST_CMDLINE_H */
