/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Ring-3 console on COM1 through the service call. say() prefixes the
 * guest's name ("memstress: ...") and adds the newline: every line a
 * harness parses comes from say().
 */
#ifndef GUEST_CONSOLE_H
#define GUEST_CONSOLE_H

#include <stdint.h>

void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Print the verdict and leave through the exit port: 0 PASS, 1 FAIL. */
void guest_exit(int code) __attribute__((noreturn));

#endif /* GUEST_CONSOLE_H */
