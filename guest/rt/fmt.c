// SPDX-License-Identifier: BSD-3-Clause
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fmt.h"

struct out {
	char *buf;
	size_t size;
	size_t pos;
};

static void out_ch(struct out *o, char c)
{
	if (o->pos + 1 < o->size)
		o->buf[o->pos] = c;
	o->pos++;
}

static void out_pad(struct out *o, char c, int n)
{
	while (n-- > 0)
		out_ch(o, c);
}

static void out_field(struct out *o, const char *s, int len, int width,
		      bool left, char pad)
{
	if (!left)
		out_pad(o, pad, width - len);
	for (int i = 0; i < len; i++)
		out_ch(o, s[i]);
	if (left)
		out_pad(o, ' ', width - len);
}

/* Digits of v in base (10 or 16), written backwards into tmp. */
static int utoa_rev(char *tmp, uint64_t v, unsigned int base, bool upper)
{
	const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
	int n = 0;

	do {
		tmp[n++] = digits[v % base];
		v /= base;
	} while (v);
	return n;
}

static void out_number(struct out *o, uint64_t v, bool neg, unsigned int base,
		       bool upper, int width, bool left, char pad)
{
	char rev[24], s[24];
	int n = utoa_rev(rev, v, base, upper), len = 0;

	if (neg && pad == '0') {
		/* The sign goes before zero padding. */
		out_ch(o, '-');
		width--;
		neg = false;
	}
	if (neg)
		s[len++] = '-';
	while (n)
		s[len++] = rev[--n];
	out_field(o, s, len, width, left, pad);
}

int fmt_vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
	struct out o = { .buf = buf, .size = size, .pos = 0 };

	for (const char *p = fmt; *p; p++) {
		bool left = false;
		char pad = ' ';
		int width = 0, lng = 0;
		uint64_t u;
		int64_t d;

		if (*p != '%') {
			out_ch(&o, *p);
			continue;
		}
		p++;
		for (;; p++) {
			if (*p == '-')
				left = true;
			else if (*p == '0')
				pad = '0';
			else
				break;
		}
		while (*p >= '0' && *p <= '9')
			width = width * 10 + (*p++ - '0');
		while (*p == 'l' || *p == 'z') {
			lng++;
			p++;
		}
		switch (*p) {
		case 'd':
		case 'i':
			d = lng ? va_arg(ap, int64_t) : va_arg(ap, int);
			u = d < 0 ? -(uint64_t)d : (uint64_t)d;
			out_number(&o, u, d < 0, 10, false, width, left, pad);
			break;
		case 'u':
			u = lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned int);
			out_number(&o, u, false, 10, false, width, left, pad);
			break;
		case 'x':
		case 'X':
			u = lng ? va_arg(ap, uint64_t) : va_arg(ap, unsigned int);
			out_number(&o, u, false, 16, *p == 'X', width, left, pad);
			break;
		case 'p':
			u = (uint64_t)va_arg(ap, void *);
			out_ch(&o, '0');
			out_ch(&o, 'x');
			out_number(&o, u, false, 16, false, width, left, pad);
			break;
		case 'c': {
			char c = va_arg(ap, int);

			out_field(&o, &c, 1, width, left, ' ');
			break;
		}
		case 's': {
			const char *s = va_arg(ap, const char *);
			int len = 0;

			if (!s)
				s = "(null)";
			while (s[len])
				len++;
			out_field(&o, s, len, width, left, ' ');
			break;
		}
		case '%':
			out_ch(&o, '%');
			break;
		case 0:
			p--;	/* lone '%' at the end */
			break;
		default:
			out_ch(&o, '%');
			out_ch(&o, *p);
			break;
		}
	}
	if (size)
		buf[o.pos < size ? o.pos : size - 1] = 0;
	return o.pos;
}

int fmt_snprintf(char *buf, size_t size, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = fmt_vsnprintf(buf, size, fmt, ap);
	va_end(ap);
	return n;
}
