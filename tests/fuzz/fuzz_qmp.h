/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * The QMP fuzz target's VM stand-in (fuzz_qmp.c), shared with the
 * scripted check (qmp_check.c): a fresh VM in prelaunch with default
 * migration parameters (fzq_reset), its QMP socket (fzq_socket), and one
 * turn of its epoll loop (fzq_serve: false if nothing was ready within
 * ms). Not thread-safe: one thread serves.
 */
#ifndef FERRY_FUZZ_QMP_H
#define FERRY_FUZZ_QMP_H

#include <stdbool.h>

void fzq_reset(void);
const char *fzq_socket(void);
bool fzq_serve(int ms);

#endif /* FERRY_FUZZ_QMP_H */
