#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""bench/plot.py draws a migbench result: a PNG per run with a timeline,
none for a run without one. usage: check_plot.py PLOT_PY. Exit 0 pass,
1 fail, 77 without gnuplot."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

FIELDS = ["ms", "status", "transferred", "remaining", "iterations",
          "dirty_pages_rate", "mbps", "device_transferred"]


def main():
    if not shutil.which("gnuplot"):
        print("SKIP: gnuplot not installed")
        return 77
    mib = 1 << 20
    timeline = [[0, "setup", 0, 0, 0, 0, 0.0, 0]]
    for i in range(1, 20):
        timeline.append([i * 100, "active", i * 50 * mib,
                         max(0, 1024 - i * 60) * mib, i // 5, 3000 + i,
                         4000.0, i * mib])
    timeline.append([2050, "completed", 1000 * mib, 0, 4, 0, 0.0, 20 * mib])
    doc = {"results": [
        {"scenario": "synthetic", "run": 1, "status": "ok",
         "total_ms": 2050, "downtime_ms": 40, "timeline_fields": FIELDS,
         "timeline": timeline},
        {"scenario": "empty", "run": 1, "status": "failed",
         "timeline": []},
    ]}
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "r.json")
        with open(src, "w") as f:
            json.dump(doc, f)
        out = os.path.join(d, "plots")
        p = subprocess.run([sys.executable, sys.argv[1], src, out],
                           capture_output=True, text=True, timeout=120)
        if p.returncode:
            print("FAIL: plot.py exit %d: %s" % (p.returncode, p.stderr))
            return 1
        files = sorted(os.listdir(out))
        if files != ["synthetic-run1.png"]:
            print("FAIL: plots %r" % files)
            return 1
        with open(os.path.join(out, files[0]), "rb") as f:
            png = f.read()
        if png[:8] != b"\x89PNG\r\n\x1a\n" or len(png) < 10000:
            print("FAIL: not a real PNG (%d bytes)" % len(png))
            return 1
        print("ok: %s, %d bytes" % (files[0], len(png)))
    return 0


sys.exit(main())
