#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# `make bench-compare`: ferry against QEMU migrating the same memstress
# guest (bench/compare.py), with the binaries of build dir $1. Further
# arguments go to compare.py, e.g.
#   sh scripts/bench-compare.sh build --quick
#   sh scripts/bench-compare.sh build --cell 4g-bulk1g --repeat 5
# BENCH_ARGS in the environment is appended too
# (make bench-compare BENCH_ARGS=...). Results: a table and a JSON
# document on stdout, the JSON also in $1/bench-compare.json. Without
# qemu-system-x86_64 the QEMU rows are skipped (ferry runs alone). See
# docs/benchmarks.md, "ferry vs QEMU".
set -eu

if [ $# -lt 1 ]; then
	echo "usage: sh scripts/bench-compare.sh BUILD_DIR [compare.py options]" >&2
	exit 2
fi
build=$1
shift
here=$(cd "$(dirname "$0")/.." && pwd)

if [ ! -w /dev/kvm ]; then
	echo "bench-compare: /dev/kvm is missing or not writable:" \
		"benchmarks need KVM" >&2
	exit 77
fi
if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
	echo "bench-compare: qemu-system-x86_64 not found: the QEMU rows" \
		"will be skipped (install qemu-system-x86 to compare)" >&2
fi
# The 4 GiB cells run two 4 GiB guests (source and destination) at once.
avail_kb=$(awk '/^MemAvailable:/ { print $2 }' /proc/meminfo)
if [ "${avail_kb:-0}" -lt 10485760 ]; then
	echo "bench-compare: warning: less than 10 GiB of memory available;" \
		"the 4 GiB cells may fail (try --quick)" >&2
fi

# shellcheck disable=SC2086 # BENCH_ARGS is a word list on purpose
exec python3 "$here/bench/compare.py" --build "$build" "$@" ${BENCH_ARGS:-}
