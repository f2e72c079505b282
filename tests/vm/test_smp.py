#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Guests busy on every vCPU, migrated and saved (real KVM).

usage: test_smp.py CASE
CASE: mem-pingpong | dma-pingpong | dma-stopcont | dma-cancel | file |
      lapic-negative

memstress (or dmastress) with cpus=4 on a 4-vCPU ferry-vmm: the guest
starts its APs with INIT-SIPI-SIPI, each vCPU rewrites and verifies its
own share of the pages, and the BSP pings every AP with IPIs, one
outstanding at a time, each of which must be taken (guest/memstress.c).
dmastress gives each device to an AP of its own, which submits the
descriptors and takes the device's MSI-X (routed to its APIC id); its
interrupt counts must be exact per vCPU.

  mem-pingpong    HOPS live migrations A -> B -> A ..., the guest's
                  counters rising across each, PASS on the last
                  destination with every AP's summary line
  dma-pingpong    the same with dmastress cpus=4 and two ferry-dma
                  devices per side
  dma-stopcont    dmastress cpus=4 with two devices, paused and resumed
                  STOPS times through QMP: PASS with every device's
                  interrupts on its AP, x-vcpus-pause-us reported
  dma-cancel      dmastress cpus=4 with two devices (128 MiB of device
                  memory each): a migration cancelled in setup, one in
                  pre-copy and one in stop-copy, each rolled back (the
                  source's devices RUNNING, every vCPU running on, the
                  destination never runs the guest), then one that
                  completes: PASS with every device's interrupts exact on
                  its AP
  file            migrate to file:PATH, restore it in a new ferry-vmm:
                  the guest resumes (no second boot) and PASSes
  lapic-negative  the negative control: the destination skips loading
                  vCPU 1's LAPIC (debug capability x-skip-ap-lapic), so
                  the AP's APIC comes up software-disabled and drops the
                  BSP's IPIs; the guest must FAIL ipi_lost cpu=1

FERRY_TEST_DEV_ARGS adds ferry-dev arguments to every device of the dma
cases (runs by hand, e.g. --irq-mode intx on a nested KVM).

Every vCPU's registers, LAPIC, MP state and events travel in the stream
(vmm/cpu_state.c); this test is what shows they are the right ones.
Exit 0 pass, 1 fail, 77 skip. Paths from the environment as for the
other vm tests (tests/vm/meson.build).
"""
import os
import re
import sys
import time

import miglib
from miglib import check

CPUS = 4
HOPS = 5
STOPS = 10
GUEST_SECONDS = 90
END_MARGIN_S = 3
PASS_WAIT_S = GUEST_SECONDS + 90
MEMORY = "128M"
# rate-limited (4 MB/s) so that every hop converges on a slow host: a
# nested KVM under TCG (tests/nested) moves ~25 MB/s
MEM_APPEND = "seconds=%d cpus=%d pages=4096 rate=1000" % (GUEST_SECONDS,
                                                          CPUS)
DEVICES = 2
DMA_APPEND = ("seconds=%d cpus=%d devices=%d batch=4 maxlen=16384 pages=256 "
              "timeout=60" % (GUEST_SECONDS, CPUS, DEVICES))
# Room for a slow host's switchover (the figure is not what is tested).
PARAMS = {"downtime-limit": 1000}
# ferry-dev arguments for every device (runs by hand, e.g. --irq-mode
# intx on a nested KVM, docs/testing.md).
DEV_ARGS = os.environ.get("FERRY_TEST_DEV_ARGS", "").split()


def cpu_lines(name, text):
    """{cpu: counters} of the guest's per-AP summary lines."""
    return {int(n): {k: int(v) for k, v in
                     re.findall(r"\b(\w+)=(\d+)\b", rest)}
            for n, rest in re.findall(r"^%s: cpu (\d+): (.*)$" % name,
                                      text, re.M)}


def check_all_cpus(vmm, name, work_key):
    """The verdict covers CPUS vCPUs, and every AP with work (memstress:
    all; dmastress: those owning a device, AP 1 + d % (CPUS - 1))
    reported work done and interrupts taken."""
    v = miglib.verdict(vmm.serial_text())
    check(v and v[0] == "PASS" and v[1].get("cpus") == CPUS,
          "%s: verdict %r" % (vmm.name, v and v[2]))
    lines = cpu_lines(name, vmm.serial_text())
    want = (sorted({1 + d % (CPUS - 1) for d in range(DEVICES)})
            if name == "dmastress" else list(range(1, CPUS)))
    check(sorted(lines) == want,
          "%s: AP summary lines for %r, expected %r" %
          (vmm.name, sorted(lines), want))
    for cpu, c in sorted(lines.items()):
        check(c.get(work_key, 0) > 0 and c.get("irqs", c.get("ipis", 0)) > 0,
              "%s: cpu %d did no work or took no interrupt: %r" %
              (vmm.name, cpu, c))
    return v


def start(c, kind, seconds=GUEST_SECONDS):
    ndev = DEVICES if kind == "dma" else 0
    sides = [[("dma%d" % i, c.device("%s%d" % (side, i), DEV_ARGS))
              for i in range(ndev)] for side in ("A", "B")]
    kernel, append = ((miglib.DMASTRESS, DMA_APPEND) if kind == "dma" else
                      (miglib.MEMSTRESS, MEM_APPEND))
    append = append.replace("seconds=%d" % GUEST_SECONDS,
                            "seconds=%d" % seconds)
    src = c.source(kernel, append, sides[0], memory=MEMORY, cpus=CPUS)
    src.wait_heartbeats(1)
    check(re.search(r"cpus=%d\b" % CPUS, src.serial_text()),
          "the guest did not start %d CPUs:\n%s" %
          (CPUS, src.serial_text()[-2000:]))
    return src, sides


def case_pingpong(c, kind):
    key = "jobs" if kind == "dma" else "rewrites"
    cur, sides = start(c, kind)
    last = cur.heartbeats()[-1]
    for h in range(HOPS):
        t0 = time.monotonic()
        cur, info = miglib.hop(c, cur, sides[(h + 1) % 2],
                               caps={"switchover-ack": True},
                               params=PARAMS, memory=MEMORY, cpus=CPUS)
        beat = cur.wait_heartbeats(1)
        check(beat[key] > last[key],
              "hop %d: %s did not advance: %d, then %d" %
              (h + 1, key, last[key], beat[key]))
        check(beat["t"] <= GUEST_SECONDS - END_MARGIN_S,
              "hop %d ended at guest time %ds, too close to the end of "
              "the %ds run" % (h + 1, beat["t"], GUEST_SECONDS))
        # Stopping the vCPUs is part of the switchover's downtime.
        pause_us = info.get("x-vcpus-pause-us")
        check(isinstance(pause_us, int) and
              0 < pause_us <= info.get("downtime-us", 0),
              "hop %d: x-vcpus-pause-us %r, downtime-us %r" %
              (h + 1, pause_us, info.get("downtime-us")))
        print("hop %d -> %s: %.2f s, downtime %s ms (vCPUs stopped in "
              "%d us), %s=%d t=%d" %
              (h + 1, cur.name, time.monotonic() - t0,
               info.get("downtime"), pause_us, key, beat[key], beat["t"]))
        last = beat
    miglib.expect_pass(cur, PASS_WAIT_S)
    v = check_all_cpus(cur, "dmastress" if kind == "dma" else "memstress",
                       key)
    print("ok: %s" % v[2])


def case_stopcont(c):
    src, _ = start(c, "dma", seconds=30)
    pauses = []
    for _ in range(STOPS):
        src.cmd("stop")
        pauses.append(src.cmd("query-status")["x-vcpus-pause-us"])
        time.sleep(0.2)
        src.cmd("cont")
        time.sleep(0.5)
    check(all(isinstance(p, int) and p > 0 for p in pauses),
          "x-vcpus-pause-us after each stop: %r" % pauses)
    miglib.expect_pass(src, PASS_WAIT_S)
    v = check_all_cpus(src, "dmastress", "jobs")
    print("ok: %s; pauses of %d vCPUs: %s us" % (v[2], CPUS, pauses))


def case_cancel(c):
    import test_migration_cancel as mc
    dev_args = ["--device-memory", "128M"] + DEV_ARGS
    sides = [[("dma%d" % i, c.device("%s%d" % (side, i), dev_args))
              for i in range(DEVICES)] for side in ("A", "B")]
    src = c.source(miglib.DMASTRESS, DMA_APPEND, sides[0], memory=MEMORY,
                   cpus=CPUS)
    src.wait_heartbeats(1)
    for phase in ("setup", "active", "device"):
        if phase == "setup":
            dst, info = mc.cancel_in_setup(c, src, sides[1], MEMORY, CPUS)
        elif phase == "active":
            dst, info = mc.cancel_when(
                c, src, sides[1], MEMORY, "active",
                {"switchover-ack": True},
                {"downtime-limit": 0, "max-bandwidth": mc.SLOW_BANDWIDTH},
                mc.MID_ITERATION_BYTES, cpus=CPUS)
        else:
            dst, info = mc.cancel_when(
                c, src, sides[1], MEMORY, "device",
                {"switchover-ack": False},
                {"downtime-limit": mc.HUGE_DOWNTIME_MS,
                 "max-bandwidth": 0}, cpus=CPUS)
        miglib.expect_source_keeps_guest(src, src.query_migrate(), "jobs")
        mc.expect_dest_not_run(dst)
        print("cancelled in %s: the source runs on" % phase)
        # The next phase's MIGRATION events on their own.
        del src.qmp().events[:]
    dst, info = miglib.hop(c, src, sides[1], caps={"switchover-ack": True},
                           params=dict(PARAMS, **{"max-bandwidth": 0}),
                           memory=MEMORY, cpus=CPUS)
    miglib.expect_pass(dst, PASS_WAIT_S)
    v = check_all_cpus(dst, "dmastress", "jobs")
    print("ok: after three cancels, migrated: %s" % v[2])


def case_file(c):
    src, _ = start(c, "mem")
    path = c.join("vm.mig")
    src.cmd("migrate", {"uri": "file:" + path})
    info = src.wait_migration()
    check(info["status"] == "completed", "file migration ended %r" % info)
    src.cmd("quit")
    src.wait()
    dst = c.dest([], memory=MEMORY, cpus=CPUS, incoming="file:" + path)
    miglib.expect_pass(dst, PASS_WAIT_S)
    check("start " not in dst.serial_text(),
          "the guest booted again instead of resuming")
    v = check_all_cpus(dst, "memstress", "rewrites")
    print("ok: restored from the file: %s" % v[2])


def case_lapic_negative(c):
    src, _ = start(c, "mem")
    dst = c.dest([], memory=MEMORY, cpus=CPUS)
    dst.cmd("migrate-set-capabilities", {"capabilities": [
        {"capability": "x-skip-ap-lapic", "state": True}]})
    src.cmd("migrate", {"uri": dst.incoming})
    info = src.wait_migration()
    check(info["status"] == "completed", "migration ended %r" % info)
    rc, v = miglib.wait_guest_end(dst, PASS_WAIT_S)
    check(rc != 0 and v and v[0] == "FAIL" and
          "FAIL ipi_lost cpu=1 " in v[2],
          "negative control not caught: with vCPU 1's LAPIC not loaded "
          "the guest ended %r (exit %s)" % (v and v[2], rc))
    print("ok: caught: %s" % v[2])


CASES = {
    "mem-pingpong": lambda c: case_pingpong(c, "mem"),
    "dma-pingpong": lambda c: case_pingpong(c, "dma"),
    "dma-stopcont": case_stopcont,
    "dma-cancel": case_cancel,
    "file": case_file,
    "lapic-negative": case_lapic_negative,
}


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in CASES:
        print(__doc__, file=sys.stderr)
        return 2
    miglib.require(miglib.MEMSTRESS, miglib.DMASTRESS)
    miglib.run("smp-" + sys.argv[1], CASES[sys.argv[1]])


if __name__ == "__main__":
    sys.exit(main())
