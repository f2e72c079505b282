/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Shared by ferry's fuzz targets and the standalone driver (fuzz_main.c)
 * used when libFuzzer is not available. A target defines
 * LLVMFuzzerTestOneInput(), may define LLVMFuzzerInitialize() (run once
 * before the first input, by libFuzzer and by the driver alike) and may
 * define ferry_fuzz_seeds() to hand the driver well-formed starting
 * inputs besides the committed corpus (tests/fuzz/corpus/<target>/, made
 * by gen_corpus.c).
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
int LLVMFuzzerInitialize(int *argc, char ***argv);
/* Optional (weak in the driver): number of seeds, *out set to them. */
size_t ferry_fuzz_seeds(const struct ferry_fuzz_seed **out);

/*
 * Logging for a target: every message is formatted (the formatting of
 * what untrusted input put into a message is code under test too), at
 * the level FERRY_LOG names, debug by default. Where it goes is the
 * runner's business: libFuzzer's -close_fd_mask=2 and the standalone
 * driver send the target's stderr to /dev/null unless
 * FERRY_FUZZ_VERBOSE is set.
 */
void fuzz_log_init(void);

/*
 * A private directory for the sockets a target needs, created on first
 * use (under $TMPDIR, else /tmp) and removed with what fuzz_tmp_path()
 * named in it when the process exits normally.
 */
const char *fuzz_tmp_dir(void);
/* dir/name into buf (at most len bytes); the file is unlinked at exit. */
void fuzz_tmp_path(char *buf, size_t len, const char *name);

#endif /* FERRY_TESTS_FUZZ_H */
