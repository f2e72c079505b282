#!/bin/sh
# Run every libFuzzer target built in a -Dfuzzing=true build dir for
# $2 seconds each, keeping a corpus per target under fuzz-corpus/.
set -eu
dir=$1
secs=${2:-300}
found=0
for f in "$dir"/tests/fuzz/fuzz-*; do
	[ -f "$f" ] && [ -x "$f" ] || continue
	found=1
	name=$(basename "$f")
	mkdir -p "fuzz-corpus/$name"
	echo "== $name: ${secs}s"
	"$f" -max_total_time="$secs" -print_final_stats=1 "fuzz-corpus/$name"
done
[ "$found" = 1 ] || { echo "no fuzz targets in $dir/tests/fuzz" >&2; exit 1; }
