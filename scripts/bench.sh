#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# `make bench`: the live-migration benchmarks (bench/migbench.py) against
# the binaries of build dir $1. Further arguments go to migbench.py, e.g.
#   sh scripts/bench.sh build --quick
#   sh scripts/bench.sh build --scenario idle-1g --repeat 3
# BENCH_ARGS in the environment is appended too (make bench BENCH_ARGS=...).
# Results: a table and a JSON document on stdout, the JSON also in
# $1/bench-results.json. See docs/benchmarks.md.
set -eu

if [ $# -lt 1 ]; then
	echo "usage: sh scripts/bench.sh BUILD_DIR [migbench.py options]" >&2
	exit 2
fi
build=$1
shift
here=$(cd "$(dirname "$0")/.." && pwd)

# The guests run on /dev/kvm; without it there is nothing to measure.
if [ ! -w /dev/kvm ]; then
	echo "bench: /dev/kvm is missing or not writable: benchmarks need KVM" >&2
	exit 77
fi
# Two 1 GiB guests (source and destination) run at the same time.
avail_kb=$(awk '/^MemAvailable:/ { print $2 }' /proc/meminfo)
if [ "${avail_kb:-0}" -lt 3145728 ]; then
	echo "bench: warning: less than 3 GiB of memory available;" \
		"the 1 GiB scenarios may fail (try --quick)" >&2
fi

# shellcheck disable=SC2086 # BENCH_ARGS is a word list on purpose
exec python3 "$here/bench/migbench.py" --build "$build" "$@" ${BENCH_ARGS:-}
