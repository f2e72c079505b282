#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""ferry vCPU pause benchmark: how long stopping N busy vCPUs takes.

Every migration switchover and live update starts by getting every vCPU
thread out of KVM_RUN (vmm/vcpu.c: a signal to each thread, then a wait
until all are parked). This benchmark runs memstress with cpus=N on an
N-vCPU ferry-vmm (every vCPU rewriting its share of the pages flat out,
the BSP pinging each AP with IPIs), stops and resumes it REPS times
through QMP, and reads query-status `x-vcpus-pause-us` after each stop:
the time from the first kick to the last vCPU parked.

Figures per vCPU count: median, 90th percentile and maximum in µs, and
the median per vCPU; as a ratio, the median against the 1-vCPU median of
the same run (what one more vCPU costs on this machine). A cell counts
only if the guest was still running and had printed no FAIL.

usage: pausebench.py --build DIR [--cpus N]... [--reps N] [--quick]
                     [--json-only] [--output FILE]

See docs/benchmarks.md ("Pausing the vCPUs")."""
import argparse
import datetime
import json
import os
import statistics
import sys
import time

import benchlib

GUEST_MAX_CPUS = 16     # guest/rt/boot_asm.h
BOOT_WAIT_S = 120.0
BETWEEN_S = 0.1         # running time between two stops


def percentile(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100.0 * (len(s) - 1))))]


def run_cell(build, cpus, reps):
    wd = benchlib.Workdir()
    vmm = None
    try:
        serial = wd.join("serial")
        qmp_path = wd.join("qmp")
        guest_cpus = min(cpus, GUEST_MAX_CPUS)
        vmm = benchlib.Proc(wd, "vmm", [
            os.path.join(build, "ferry-vmm"), "--memory", "256M",
            "--cpus", str(cpus), "--kernel",
            os.path.join(build, "guest", "memstress.elf"), "--append",
            "cpus=%d pages=8192" % guest_cpus, "--serial", "file:" + serial,
            "--qmp", "unix:" + qmp_path])
        q = benchlib.connect_qmp(qmp_path, vmm, 30.0)
        benchlib.wait_until(
            lambda: benchlib.heartbeats(benchlib.read_text(serial)) or
            not vmm.alive(), "first heartbeat", BOOT_WAIT_S)
        pauses = []
        for _ in range(reps):
            q.cmd_ok("stop")
            pauses.append(q.cmd_ok("query-status")["x-vcpus-pause-us"])
            q.cmd_ok("cont")
            time.sleep(BETWEEN_S)
        text = benchlib.read_text(serial)
        v = benchlib.verdict(text)
        if not vmm.alive() or (v and not v[0]):
            raise benchlib.BenchError("guest did not stay healthy: %s" %
                                      (v and v[1] or vmm.stderr()[-500:]))
        q.cmd_ok("quit")
        vmm.wait(30.0)
        return pauses
    finally:
        if vmm:
            vmm.kill()
        wd.cleanup()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", required=True)
    ap.add_argument("--cpus", type=int, action="append")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--quick", action="store_true",
                    help="1 and 4 vCPUs, 10 stops each")
    ap.add_argument("--json-only", action="store_true")
    ap.add_argument("--output")
    a = ap.parse_args()
    if not os.access("/dev/kvm", os.W_OK):
        print("pausebench: /dev/kvm is missing or not writable",
              file=sys.stderr)
        return 77
    counts = a.cpus or ([1, 4] if a.quick else [1, 4, 16])
    reps = 10 if a.quick and a.reps == 30 else a.reps
    if any(n < 1 or n > 64 for n in counts) or reps < 1:
        ap.error("--cpus 1..64, --reps >= 1")
    cells, rc = [], 0
    for n in counts:
        try:
            p = run_cell(a.build, n, reps)
        except benchlib.BenchError as e:
            print("pausebench: %d vCPUs: %s" % (n, e), file=sys.stderr)
            cells.append({"cpus": n, "error": str(e)})
            rc = 1
            continue
        cells.append({"cpus": n, "reps": len(p),
                      "median_us": statistics.median(p),
                      "p90_us": percentile(p, 90), "max_us": max(p),
                      "median_per_vcpu_us": statistics.median(p) / n,
                      "samples_us": p})
    base = next((c["median_us"] for c in cells
                 if c.get("cpus") == 1 and "median_us" in c), None)
    for c in cells:
        if base and "median_us" in c:
            c["ratio_to_1_vcpu"] = c["median_us"] / base
    doc = {"benchmark": "vcpu-pause", "date":
           datetime.datetime.now(datetime.timezone.utc).isoformat(),
           "host_cpus": os.cpu_count(), "cells": cells}
    if not a.json_only:
        print("%-6s %6s %10s %10s %10s %12s %8s" %
              ("vCPUs", "stops", "median us", "p90 us", "max us",
               "per vCPU us", "x 1vCPU"))
        for c in cells:
            if "error" in c:
                print("%-6d %s" % (c["cpus"], "error: " + c["error"]))
                continue
            print("%-6d %6d %10.0f %10.0f %10.0f %12.1f %8s" %
                  (c["cpus"], c["reps"], c["median_us"], c["p90_us"],
                   c["max_us"], c["median_per_vcpu_us"],
                   "%.2f" % c["ratio_to_1_vcpu"]
                   if c.get("ratio_to_1_vcpu") else "-"))
    out = json.dumps(doc, indent=1)
    print(out)
    if a.output:
        with open(a.output, "w") as f:
            f.write(out + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
