/* SPDX-License-Identifier: BSD-3-Clause */
/* What each workload (memstress.c, dmastress.c) provides to the runtime. */
#ifndef GUEST_GUEST_H
#define GUEST_GUEST_H

/* Prefix of every console line, e.g. "memstress". */
extern const char guest_name[];
/* Runs in ring 3 after TSC calibration; exit code: 0 PASS, 1 FAIL. */
int guest_main(void);

#endif /* GUEST_GUEST_H */
