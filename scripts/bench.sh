#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
# `make bench`: the live-migration benchmarks (bench/migbench.py), then
# the live-update pause benchmark (bench/cprbench.py), against the
# binaries of build dir $1. Further arguments go to migbench.py, e.g.
#   sh scripts/bench.sh build --quick
#   sh scripts/bench.sh build --scenario idle-1g --repeat 3
# BENCH_ARGS in the environment is appended too (make bench BENCH_ARGS=...).
# cprbench.py gets --quick and --json-only when they are given, and
# BENCH_CPR_ARGS (e.g. BENCH_CPR_ARGS="--mode cpr-exec --reps 10").
# BENCH_CPR=0 skips it, BENCH_CPR=1 runs it even after --scenario (which
# otherwise skips it, as --list and --negative-control do), BENCH_CPR=only
# runs only it (make bench-cpr). The vCPU pause benchmark
# (bench/pausebench.py: 1, 4 and 16 busy vCPUs stopped through QMP) runs
# with the migration benchmarks unless BENCH_PAUSE=0 or --scenario/--list.
# Results: for each, a table and a JSON document on stdout, the JSON also
# in $1/bench-results.json and $1/bench-cpr-results.json, and a timeline
# plot per migration run in $1/bench-plots/ (bench/plot.py, gnuplot).
# Exit status:
# the first non-zero of the two. See docs/benchmarks.md.
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

cpr=${BENCH_CPR:-auto}
case $cpr in
0|1|only|auto) ;;
*)	echo "bench: BENCH_CPR must be 0, 1 or only (not '$cpr')" >&2
	exit 2 ;;
esac
cpr_args=
pause=${BENCH_PAUSE:-1}
# shellcheck disable=SC2086 # BENCH_ARGS is a word list on purpose
for a in "$@" ${BENCH_ARGS:-}; do
	case $a in
	--quick|--json-only) cpr_args="$cpr_args $a" ;;
	# Not the whole migbench run: no cprbench after it either.
	--scenario|--scenario=*|--list|--negative-control|-h|--help)
		[ "$cpr" != auto ] || cpr=0
		pause=0 ;;
	esac
done
[ "$cpr" != auto ] || cpr=1

rc=0
if [ "$cpr" != only ]; then
	# shellcheck disable=SC2086 # BENCH_ARGS is a word list on purpose
	python3 "$here/bench/migbench.py" --build "$build" "$@" \
		${BENCH_ARGS:-} || rc=$?
	# A timeline PNG per run beside the JSON (gnuplot; skipped without).
	if [ -f "$build/bench-results.json" ]; then
		python3 "$here/bench/plot.py" "$build/bench-results.json" \
			"$build/bench-plots" || { r=$?; [ "$r" -eq 77 ] ||
			[ "$rc" -ne 0 ] || rc=$r; }
	fi
	if [ "$pause" != 0 ]; then
		# shellcheck disable=SC2086 # word list on purpose
		python3 "$here/bench/pausebench.py" --build "$build" $cpr_args \
			--output "$build/bench-pause-results.json" ||
			{ r=$?; [ "$rc" -ne 0 ] || rc=$r; }
	fi
fi
if [ "$cpr" != 0 ]; then
	# One guest at a time, up to 16 GiB of sparse RAM: little is used.
	# shellcheck disable=SC2086 # word lists on purpose
	python3 "$here/bench/cprbench.py" --build "$build" $cpr_args \
		${BENCH_CPR_ARGS:-} || { r=$?; [ "$rc" -ne 0 ] || rc=$r; }
fi
exit "$rc"
