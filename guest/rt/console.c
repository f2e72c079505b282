// SPDX-License-Identifier: BSD-3-Clause
#include <stdarg.h>

#include "boot.h"
#include "console.h"
#include "fmt.h"
#include "lib.h"
#include "svc.h"

#define LINE_MAX	512

/* One line at a time when several CPUs talk. */
static volatile int console_lock;

void say(const char *fmt, ...)
{
	char line[LINE_MAX];
	va_list ap;
	int n, m;

	n = fmt_snprintf(line, sizeof(line), "%s: ", guest_name);
	va_start(ap, fmt);
	m = fmt_vsnprintf(line + n, sizeof(line) - n - 1, fmt, ap);
	va_end(ap);
	n += m;
	if (n > LINE_MAX - 2)
		n = LINE_MAX - 2;	/* truncated, still one line */
	line[n++] = '\n';
	while (__atomic_exchange_n(&console_lock, 1, __ATOMIC_ACQUIRE))
		cpu_relax();
	svc_call(SVC_CONSOLE_WRITE, (uint64_t)line, n, 0);
	__atomic_store_n(&console_lock, 0, __ATOMIC_RELEASE);
}

void guest_exit(int code)
{
	svc_call(SVC_EXIT, code, 0, 0);
	for (;;)
		;	/* not reached: SVC_EXIT halts in ring 0 */
}
