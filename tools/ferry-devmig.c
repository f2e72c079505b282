// SPDX-License-Identifier: BSD-3-Clause
/*
 * ferry-devmig: migrate a ferry-dma device from one ferry-dev to another
 * while DMA jobs run, and show what moved and whether anything was lost.
 * Exit 0 only if every check passed.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "devmig.h"
#include "ferry/log.h"

#define EXIT_USAGE	2
#define MAX_ROUNDS	1000u
#define MAX_JOBS	100000u

static void usage(FILE *f)
{
	fprintf(f,
"usage: ferry-devmig --src SOCKET --dst SOCKET [options]\n"
"\n"
"Live-migrate a ferry-dma device between two ferry-dev servers while a\n"
"DMA job stream runs, then verify device memory, RUNNING_CRC, ring state,\n"
"completions, a pending interrupt and the DMA dirty log.\n"
"\n"
"  -s, --src SOCKET     source ferry-dev socket\n"
"  -d, --dst SOCKET     destination ferry-dev socket (fresh device)\n"
"  -r, --rounds N       pre-copy rounds (default 3)\n"
"  -j, --jobs N         jobs per round (default 40)\n"
"  -v, --verbose        progress on stderr\n"
"  -h, --help           this text\n");
}

static int parse_count(const char *s, uint32_t max, uint32_t *out)
{
	char *end;
	unsigned long v = strtoul(s, &end, 10);

	if (!*s || *end || v < 1 || v > max)
		return -1;
	*out = (uint32_t)v;
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "src", required_argument, NULL, 's' },
		{ "dst", required_argument, NULL, 'd' },
		{ "rounds", required_argument, NULL, 'r' },
		{ "jobs", required_argument, NULL, 'j' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct devmig_opts o = { 0 };
	struct devmig_result r;
	int opt, ret;

	log_init(argv[0]);
	while ((opt = getopt_long(argc, argv, "s:d:r:j:vh", opts, NULL)) != -1) {
		switch (opt) {
		case 's':
			o.src_path = optarg;
			break;
		case 'd':
			o.dst_path = optarg;
			break;
		case 'r':
			if (parse_count(optarg, MAX_ROUNDS, &o.precopy_rounds)) {
				fprintf(stderr, "ferry-devmig: --rounds: '%s' "
					"is not 1..%u\n", optarg, MAX_ROUNDS);
				return EXIT_USAGE;
			}
			break;
		case 'j':
			if (parse_count(optarg, MAX_JOBS, &o.jobs_per_round)) {
				fprintf(stderr, "ferry-devmig: --jobs: '%s' is "
					"not 1..%u\n", optarg, MAX_JOBS);
				return EXIT_USAGE;
			}
			break;
		case 'v':
			o.verbose = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return EXIT_USAGE;
		}
	}
	if (!o.src_path || !o.dst_path || optind < argc) {
		fprintf(stderr, "ferry-devmig: --src and --dst are required\n");
		usage(stderr);
		return EXIT_USAGE;
	}
	ret = devmig_run(&o, &r);
	devmig_result_print(&r);
	devmig_result_free(&r);
	if (ret)
		fprintf(stderr, "ferry-devmig: %s\n", r.why);
	return r.ok && !ret ? 0 : 1;
}
