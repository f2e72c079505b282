/* SPDX-License-Identifier: BSD-3-Clause */
/* Guest-requested exit: a write of v to port 0xf4 ends ferry-vmm with v. */
#ifndef FERRY_VMM_DEBUG_EXIT_H
#define FERRY_VMM_DEBUG_EXIT_H

struct vm;

#define DEBUG_EXIT_PORT	0xf4
#define DEBUG_EXIT_LEN	4

int debug_exit_init(struct vm *vm);

#endif /* FERRY_VMM_DEBUG_EXIT_H */
