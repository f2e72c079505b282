/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Shared by ferry's fuzz targets and the standalone driver (fuzz_main.c)
 * used when libFuzzer is not available. A target defines
 * LLVMFuzzerTestOneInput() and may define ferry_fuzz_seeds() to hand the
 * driver well-formed starting inputs; without it the driver starts from
 * the empty input and random bytes.
 */
#ifndef FERRY_TESTS_FUZZ_H
#define FERRY_TESTS_FUZZ_H

#include <stddef.h>
#include <stdint.h>

struct ferry_fuzz_seed {
	const uint8_t *data;
	size_t len;
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
/* Optional (weak in the driver): number of seeds, *out set to them. */
size_t ferry_fuzz_seeds(const struct ferry_fuzz_seed **out);

#endif /* FERRY_TESTS_FUZZ_H */
