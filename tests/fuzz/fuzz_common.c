// SPDX-License-Identifier: BSD-3-Clause
/*
 * Helpers every fuzz target links (see fuzz.h): logging and a private
 * temporary directory for sockets.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ferry/log.h"
#include "fuzz.h"

#define FUZZ_TMP_FILES	8

static char tmp_dir[PATH_MAX];
static char tmp_files[FUZZ_TMP_FILES][PATH_MAX];
static unsigned nr_tmp_files;

void fuzz_log_init(void)
{
	log_set_level(LOG_LVL_DEBUG);
	/* FERRY_LOG=warn etc. overrides the default. */
	log_init(NULL);
}

static void tmp_cleanup(void)
{
	for (unsigned i = 0; i < nr_tmp_files; i++)
		unlink(tmp_files[i]);
	if (tmp_dir[0])
		rmdir(tmp_dir);
}

const char *fuzz_tmp_dir(void)
{
	const char *base = getenv("TMPDIR");

	if (tmp_dir[0])
		return tmp_dir;
	if (!base || !*base)
		base = "/tmp";
	snprintf(tmp_dir, sizeof(tmp_dir), "%s/ferry-fuzz-XXXXXX", base);
	if (!mkdtemp(tmp_dir)) {
		fprintf(stderr, "fuzz: mkdtemp %s: %s\n", tmp_dir,
			strerror(errno));
		abort();
	}
	atexit(tmp_cleanup);
	return tmp_dir;
}

void fuzz_tmp_path(char *buf, size_t len, const char *name)
{
	snprintf(buf, len, "%s/%s", fuzz_tmp_dir(), name);
	if (nr_tmp_files < FUZZ_TMP_FILES)
		snprintf(tmp_files[nr_tmp_files++], PATH_MAX, "%s", buf);
}
