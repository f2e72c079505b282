#!/bin/sh
# Run the libFuzzer targets of a -Dfuzzing=true build dir for SECONDS each
# (default 300), one after another, and print the coverage each reached.
#
#   scripts/fuzz.sh BUILD_DIR [SECONDS [TARGET...]]
#
# TARGETs are the short names (mig-load, qmp, ...; default: all built).
# Each run starts from the committed corpus (tests/fuzz/corpus/TARGET/,
# copied into fuzz-corpus/TARGET/, which keeps what the runs add and is
# not in git); its libFuzzer output goes to fuzz-corpus/TARGET.log, a
# crashing input to fuzz-corpus/TARGET-crash-*. The target's own log
# output is dropped (-close_fd_mask=2). Exit status 1 if a target
# crashed.
set -eu
dir=$1
secs=${2:-300}
shift
[ $# -gt 0 ] && shift
only=" $* "
root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/fuzz-corpus
table=$(mktemp)
trap 'rm -f "$table"' EXIT
found=0
failed=0

# "cov ft" of the first INITED line, of the last line with coverage.
first_cov() {
	sed -n 's/.*INITED.* cov: \([0-9]*\) ft: \([0-9]*\).*/\1 \2/p' "$1" |
		head -n 1
}
last_cov() {
	sed -n 's/.* cov: \([0-9]*\) ft: \([0-9]*\).*/\1 \2/p' "$1" | tail -n 1
}
last_corp() {
	sed -n 's/.* corp: \([0-9]*\/[0-9A-Za-z]*\).*/\1/p' "$1" | tail -n 1
}
final_stat() {
	sed -n "s/^stat::$2: *\([0-9]*\).*/\1/p" "$1" | tail -n 1
}

for f in "$dir"/tests/fuzz/fuzz-*; do
	[ -f "$f" ] && [ -x "$f" ] || continue
	name=${f##*/fuzz-}
	if [ "$only" != "  " ]; then
		case $only in *" $name "*) ;; *) continue ;; esac
	fi
	found=1
	mkdir -p "$out/$name"
	if [ -d "$root/tests/fuzz/corpus/$name" ]; then
		cp "$root/tests/fuzz/corpus/$name"/* "$out/$name"/ \
			2>/dev/null || true
	fi
	log=$out/$name.log
	echo "== $name: ${secs}s from $(ls "$out/$name" | wc -l) inputs" \
		"(log: $log)"
	rc=0
	"$f" -max_total_time="$secs" -print_final_stats=1 -close_fd_mask=2 \
		-artifact_prefix="$out/$name-" "$out/$name" >"$log" 2>&1 ||
		rc=$?
	start=$(first_cov "$log")
	end=$(last_cov "$log")
	result=ok
	if [ "$rc" != 0 ]; then
		result="CRASH (exit $rc)"
		failed=1
	fi
	printf '%-12s %6s %8s %8s %8s %8s %10s %7s %12s  %s\n' "$name" \
		"$secs" ${start:-? ?} ${end:-? ?} \
		"$(final_stat "$log" number_of_executed_units)" \
		"$(final_stat "$log" average_exec_per_sec)" \
		"$(last_corp "$log")" "$result" >>"$table"
	tail -n 1 "$table"
done
[ "$found" = 1 ] || { echo "no fuzz targets in $dir/tests/fuzz" >&2; exit 1; }

echo
echo "Coverage (libFuzzer's cov: edges, ft: features; start = the corpus" \
	"loaded, end = after the run):"
printf '%-12s %6s %8s %8s %8s %8s %10s %7s %12s  %s\n' target seconds \
	start-cov start-ft end-cov end-ft runs exec/s corpus result
cat "$table"
exit $failed
