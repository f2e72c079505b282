/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Standalone fuzz driver for builds without libFuzzer: runs the target
 * over its seeds, then over deterministic pseudo-random mutations of them
 * for a bounded time, so `make check` always includes a short fuzz run.
 * Files named on the command line are replayed instead (crash
 * reproduction). Environment: FERRY_FUZZ_SECONDS (default 5),
 * FERRY_FUZZ_SEED (default 1).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ferry/util.h"
#include "fuzz.h"

#define FUZZ_MAX_INPUT		(64u * 1024u)
#define FUZZ_DEFAULT_SECONDS	5u

__attribute__((weak)) size_t ferry_fuzz_seeds(const struct ferry_fuzz_seed **out)
{
	*out = NULL;
	return 0;
}

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

static int replay_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf;
	size_t n;

	if (!f) {
		fprintf(stderr, "fuzz: cannot open %s\n", path);
		return 1;
	}
	buf = malloc(FUZZ_MAX_INPUT);
	if (!buf) {
		fclose(f);
		return 1;
	}
	n = fread(buf, 1, FUZZ_MAX_INPUT, f);
	fclose(f);
	LLVMFuzzerTestOneInput(buf, n);
	free(buf);
	return 0;
}

int main(int argc, char **argv)
{
	const struct ferry_fuzz_seed *seeds;
	const char *env = getenv("FERRY_FUZZ_SECONDS");
	uint64_t secs = env ? strtoull(env, NULL, 0) : FUZZ_DEFAULT_SECONDS;
	uint64_t deadline, runs = 0;
	size_t nr_seeds;
	uint8_t *buf;

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

	nr_seeds = ferry_fuzz_seeds(&seeds);
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
	fprintf(stderr, "fuzz: %zu seeds, %llu mutated runs, no crash\n",
		nr_seeds, (unsigned long long)runs);
	free(buf);
	return 0;
}
