/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Standalone fuzz driver for builds without libFuzzer: runs the target
 * over its seeds -- the files of the committed corpus directory
 * (FERRY_FUZZ_CORPUS, which meson sets to tests/fuzz/corpus/<target>)
 * and what ferry_fuzz_seeds() returns -- then over deterministic
 * pseudo-random mutations of them for a bounded time, so `make check`
 * always includes a short fuzz run and replays every committed input
 * (regression inputs included). Files named on the command line are
 * replayed instead (crash reproduction). Environment:
 * FERRY_FUZZ_SECONDS (default 5), FERRY_FUZZ_SEED (default 1),
 * FERRY_FUZZ_CORPUS, FERRY_FUZZ_VERBOSE (keep the target's log output).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ferry/util.h"
#include "fuzz.h"

/* Room for a whole migration stream with one ferry-dma device. */
#define FUZZ_MAX_INPUT		(256u * 1024u)
#define FUZZ_MAX_CORPUS		256u
#define FUZZ_DEFAULT_SECONDS	5u

/* Sanitizer runtimes define it; weak so that plain builds link. */
void __sanitizer_set_report_fd(void *fd) __attribute__((weak));

__attribute__((weak)) size_t ferry_fuzz_seeds(const struct ferry_fuzz_seed **out)
{
	*out = NULL;
	return 0;
}

__attribute__((weak)) int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	return 0;
}

/* Where the driver's own messages go: stderr, kept when the target's
 * log output is sent away. */
static FILE *out;

static uint64_t rng_state;

static uint64_t rng(void)
{
	/* xorshift64*: deterministic for a given FERRY_FUZZ_SEED. */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545F4914F6CDD1Dull;
}

static size_t rng_below(size_t n)
{
	return n ? (size_t)(rng() % n) : 0;
}

static const uint32_t interesting32[] = {
	0, 1, 2, 7, 8, 15, 16, 20, 24, 32, 4095, 4096, 4097, 0x7fff, 0x8000,
	0xffff, 0x10000, 0x7fffffff, 0x80000000u, 0xfffffffeu, 0xffffffffu,
};

static size_t mutate(uint8_t *buf, size_t len, size_t cap)
{
	size_t rounds = 1 + rng_below(8);

	for (size_t r = 0; r < rounds; r++) {
		size_t pos = rng_below(len ? len : 1);

		switch (rng_below(6)) {
		case 0:	/* flip a bit */
			if (len)
				buf[pos] ^= (uint8_t)(1u << rng_below(8));
			break;
		case 1:	/* random byte */
			if (len)
				buf[pos] = (uint8_t)rng();
			break;
		case 2:	/* interesting 32-bit value, aligned as fields are */
			pos &= ~(size_t)3;
			if (pos + 4 <= len) {
				uint32_t v = interesting32[rng_below(
					ARRAY_SIZE(interesting32))];

				memcpy(buf + pos, &v, 4);
			}
			break;
		case 3:	/* truncate */
			len = rng_below(len + 1);
			break;
		case 4:	/* insert random bytes */
			if (len < cap) {
				size_t n = MIN(1 + rng_below(16), cap - len);

				memmove(buf + pos + n, buf + pos, len - pos);
				for (size_t i = 0; i < n; i++)
					buf[pos + i] = (uint8_t)rng();
				len += n;
			}
			break;
		default: /* duplicate a chunk (repeats messages) */
			if (len && len < cap) {
				size_t n = MIN(1 + rng_below(len - pos),
					       cap - len);

				memmove(buf + pos + n, buf + pos, len - pos);
				len += n;
			}
			break;
		}
	}
	return len;
}

/* Read a whole file of at most FUZZ_MAX_INPUT bytes (malloc'd). */
static int read_input(const char *path, uint8_t **data, size_t *len)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf;
	size_t n;

	if (!f) {
		fprintf(out, "fuzz: cannot open %s: %s\n", path,
			strerror(errno));
		return -1;
	}
	buf = malloc(FUZZ_MAX_INPUT);
	if (!buf) {
		fclose(f);
		return -1;
	}
	n = fread(buf, 1, FUZZ_MAX_INPUT, f);
	if (!feof(f))
		fprintf(out, "fuzz: %s: only the first %u bytes are used\n",
			path, FUZZ_MAX_INPUT);
	fclose(f);
	*data = buf;
	*len = n;
	return 0;
}

static int replay_file(const char *path)
{
	uint8_t *buf;
	size_t n;

	if (read_input(path, &buf, &n))
		return 1;
	LLVMFuzzerTestOneInput(buf, n);
	free(buf);
	return 0;
}

static int name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/*
 * The regular files of dir, in name order (a stable order keeps a run
 * reproducible), appended to seeds[] from *nr. Returns how many were
 * added; a missing directory is an error (meson passes it on purpose).
 */
static int load_corpus(const char *dir, struct ferry_fuzz_seed *seeds,
		       size_t *nr)
{
	char *names[FUZZ_MAX_CORPUS];
	size_t nr_names = 0, before = *nr;
	struct dirent *de;
	DIR *d = opendir(dir);

	if (!d) {
		fprintf(out, "fuzz: corpus %s: %s\n", dir, strerror(errno));
		return -1;
	}
	while ((de = readdir(d)) && nr_names < FUZZ_MAX_CORPUS) {
		if (de->d_name[0] == '.')
			continue;
		names[nr_names] = strdup(de->d_name);
		if (names[nr_names])
			nr_names++;
	}
	closedir(d);
	qsort(names, nr_names, sizeof(names[0]), name_cmp);
	for (size_t i = 0; i < nr_names; i++) {
		char path[4096];
		struct stat st;
		uint8_t *data;
		size_t len;

		snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		if (!stat(path, &st) && S_ISREG(st.st_mode) &&
		    *nr < FUZZ_MAX_CORPUS && !read_input(path, &data, &len))
			seeds[(*nr)++] = (struct ferry_fuzz_seed){ data, len };
		free(names[i]);
	}
	return (int)(*nr - before);
}

/* Unless FERRY_FUZZ_VERBOSE: the target's stderr (its log) to
 * /dev/null, ours and the sanitizers' reports to the real one. */
static void quiet_target(void)
{
	int keep, null;

	out = stderr;
	if (getenv("FERRY_FUZZ_VERBOSE"))
		return;
	keep = dup(STDERR_FILENO);
	null = open("/dev/null", O_WRONLY | O_CLOEXEC);
	if (keep < 0 || null < 0)
		return;
	out = fdopen(keep, "w");
	if (!out) {
		out = stderr;
		return;
	}
	setvbuf(out, NULL, _IONBF, 0);
	if (__sanitizer_set_report_fd)
		__sanitizer_set_report_fd((void *)(intptr_t)keep);
	dup2(null, STDERR_FILENO);
	close(null);
}

int main(int argc, char **argv)
{
	static struct ferry_fuzz_seed seeds[FUZZ_MAX_CORPUS];
	const struct ferry_fuzz_seed *own;
	const char *env = getenv("FERRY_FUZZ_SECONDS");
	uint64_t secs = env ? strtoull(env, NULL, 0) : FUZZ_DEFAULT_SECONDS;
	uint64_t deadline, runs = 0;
	size_t nr_seeds = 0, nr_own, nr_files = 0;
	uint8_t *buf;
	int ret;

	quiet_target();
	LLVMFuzzerInitialize(&argc, &argv);
	if (argc > 1) {
		for (int i = 1; i < argc; i++)
			if (replay_file(argv[i]))
				return 1;
		return 0;
	}
	env = getenv("FERRY_FUZZ_SEED");
	rng_state = env ? strtoull(env, NULL, 0) : 1;
	if (!rng_state)
		rng_state = 1;
	buf = malloc(FUZZ_MAX_INPUT);
	if (!buf)
		return 1;

	env = getenv("FERRY_FUZZ_CORPUS");
	if (env) {
		ret = load_corpus(env, seeds, &nr_seeds);
		if (ret < 0)
			return 1;
		nr_files = (size_t)ret;
	}
	nr_own = ferry_fuzz_seeds(&own);
	for (size_t i = 0; i < nr_own && nr_seeds < FUZZ_MAX_CORPUS; i++)
		seeds[nr_seeds++] = own[i];

	LLVMFuzzerTestOneInput(buf, 0);
	for (size_t i = 0; i < nr_seeds; i++)
		LLVMFuzzerTestOneInput(seeds[i].data, seeds[i].len);

	deadline = clock_ns() + secs * 1000000000ull;
	while (clock_ns() < deadline) {
		size_t len;

		if (nr_seeds && rng_below(8)) {
			const struct ferry_fuzz_seed *s =
				&seeds[rng_below(nr_seeds)];

			len = MIN(s->len, (size_t)FUZZ_MAX_INPUT);
			memcpy(buf, s->data, len);
		} else {
			len = rng_below(512);
			for (size_t i = 0; i < len; i++)
				buf[i] = (uint8_t)rng();
		}
		len = mutate(buf, len, FUZZ_MAX_INPUT);
		LLVMFuzzerTestOneInput(buf, len);
		runs++;
	}
	fprintf(out, "fuzz: %zu seeds (%zu corpus files), %llu mutated runs, "
		"no crash\n", nr_seeds, nr_files, (unsigned long long)runs);
	for (size_t i = 0; i < nr_files; i++)
		free((void *)seeds[i].data);
	free(buf);
	return 0;
}
