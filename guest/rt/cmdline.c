// SPDX-License-Identifier: BSD-3-Clause
#include <stdbool.h>

#include "boot.h"
#include "cmdline.h"
#include "console.h"
#include "lib.h"

#define TOKEN_MAX	128

static bool is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Parse an unsigned number with optional suffix; false if malformed or
 * it does not fit in 64 bits. */
static bool parse_u64(const char *s, uint64_t *out)
{
	unsigned int base = 10, shift = 0;
	uint64_t v = 0;
	bool any = false;

	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		base = 16;
		s += 2;
	}
	for (; *s; s++) {
		unsigned int d;

		if (*s >= '0' && *s <= '9')
			d = *s - '0';
		else if (base == 16 && *s >= 'a' && *s <= 'f')
			d = *s - 'a' + 10;
		else if (base == 16 && *s >= 'A' && *s <= 'F')
			d = *s - 'A' + 10;
		else
			break;
		if (__builtin_mul_overflow(v, base, &v) ||
		    __builtin_add_overflow(v, d, &v))
			return false;
		any = true;
	}
	switch (*s) {
	case 'k': case 'K': shift = 10; s++; break;
	case 'm': case 'M': shift = 20; s++; break;
	case 'g': case 'G': shift = 30; s++; break;
	}
	if (!any || *s)
		return false;
	if (shift && v > (~0ull >> shift))
		return false;
	*out = v << shift;
	return true;
}

static bool key_is(const char *key, const char *tok, size_t len)
{
	return strlen(key) == len && !strncmp(key, tok, len);
}

static void param_apply(const struct param *params, size_t n,
			const struct param_word *words, size_t nwords,
			char *tok)
{
	char *eq = tok;
	uint64_t v;

	while (*eq && *eq != '=')
		eq++;
	if (!*eq) {
		say("unknown parameter '%s' ignored", tok);
		return;
	}
	*eq = 0;
	for (size_t i = 0; i < nwords; i++) {
		size_t len = strlen(eq + 1);

		if (!key_is(words[i].key, tok, eq - tok))
			continue;
		if (len < words[i].size)
			memcpy(words[i].buf, eq + 1, len + 1);
		else
			say("bad value '%s' for %s ignored (keeping %s)",
			    eq + 1, tok, words[i].buf);
		return;
	}
	for (size_t i = 0; i < n; i++) {
		if (!key_is(params[i].key, tok, eq - tok))
			continue;
		if (parse_u64(eq + 1, &v))
			*params[i].value = v;
		else
			say("bad value '%s' for %s ignored (keeping %lu)",
			    eq + 1, tok, *params[i].value);
		return;
	}
	say("unknown parameter '%s' ignored", tok);
}

void params_parse(const struct param *params, size_t n)
{
	params_parse_words(params, n, 0, 0);
}

void params_parse_words(const struct param *params, size_t n,
			const struct param_word *words, size_t nwords)
{
	const char *p = boot_info.cmdline;
	bool first = true;

	for (;;) {
		char tok[TOKEN_MAX];
		size_t len = 0;
		bool has_eq = false;

		while (is_space(*p))
			p++;
		if (!*p)
			break;
		while (*p && !is_space(*p)) {
			if (*p == '=')
				has_eq = true;
			if (len + 1 < sizeof(tok))
				tok[len++] = *p;
			p++;
		}
		tok[len] = 0;
		if (first && !has_eq) {
			first = false;
			continue;	/* the image name */
		}
		first = false;
		param_apply(params, n, words, nwords, tok);
	}
}
