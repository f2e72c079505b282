/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * CRC32C in the guest: the contract is include/ferry/crc32c.h (shared with
 * the device model, so both sides compute the same values); guest/rt/crc.c
 * implements crc32c_update() with the SSE4.2 crc32 instruction when CPUID
 * has it (ring 3 may execute it), a table otherwise (QEMU's default CPU
 * model lacks SSE4.2).
 */
#ifndef GUEST_CRC_H
#define GUEST_CRC_H

#include "ferry/crc32c.h"

/* 0 if the known answer checks out; also picks the implementation. */
int crc32c_selftest(void);
int crc32c_is_hw(void);

#endif /* GUEST_CRC_H */
