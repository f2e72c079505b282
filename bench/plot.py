#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Timeline plots of the migration benchmarks, with gnuplot.

usage: plot.py RESULTS_JSON OUT_DIR

For every run in a bench/migbench.py result file that has a timeline,
OUT_DIR/<scenario>-run<N>.png: RAM bytes sent and remaining and device
data sent (MiB, left axis) and the guest's dirty rate (MB/s, right axis)
over the migration's time, the switchover (status 'device', or the
source's downtime before its end: vCPUs stopped) shaded. Exit 0 when every plot was written, 1 on an error, 77
when gnuplot is not installed (apt install gnuplot-nox).
"""
import json
import os
import shutil
import subprocess
import sys

MIB = 1 << 20
PAGE = 4096


def series(run):
    """Columns for gnuplot: t (s), sent, remaining, device (MiB), dirty
    (MB/s); and the switchover's start and end times."""
    fields = run.get("timeline_fields") or [
        "ms", "status", "transferred", "remaining", "iterations",
        "dirty_pages_rate", "mbps"]
    idx = {f: i for i, f in enumerate(fields)}
    rows, sw_start, sw_end = [], None, None

    def get(sample, name):
        i = idx.get(name)
        v = sample[i] if i is not None and i < len(sample) else None
        return v if isinstance(v, (int, float)) else None

    for s in run.get("timeline", []):
        t = get(s, "ms")
        if t is None:
            continue
        t /= 1000.0
        st = s[idx["status"]] if idx.get("status", 99) < len(s) else None
        if st == "device" and sw_start is None:
            sw_start = t
        if st in ("completed", "failed", "cancelled") and sw_end is None:
            sw_end = t
        vals = [get(s, "transferred"), get(s, "remaining"),
                get(s, "device_transferred"), get(s, "dirty_pages_rate")]
        rows.append("%.3f %s" % (t, " ".join(
            "NaN" if v is None else "%.3f" % (v * PAGE / 1e6 if k == 3
                                              else v / MIB)
            for k, v in enumerate(vals))))
    if sw_start is not None and sw_end is None and rows:
        sw_end = float(rows[-1].split()[0])
    # A switchover shorter than a poll: the source's own downtime,
    # ending at its total time.
    if sw_start is None and run.get("total_ms") and run.get("downtime_ms") \
            is not None:
        sw_end = run["total_ms"] / 1000.0
        sw_start = sw_end - run["downtime_ms"] / 1000.0
    return rows, sw_start, sw_end


def plot(run, out_png, gnuplot):
    rows, sw0, sw1 = series(run)
    if len(rows) < 2:
        return False
    data = out_png[:-4] + ".dat"
    with open(data, "w") as f:
        f.write("# t_s sent_MiB remaining_MiB device_MiB dirty_MBps\n")
        f.write("\n".join(rows) + "\n")
    title = "%s run %s: %s, %s ms total, %s ms downtime" % (
        run.get("scenario"), run.get("run"), run.get("status"),
        run.get("total_ms"), run.get("downtime_ms"))
    script = [
        "set terminal pngcairo size 1000,560 font 'sans,10'",
        "set output '%s'" % out_png,
        "set title '%s' noenhanced" % title.replace("'", ""),
        "set xlabel 'time since migrate (s)'",
        "set ylabel 'MiB'",
        "set y2label 'guest dirty rate (MB/s)'",
        "set ytics nomirror", "set y2tics", "set yrange [0:*]",
        "set y2range [0:*]", "set key top center box opaque",
        "set grid xtics ytics",
    ]
    if sw0 is not None:
        script.append("set object 1 rect from %.3f, graph 0 to %.3f, graph 1 "
                      "fc rgb '#ffd0d0' fs solid 0.6 noborder behind" %
                      (sw0, max(sw1 or sw0, sw0 + 0.001)))
        script.append("set label 1 'switchover' at %.3f, graph 0.95 "
                      "tc rgb '#b00000'" % sw0)
    script.append(
        "plot '%s' using 1:2 with linespoints lw 2 title 'RAM sent', "
        "'' using 1:3 with linespoints lw 2 title 'RAM remaining', "
        "'' using 1:4 with linespoints lw 2 title 'device data sent', "
        "'' using 1:5 axes x1y2 with linespoints dt 2 title "
        "'dirty rate (right)'" % data)
    p = subprocess.run([gnuplot], input="\n".join(script) + "\n",
                       capture_output=True, text=True, timeout=60)
    os.unlink(data)
    if p.returncode or not os.path.exists(out_png):
        raise RuntimeError("gnuplot: %s" % p.stderr.strip())
    return True


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    gnuplot = shutil.which("gnuplot")
    if not gnuplot:
        print("plot: gnuplot is not installed (apt install gnuplot-nox): "
              "no plots", file=sys.stderr)
        return 77
    with open(argv[1]) as f:
        doc = json.load(f)
    os.makedirs(argv[2], exist_ok=True)
    n = 0
    for run in doc.get("results", []):
        out = os.path.join(argv[2], "%s-run%s.png" % (run.get("scenario"),
                                                      run.get("run")))
        try:
            if plot(run, out, gnuplot):
                n += 1
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
            print("plot: %s: %s" % (out, e), file=sys.stderr)
            return 1
    print("plot: %d timeline plot(s) in %s" % (n, argv[2]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
