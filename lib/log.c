/* SPDX-License-Identifier: BSD-3-Clause */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/log.h"

static const char *log_prog = "ferry";
static enum log_level log_level = LOG_LVL_INFO;

void log_init(const char *prog)
{
	const char *env = getenv("FERRY_LOG");

	if (prog) {
		const char *slash = strrchr(prog, '/');

		log_prog = slash ? slash + 1 : prog;
	}
	if (!env)
		return;
	if (!strcmp(env, "debug"))
		log_level = LOG_LVL_DEBUG;
	else if (!strcmp(env, "info"))
		log_level = LOG_LVL_INFO;
	else if (!strcmp(env, "warn"))
		log_level = LOG_LVL_WARN;
	else if (!strcmp(env, "error"))
		log_level = LOG_LVL_ERROR;
}

void log_set_level(enum log_level lvl)
{
	log_level = lvl;
}

enum log_level log_get_level(void)
{
	return log_level;
}

void log_msg(enum log_level lvl, const char *fmt, ...)
{
	static const char *const names[] = { "debug", "info", "warning", "error" };
	char buf[1024];
	va_list ap;

	if (lvl < log_level)
		return;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	/* One fprintf per line so concurrent threads do not interleave. */
	fprintf(stderr, "%s: %s: %s\n", log_prog, names[lvl], buf);
}
