/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The C test programs' soft assertion: a failed CHECK prints where and
 * why and counts in `failures` (the including file defines it), and the
 * test goes on, so one run reports every broken promise.
 */
#ifndef FERRY_TESTS_CHECK_H
#define FERRY_TESTS_CHECK_H

#include <stdio.h>

#define CHECK(cond, ...) do {						\
	if (!(cond)) {							\
		failures++;						\
		fprintf(stderr, "FAIL %s:%d: %s: ", __func__, __LINE__,	\
			#cond);						\
		fprintf(stderr, __VA_ARGS__);				\
		fputc('\n', stderr);					\
	}								\
} while (0)

#endif /* FERRY_TESTS_CHECK_H */
