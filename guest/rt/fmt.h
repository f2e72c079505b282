/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * printf-like formatting for both rings: %d %i %u %x %X %s %c %p %%, with
 * flags '-' and '0', a field width and the length modifiers l, ll, z.
 * Returns the length the full output would have (like vsnprintf); the
 * buffer is always terminated when size > 0.
 */
#ifndef GUEST_FMT_H
#define GUEST_FMT_H

#include <stdarg.h>
#include <stddef.h>

int fmt_vsnprintf(char *buf, size_t size, const char *fmt, va_list ap);
int fmt_snprintf(char *buf, size_t size, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#endif /* GUEST_FMT_H */
