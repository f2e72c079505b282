#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""ferry against QEMU: the same memstress guest live-migrated by both VMMs.

Each cell (a guest size and a workload) runs once per VMM per round,
interleaved (cell1-qemu, cell1-ferry, cell2-qemu, ...), so that both see
the same machine load. Every run is a real source and destination of one
VMM on loopback TCP, with the same limits (downtime-limit 300 ms, no
bandwidth cap, 1 vCPU), and counts only when the destination guest ends
its run with PASS. Once per invocation, two baselines: one loopback TCP
stream and one write of 1 GiB to /dev/shm (bench/tcpstream.c).

usage: compare.py --build DIR [--cell NAME]... [--repeat N] [--quick]
                  [--json-only] [--output FILE] [--qemu BINARY] [--list]

See docs/benchmarks.md, "ferry vs QEMU (make bench-compare)"."""
import argparse
import datetime
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402
import migbench as mb  # noqa: E402  (guest stalls, JSON, host info)

MiB = 1 << 20
GiB = 1 << 30
PAGE = 4096

# Both VMMs get the same parameters. QEMU's max-bandwidth defaults to
# 128 MiB/s; ferry's to unlimited. 100 GiB/s is "unlimited" for both.
DOWNTIME_LIMIT_MS = 300
RAISED_LIMIT_MS = 3000
MAX_BANDWIDTH = 100 * GiB

# Bounds on the waits that are not the measurement (see migbench.py).
START_TIMEOUT = 30.0	# a process's socket appears / it listens
BOOT_SLACK = 60.0	# VMM start-up and firmware (QEMU's SeaBIOS runs
			# emulated on kvm_pvm: slow on a loaded host) before
			# the guest's clock starts; the guest-time check below
			# keeps the budgets honest
EXIT_TIMEOUT = 30.0	# the ferry source exits after completing
VERDICT_SLACK = 90.0	# past the guest's own end time
CANCEL_TIMEOUT = 30.0
TAIL_S = 5		# guest time left on the destination after the budget
SAMPLE_PERIOD = 0.005	# source CPU samples (/proc) during the migration
QUERY_TIMEOUT = 10	# for an answer to query-migrate
QUERY_FIRST = 0.02	# query-migrate period during the first QUERY_FAST_S
QUERY_FAST_S = 2.0
QUERY_PERIOD = 0.1	# ...then
QUERY_PERIOD_DEVICE = 0.005	# while the guest is stopped (ferry)
TIMELINE_PERIOD = 0.5

VMMS = ("qemu", "ferry")
GOAL_BULK_TCP = 0.85	# bulk throughput >= 85 % of the TCP stream
GOAL_TOTAL = 0.8	# total time <= 0.8x QEMU
GOAL_BYTES = 1.1	# bytes <= 1.1x QEMU
GOAL_PAUSE = 0.5	# guest pause <= 0.5x QEMU on the dirty cells


class Cell:
    """One guest size and workload. The guest runs warmup_s + budget_s +
    raise_budget_s + TAIL_S seconds, so that it is still running on the
    destination when the slowest allowed migration ends."""

    def __init__(self, name, desc, memory, append, kind, warmup_s=10,
                 budget_s=20, raise_budget_s=10, channels=0, cpus=1):
        self.name = name
        self.desc = desc
        self.memory = memory
        self.append = dict(append)
        self.kind = kind		# idle, fill, dirty, bulk
        self.warmup_s = warmup_s	# first pass done by then (guest time)
        self.budget_s = budget_s	# converge at 300 ms within this...
        self.raise_budget_s = raise_budget_s	# ...then at 3000 ms
        self.channels = channels	# multifd channels on both VMMs; 0: off
        self.cpus = cpus		# vCPUs (-smp / --cpus), all busy

    def guest_seconds(self):
        return self.warmup_s + self.budget_s + self.raise_budget_s + TAIL_S

    def cmdline(self):
        words = ["%s=%s" % (k, v) for k, v in self.append.items()]
        if self.cpus > 1:
            words.append("cpus=%d" % self.cpus)
        return " ".join(words + ["seconds=%d" % self.guest_seconds()])

    def describe(self):
        return {"name": self.name, "desc": self.desc,
                "memory_bytes": self.memory, "kind": self.kind,
                "guest_cmdline": self.cmdline(),
                "warmup_s": self.warmup_s, "budget_s": self.budget_s,
                "raise_budget_s": self.raise_budget_s,
                "multifd_channels": self.channels, "vcpus": self.cpus}


def _cells():
    out = []
    for size, mem in (("1g", GiB), ("4g", 4 * GiB)):
        out += [
            Cell(size + "-idle", "%s guest, idle (one page rewritten per "
                 "second)" % size.upper(), mem, {"pages": 1, "rate": 1},
                 "idle", warmup_s=8),
            Cell(size + "-fill64m", "%s guest, 64 MiB written once at full "
                 "speed, then one page per second" % size.upper(), mem,
                 {"pages": 64 * MiB // PAGE, "rate": 1, "fill": 1}, "fill"),
            Cell(size + "-dirty64m", "%s guest rewriting 64 MiB as fast as "
                 "it can" % size.upper(), mem,
                 {"pages": 64 * MiB // PAGE}, "dirty"),
            Cell(size + "-dirty512m", "%s guest rewriting 512 MiB as fast "
                 "as it can; downtime-limit 3000 ms after 40 s" %
                 size.upper(), mem, {"pages": 512 * MiB // PAGE}, "dirty",
                 warmup_s=15, budget_s=40, raise_budget_s=20),
        ]
    # Issue 9's goal: the 512 MiB cell with 4 multifd channels on both
    # VMMs (QEMU's multifd x4 is the reference).
    out.append(Cell("1g-dirty512m-mfd4", "1G guest rewriting 512 MiB as "
                    "fast as it can, 4 multifd channels on both VMMs; "
                    "downtime-limit 3000 ms after 40 s", GiB,
                    {"pages": 512 * MiB // PAGE}, "dirty", warmup_s=15,
                    budget_s=40, raise_budget_s=20, channels=4))
    # Issue 14: the 1 GiB dirty cells with 4 busy vCPUs on both VMMs,
    # each rewriting a quarter of the working set.
    for ws in (64, 512):
        big = ws == 512
        out.append(Cell("1g-dirty%dm-cpus4" % ws, "1G guest, 4 vCPUs "
                        "rewriting %d MiB as fast as they can%s" %
                        (ws, "; downtime-limit 3000 ms after 40 s"
                         if big else ""), GiB,
                        {"pages": ws * MiB // PAGE}, "dirty",
                        warmup_s=15 if big else 10,
                        budget_s=40 if big else 20,
                        raise_budget_s=20 if big else 10, cpus=4))
    out.append(Cell("4g-bulk1g", "4G guest, 1 GiB written once at full "
                    "speed, then one page per second: bulk transfer",
                    4 * GiB, {"pages": GiB // PAGE, "rate": 1, "fill": 1},
                    "bulk", warmup_s=30))
    return out


CELLS = _cells()


class Ctx:
    """What every run needs: binaries and options."""

    def __init__(self, build, qemu, qemu_name):
        self.qemu_name = qemu_name
        self.build = os.path.abspath(build)
        self.vmm = os.path.join(self.build, "ferry-vmm")
        self.guest = os.path.join(self.build, "guest", "memstress.elf")
        self.tcpstream = os.path.join(self.build, "bench", "tcpstream")
        self.qemu = qemu	# full path, or None: QEMU rows skipped

    def missing(self):
        return [p for p in (self.vmm, self.guest, self.tcpstream)
                if not os.access(p, os.R_OK)]


def log(msg):
    print("bench-compare: " + msg, file=sys.stderr, flush=True)


# ---- source CPU -------------------------------------------------------

def _read_stat(path):
    """(state, comm, utime+stime in ticks) of a /proc stat file, or None."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    lp, rp = text.find("("), text.rfind(")")
    fields = text[rp + 2:].split()
    try:
        return fields[0], text[lp + 1:rp], int(fields[11]) + int(fields[12])
    except (IndexError, ValueError):
        return None


def _read_runtime_ns(pid, tid, tick):
    """A thread's CPU time in ns: schedstat's sum_exec_runtime (exact),
    else utime+stime (clock ticks). None if the thread is gone."""
    try:
        with open("/proc/%d/task/%d/schedstat" % (pid, tid)) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    st = _read_stat("/proc/%d/task/%d/stat" % (pid, tid))
    return None if st is None else int(st[2] * 1e9 / tick)


class CpuWatch:
    """CPU time of the source VMM over the migration, per thread, so that
    the vCPU thread (the guest's own spinning) can be told apart from the
    migration's work.

    Each sample reads every thread's sum_exec_runtime (ns); a thread that
    exits keeps its last sampled figure (it loses at most one sampling
    period). The whole process's utime+stime from /proc/PID/stat, which
    includes exited threads but has a 10 ms tick, is kept as a check.

    The vCPU threads: QEMU names them "CPU N/KVM" (-name
    debug-threads=on), and so does ferry; a ferry too old to name them
    falls back to the thread that used the most CPU up to the migration
    (the guest spins from boot; nothing else in the VMM does much before
    a migration), which is right for one vCPU only."""

    def __init__(self, pid):
        self.pid = pid
        self.tick = float(os.sysconf("SC_CLK_TCK"))
        try:
            tids = [int(t) for t in os.listdir("/proc/%d/task" % pid)]
        except OSError:
            raise bl.BenchError("source VMM %d is gone" % pid)
        names, base = {}, {}
        for tid in tids:
            st = _read_stat("/proc/%d/task/%d/stat" % (pid, tid))
            ns = _read_runtime_ns(pid, tid, self.tick)
            if st is not None and ns is not None:
                names[tid] = st[1]
                base[tid] = ns
        named = [t for t, n in names.items()
                 if n.startswith("CPU ") and n.endswith("/KVM")]
        if named:
            self.vcpu_tids, self.how = named, "thread name"
        elif base:
            self.vcpu_tids = [max(base, key=lambda t: base[t])]
            self.how = "busiest thread"
        else:
            raise bl.BenchError("no threads in /proc/%d/task" % pid)
        self.base = base
        self.runtime = dict(base)
        st = _read_stat("/proc/%d/stat" % pid)
        if st is None:
            raise bl.BenchError("cannot read the source's CPU time")
        self.stat_before = self.stat_last = st[2]
        self.t_before = self.t_last = time.monotonic()

    def poll(self):
        """One sample, unless the process is gone or a zombie."""
        st = _read_stat("/proc/%d/stat" % self.pid)
        if st is None or st[0] in ("Z", "X"):
            return
        try:
            tids = [int(t) for t in os.listdir("/proc/%d/task" % self.pid)]
        except OSError:
            return
        now = time.monotonic()
        for tid in tids:
            ns = _read_runtime_ns(self.pid, tid, self.tick)
            if ns is not None:
                self.runtime[tid] = ns
        self.stat_last = st[2]
        self.t_last = now

    def fill(self, row, gib_moved):
        total = sum(ns - self.base.get(tid, 0)
                    for tid, ns in self.runtime.items()) / 1e9
        vcpu = sum(self.runtime[t] - self.base[t]
                   for t in self.vcpu_tids) / 1e9
        row["src_cpu_s"] = round(total, 4)
        row["src_cpu_vcpu_s"] = round(vcpu, 4)
        row["src_cpu_migration_s"] = round(max(total - vcpu, 0), 4)
        row["src_cpu_stat_s"] = round((self.stat_last - self.stat_before) /
                                      self.tick, 3)
        row["src_cpu_vcpu_thread"] = self.how
        row["src_threads_seen"] = len(self.runtime)
        if gib_moved:
            row["src_cpu_s_per_gib"] = round(row["src_cpu_migration_s"] /
                                             gib_moved, 3)
            row["src_cpu_process_s_per_gib"] = round(row["src_cpu_s"] /
                                                     gib_moved, 3)


# ---- starting the VMMs ------------------------------------------------

def qemu_argv(ctx, cell, wd, name, extra):
    """Source and destination get the same command line (QEMU's rule for
    migration); the destination adds -incoming defer. debug-threads names
    the vCPU thread ("CPU 0/KVM") for CpuWatch."""
    return [ctx.qemu, "-name", "ferry-cmp-" + name + ",debug-threads=on",
            "-accel", "kvm", "-m", "%dM" % (cell.memory // MiB),
            "-smp", str(cell.cpus), "-nodefaults", "-display", "none", "-no-reboot",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
            "-kernel", ctx.guest, "-append", cell.cmdline(),
            "-serial", "file:" + wd.join(name + ".serial"),
            "-qmp", "unix:%s,server=on,wait=off" % wd.join(name + ".qmp")] + \
        list(extra)


def ferry_argv(ctx, cell, wd, name, extra):
    return [ctx.vmm, "--memory", str(cell.memory), "--cpus", str(cell.cpus),
            "--serial", "file:" + wd.join(name + ".serial"),
            "--qmp", "unix:" + wd.join(name + ".qmp")] + list(extra)


def start_qemu_destination(ctx, cell, wd, procs, row):
    """-incoming defer, then migrate-incoming on a free port (retried if
    another process took the port meanwhile)."""
    argv = qemu_argv(ctx, cell, wd, "dst", ["-incoming", "defer"])
    row["argv_destination"] = argv
    p = bl.Proc(wd, "dst", argv)
    procs.append(p)
    q = bl.connect_qmp(wd.join("dst.qmp"), p, START_TIMEOUT)
    try:
        if cell.channels:
            mb.set_multifd(q, cell.channels)	# before migrate-incoming
        err = None
        for _ in range(3):
            uri = "tcp:127.0.0.1:%d" % bl.free_tcp_port()
            r = q.cmd("migrate-incoming", {"uri": uri})
            if "return" in r:
                return p, uri, wd.join("dst.serial")
            err = r.get("error", {}).get("desc", repr(r))
        raise bl.BenchError("QEMU destination: migrate-incoming: %s" % err)
    finally:
        q.close()


def start_ferry_destination(ctx, cell, wd, procs, row):
    """As migbench.start_destination, without devices."""
    p = None
    for attempt in range(3):
        uri = "tcp:127.0.0.1:%d" % bl.free_tcp_port()
        name = "dst" if attempt == 0 else "dst%d" % attempt
        argv = ferry_argv(ctx, cell, wd, name, ["--incoming", uri])
        row["argv_destination"] = argv
        p = bl.Proc(wd, name, argv)
        procs.append(p)
        bl.wait_until(lambda: "waiting for the source" in p.stderr() or
                      not p.alive(), "destination listening", START_TIMEOUT)
        if p.alive():
            if cell.channels:
                q = bl.connect_qmp(wd.join(name + ".qmp"), p, START_TIMEOUT)
                try:
                    mb.set_multifd(q, cell.channels)
                finally:
                    q.close()
            return p, uri, wd.join(name + ".serial")
        if "cannot listen" not in p.stderr():
            break
    raise bl.BenchError("destination did not start: %s" %
                        p.stderr().strip())


def warmed_up(text):
    """memstress finished its first pass (every working-set page written),
    and printed two heartbeats (for the guest's rewrite rate)."""
    beats = bl.heartbeats(text)
    if len(beats) >= 2 and beats[-1].get("passes", 0) >= 1:
        return beats[-1]
    return None


# ---- one run ----------------------------------------------------------

def run_once(ctx, vmm, cell, rnd):
    """One migration of one cell by one VMM; always returns a row."""
    row = {"cell": cell.name, "vmm": vmm, "run": rnd, "status": "failed",
           "reason": "", "memory_bytes": cell.memory,
           "guest_cmdline": cell.cmdline(),
           "downtime_limit_ms": DOWNTIME_LIMIT_MS,
           "max_bandwidth": MAX_BANDWIDTH}
    if vmm == "qemu" and ctx.qemu is None:
        row["status"] = "skipped"
        row["reason"] = "%s not found" % ctx.qemu_name
        return row
    wd = bl.Workdir("ferry-cmp-")
    procs = []
    try:
        _run_body(ctx, vmm, cell, wd, procs, row)
    except bl.BenchError as e:
        row["status"] = "failed"
        row["reason"] = str(e)
    finally:
        row.pop("_beats_at_migrate", None)
        row.pop("_done_at", None)
        for p in reversed(procs):
            p.kill()
        for p in procs:
            mark = bl.sanitizer_report(p.stderr())
            if mark and row["status"] == "ok":
                row["status"] = "failed"
                row["reason"] = "%s: %s" % (p.name, mark)
        if row["status"] == "failed":
            row["logs"] = {p.name: p.stderr()[-2000:] for p in procs}
            row["logs"].update({
                n: bl.read_text(wd.join(n + ".serial"))[-1000:]
                for n in ("src", "dst")})
        wd.cleanup()
    return row


def _run_body(ctx, vmm, cell, wd, procs, row):
    seconds = cell.guest_seconds()
    # The destination first: its start-up is then no stall in the guest's
    # baseline.
    if vmm == "qemu":
        dst, uri, dst_serial = start_qemu_destination(ctx, cell, wd, procs,
                                                      row)
        argv = qemu_argv(ctx, cell, wd, "src", [])
    else:
        dst, uri, dst_serial = start_ferry_destination(ctx, cell, wd, procs,
                                                       row)
        argv = ferry_argv(ctx, cell, wd, "src",
                          ["--kernel", ctx.guest, "--append",
                           cell.cmdline(), "--exit-after-migrate"])
    row["uri"] = uri
    row["argv_source"] = argv
    src_serial = wd.join("src.serial")
    src = bl.Proc(wd, "src", argv)
    procs.append(src)

    qmp = bl.connect_qmp(wd.join("src.qmp"), src, START_TIMEOUT)
    try:
        try:
            hb = bl.wait_until(lambda: warmed_up(bl.read_text(src_serial))
                               or (not src.alive() and "dead"),
                               "the guest's first pass",
                               cell.warmup_s + BOOT_SLACK)
        except bl.BenchError as e:
            lines = bl.read_text(src_serial).strip().splitlines()
            raise bl.BenchError("%s; last console line: %s" %
                                (e, lines[-1] if lines else
                                 "none (the guest has not started)"))
        if hb == "dead" or not src.alive():
            raise bl.BenchError("source exited during warm-up (status %s): "
                                "%s\n%s" % (src.rc, src.stderr().strip(),
                                            bl.read_text(src_serial)[-500:]))
        if hb.get("t", 0) > cell.warmup_s:
            raise bl.BenchError("the guest's first pass took %s s, more "
                                "than the cell's %d s" %
                                (hb.get("t"), cell.warmup_s))
        row["warmup_guest_s"] = hb.get("t")
        row["guest_stall_before_us"] = hb.get("max_stall_us")
        qmp.cmd_ok("migrate-set-parameters",
                   {"downtime-limit": DOWNTIME_LIMIT_MS,
                    "max-bandwidth": MAX_BANDWIDTH})
        params = qmp.cmd_ok("query-migrate-parameters")
        row["downtime_limit_ms"] = params.get("downtime-limit")
        row["max_bandwidth"] = params.get("max-bandwidth")
        if row["downtime_limit_ms"] != DOWNTIME_LIMIT_MS or \
                row["max_bandwidth"] != MAX_BANDWIDTH:
            raise bl.BenchError("parameters not taken: %r" % (params,))
        if cell.channels:
            mb.set_multifd(qmp, cell.channels)
        row["_beats_at_migrate"] = len(bl.heartbeats(
            bl.read_text(src_serial)))
        cpu = CpuWatch(src.pid)
        log("%s %s run %d: migrating to %s" % (cell.name, vmm, row["run"],
                                               uri))
        qmp.cmd_ok("migrate", {"uri": uri})
        last = monitor(vmm, cell, qmp, cpu, row)
    finally:
        qmp.close()

    if row["status"] == "no-convergence":
        return
    if last is None:
        raise bl.BenchError("no query-migrate answer at all")
    fill_from_query(row, last)
    if last.get("status") in ("failed", "cancelled"):
        raise bl.BenchError("migration %s: %s" % (last["status"],
                                                  last.get("error-desc", "")))
    if vmm == "ferry":
        rc, ru = src.wait_rusage(EXIT_TIMEOUT)
        if rc is None:
            raise bl.BenchError("source still running %d s after the "
                                "migration (last status %s)" %
                                (EXIT_TIMEOUT, last.get("status")))
        summary = bl.completion_line(src.stderr())
        if rc != 0 or summary is None:
            sv = bl.verdict(bl.read_text(src_serial))
            raise bl.BenchError("source exited with status %s without "
                                "completing%s: %s" %
                                (rc, " (guest: %s)" % sv[1] if sv else "",
                                 src.stderr().strip()))
        if last.get("status") == "completed":
            row["stats_source"] = "query-migrate or MIGRATION x-info"
        else:
            row["stats_source"] = "log+last-query(%s)" % last.get("status")
            row["total_ms"] = summary["total_ms"]
            row["downtime_ms"] = summary["downtime_ms"]
            row["transferred_bytes"] = summary["transferred"]
            row["iterations"] = summary["iterations"]
        if ru is not None:
            # Up to the exit, teardown included: an upper bound.
            row["src_cpu_to_exit_s"] = round(ru.ru_utime + ru.ru_stime -
                                             cpu.stat_before / cpu.tick, 3)
    else:
        if last.get("status") != "completed":
            sv = bl.verdict(bl.read_text(src_serial))
            raise bl.BenchError("QEMU migration ended in status %s%s%s" %
                                (last.get("status"),
                                 " (source exited, status %s)" % src.rc
                                 if not src.alive() else "",
                                 " (guest: %s)" % sv[1] if sv else ""))
        row["stats_source"] = "query-migrate"
        # The source stays paused (postmigrate); stop it now so that it
        # does not compete with the destination.
        src.kill()
    if not row.get("total_ms") or row.get("transferred_bytes") is None:
        raise bl.BenchError("no total time or bytes in the final figures: "
                            "%r" % (last,))
    row["throughput_mb_s"] = round(row["transferred_bytes"] /
                                   row["total_ms"] / 1000.0, 1)
    cpu.fill(row, row["transferred_bytes"] / GiB)
    done_at = row.pop("_done_at")
    if vmm == "ferry":
        # How long before the end was seen the last sample was taken.
        row["cpu_sample_age_ms"] = round((done_at - cpu.t_last) * 1000, 1)

    # The guest must finish its run on the destination and pass.
    bl.wait_until(lambda: bl.verdict(bl.read_text(dst_serial)) or
                  (not dst.alive() and "dead"),
                  "the destination guest's verdict", seconds + VERDICT_SLACK)
    text = bl.read_text(dst_serial)
    v = bl.verdict(text)
    if v is None:
        raise bl.BenchError("destination exited (status %s) without a "
                            "verdict: %s" % (dst.poll(),
                                             dst.stderr().strip()[-500:]))
    row["guest_verdict"] = v[1]
    row["guest_stall_final_us"] = v[2].get("max_stall_us")
    mb.guest_stalls(row, bl.read_text(src_serial), text)
    if row.get("guest_stall_us") is not None:
        row["guest_pause_us"] = row["guest_stall_us"]
        row["guest_pause_is_bound"] = False
    elif row.get("guest_stall_bound_us") is not None:
        row["guest_pause_us"] = row["guest_stall_bound_us"]
        row["guest_pause_is_bound"] = True
    rc = dst.wait(EXIT_TIMEOUT)
    if not v[0]:
        raise bl.BenchError("destination guest failed: " + v[1])
    # QEMU's isa-debug-exit exits with (value << 1) | 1: 1 is PASS.
    want = 1 if vmm == "qemu" else 0
    if rc != want:
        raise bl.BenchError("destination exited with status %s (PASS is "
                            "%d)" % (rc, want))
    row["status"] = "ok"


def _status(qmp):
    try:
        return qmp.cmd("query-migrate", timeout=10).get("return",
                                                        {}).get("status")
    except bl.QmpError:
        return None


def monitor(vmm, cell, qmp, cpu, row):
    """Follow the migration to its end, sampling the source's CPU every
    SAMPLE_PERIOD (query-migrate is sent and its answer collected without
    blocking, so that a slow answer does not stop the sampling); raise
    downtime-limit after the budget, cancel at the hard limit. Returns
    the final (or last) query-migrate answer."""
    t0 = time.monotonic()
    last, st, raised = None, None, False
    timeline = []
    next_query = 0.0
    pending = None	# (id, sent at) of the query in flight
    hard = cell.budget_s + cell.raise_budget_s
    done = False
    while not done:
        cpu.poll()
        now = time.monotonic() - t0
        if pending and pending[0] in qmp.replies:
            ret = qmp.replies.pop(pending[0]).get("return", {})
            pending = None
            if ret:
                last = ret
                st = ret.get("status")
                ram = ret.get("ram", {})
                if not timeline or timeline[-1][1] != st or \
                        now * 1000 - timeline[-1][0] >= \
                        TIMELINE_PERIOD * 1000:
                    timeline.append([round(now * 1000), st,
                                     ram.get("transferred"),
                                     ram.get("remaining"),
                                     ret.get("iterations",
                                             ram.get("dirty-sync-count")),
                                     ram.get("dirty-pages-rate"),
                                     ram.get("mbps")])
                if st in ("completed", "failed", "cancelled"):
                    break
            next_query = now + (QUERY_PERIOD_DEVICE if st == "device" else
                                QUERY_FIRST if now < QUERY_FAST_S else
                                QUERY_PERIOD)
        elif pending and now - pending[1] > QUERY_TIMEOUT:
            raise bl.BenchError("no query-migrate answer within %d s" %
                                QUERY_TIMEOUT)
        if pending is None and now >= next_query:
            try:
                pending = (qmp.send("query-migrate"), now)
            except bl.QmpError:
                break	# a completed ferry source exits: judged below
        if now > cell.budget_s and not raised:
            log("%s %s: not converged after %d s at %d ms; raising "
                "downtime-limit to %d ms" % (cell.name, vmm, cell.budget_s,
                                             DOWNTIME_LIMIT_MS,
                                             RAISED_LIMIT_MS))
            raised = True
            try:
                qmp.cmd_ok("migrate-set-parameters",
                           {"downtime-limit": RAISED_LIMIT_MS})
            except bl.QmpError:
                break	# completed and exited meanwhile: judged below
            row["downtime_limit_raised_ms"] = RAISED_LIMIT_MS
            row["raised_after_s"] = round(now, 1)
        if now > hard and st != "device":
            row["status"] = "no-convergence"
            row["reason"] = ("did not converge in %d s (downtime-limit %d "
                             "ms, then %d ms)" % (hard, DOWNTIME_LIMIT_MS,
                                                  RAISED_LIMIT_MS))
            if last and last.get("x-convergence"):
                row["reason"] += ": " + last["x-convergence"]
            try:
                qmp.cmd("migrate_cancel")
            except bl.QmpError:
                pass
            bl.wait_until(lambda: _status(qmp) in
                          ("cancelled", "failed", None),
                          "migration cancel", CANCEL_TIMEOUT)
            break
        closed = False
        try:
            qmp.pump(SAMPLE_PERIOD)
        except bl.QmpError:
            closed = True
        # ferry: a terminal MIGRATION event carries the final figures
        # (x-info); the source exits right after it.
        for e in qmp.take_events("MIGRATION"):
            if "x-info" in e.get("data", {}):
                last = e["data"]["x-info"]
                done = True
                timeline.append([round((time.monotonic() - t0) * 1000),
                                 last.get("status"),
                                 last.get("ram", {}).get("transferred"),
                                 0, last.get("iterations"), None,
                                 last.get("ram", {}).get("mbps")])
        if closed:
            break
    row["_done_at"] = time.monotonic()
    if vmm == "qemu":
        # QEMU's source lives on, paused: one more sample, exact. ferry's
        # is exiting (teardown is not the migration's): its last sample
        # taken before the end was seen stands.
        cpu.poll()
    for e in qmp.take_events("MIGRATION"):
        if "x-info" in e.get("data", {}):
            last = e["data"]["x-info"]
    row["timeline"] = timeline
    return last


def fill_from_query(row, ret):
    """The figures both VMMs report under the same names; QEMU's downtime
    is in ms ("downtime"), ferry's also in us ("downtime-us")."""
    ram = ret.get("ram", {})
    row["total_ms"] = ret.get("total-time")
    if "downtime-us" in ret:
        row["downtime_ms"] = ret["downtime-us"] / 1000.0
    else:
        row["downtime_ms"] = ret.get("downtime")
    row["setup_ms"] = ret.get("setup-time")
    row["transferred_bytes"] = ram.get("transferred")
    row["iterations"] = ret.get("iterations")
    row["dirty_sync_count"] = ram.get("dirty-sync-count")
    row["ram_normal_pages"] = ram.get("normal")
    row["ram_zero_pages"] = ram.get("duplicate")
    row["bandwidth_mbit_s"] = ram.get("mbps")
    # ferry's: the part of the downtime spent stopping the vCPUs (QEMU
    # does not report it).
    row["vcpus_pause_us"] = ret.get("x-vcpus-pause-us")


# ---- baselines --------------------------------------------------------

def run_tcpstream(ctx, name, args):
    return bl.run_tcpstream(ctx.tcpstream, args, "ferry-cmp-")


def baselines(ctx):
    log("baseline: one loopback TCP stream, 2 GiB in 1 MiB writes")
    out = {"tcp_stream": run_tcpstream(ctx, "tcp", ["tcp", "2g", "1m"])}
    if os.path.isdir("/dev/shm"):
        path = "/dev/shm/ferry-cmp-%d.tmp" % os.getpid()
        log("baseline: write 1 GiB to %s in 1 MiB writes" % path)
        try:
            out["shm_write"] = run_tcpstream(ctx, "write",
                                             ["write", path, "1g", "1m"])
        finally:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    else:
        out["shm_write"] = {"error": "/dev/shm missing"}
    tcp = out["tcp_stream"].get("mb_s")
    for k, v in out.items():
        if tcp and v.get("mb_s"):
            v["vs_tcp"] = round(v["mb_s"] / tcp, 3)
        log("baseline %s: %s" % (k, "%.0f MB/s" % v["mb_s"]
                                  if v.get("mb_s") else v.get("error")))
    return out


# ---- summary and output -----------------------------------------------

MEDIAN_KEYS = ("total_ms", "transferred_bytes", "downtime_ms",
               "guest_pause_us", "throughput_mb_s", "src_cpu_s_per_gib",
               "src_cpu_process_s_per_gib", "src_cpu_migration_s",
               "src_cpu_s", "vcpus_pause_us")


def _median(vals):
    return statistics.median(vals) if vals else None


def summarize(cells, rows, base):
    tcp = base.get("tcp_stream", {}).get("mb_s")
    out = []
    for c in cells:
        s = {"cell": c.name}
        for vmm in VMMS:
            mine = [r for r in rows if r["cell"] == c.name and
                    r["vmm"] == vmm]
            ok = [r for r in mine if r["status"] == "ok"]
            m = {"runs": len(mine), "ok": len(ok),
                 "statuses": [r["status"] for r in mine]}
            for k in MEDIAN_KEYS:
                v = _median([r[k] for r in ok if r.get(k) is not None])
                if v is not None:
                    m["median_" + k] = v
            # A pause known only as an upper bound in some run.
            m["guest_pause_bound"] = any(r.get("guest_pause_is_bound")
                                         for r in ok)
            if tcp and m.get("median_throughput_mb_s") is not None:
                m["throughput_vs_tcp"] = round(
                    m["median_throughput_mb_s"] / tcp, 3)
            s[vmm] = m
        ratios = {}
        for k in ("total_ms", "transferred_bytes", "guest_pause_us",
                  "downtime_ms", "throughput_mb_s", "src_cpu_s_per_gib"):
            q = s["qemu"].get("median_" + k)
            f = s["ferry"].get("median_" + k)
            if q and f is not None:
                ratios[k] = round(f / q, 3)
        s["ratio_ferry_qemu"] = ratios
        out.append(s)
    return out


def goals(cells, summary, base):
    """The targets of issue 8, checked against the medians."""
    by = {s["cell"]: s for s in summary}
    kinds = {c.name: c.kind for c in cells}
    out = []

    def add(goal, cell, value, limit, ok, note=""):
        out.append({"goal": goal, "cell": cell, "value": value,
                    "limit": limit, "met": ok, "note": note})

    tcp = base.get("tcp_stream", {}).get("mb_s")
    for name, s in by.items():
        r = s["ratio_ferry_qemu"]
        if kinds[name] == "bulk":
            v = s["ferry"].get("throughput_vs_tcp")
            add("bulk throughput >= 85% of the TCP stream", name, v,
                GOAL_BULK_TCP, None if v is None else v >= GOAL_BULK_TCP,
                "" if tcp else "no TCP baseline")
        v = r.get("total_ms")
        add("total time <= 0.8x QEMU", name, v, GOAL_TOTAL,
            None if v is None else v <= GOAL_TOTAL)
        v = r.get("transferred_bytes")
        add("bytes <= 1.1x QEMU", name, v, GOAL_BYTES,
            None if v is None else v <= GOAL_BYTES)
        if kinds[name] == "dirty":
            v = r.get("guest_pause_us")
            met, note = None, ""
            if v is not None:
                met = v <= GOAL_PAUSE
                fb = s["ferry"].get("guest_pause_bound")
                qb = s["qemu"].get("guest_pause_bound")
                # ferry's figure as an upper bound can only make the
                # ratio smaller; QEMU's can only make it larger.
                if (met and qb) or (not met and fb):
                    met, note = None, "a guest pause is only known as a " \
                        "bound (<=)"
            add("guest pause <= 0.5x QEMU", name, v, GOAL_PAUSE, met, note)
    return out


def _pair(q, f, scale, fmt, qb=False, fb=False):
    def one(v, bound):
        if v is None:
            return "-"
        return ("<=" if bound else "") + fmt % (v * scale)
    return "%s/%s" % (one(q, qb), one(f, fb))


def _ratio(v):
    return "-" if v is None else "%.2f" % v


def print_table(cells, summary, rows, base, gl, out):
    tcp = base.get("tcp_stream", {}).get("mb_s")
    cols = [("cell", 18), ("ok q/f", 7), ("total s q/f", 13), ("f/q", 5),
            ("sent MB q/f", 15), ("f/q", 5), ("down ms q/f", 13),
            ("pause ms q/f", 15), ("f/q", 5), ("MB/s q/f", 11),
            ("% tcp q/f", 10), ("CPU s/GiB q/f", 13), ("vcpus us f", 10)]
    head = "  ".join(h.rjust(w) if i else h.ljust(w)
                     for i, (h, w) in enumerate(cols))
    print(head, file=out)
    print("-" * len(head), file=out)
    for s in summary:
        q, f, r = s["qemu"], s["ferry"], s["ratio_ferry_qemu"]

        def g(m, k):
            return m.get("median_" + k)
        qt = q.get("throughput_vs_tcp")
        ft = f.get("throughput_vs_tcp")
        cells_txt = [
            s["cell"],
            "%d/%d" % (q["ok"], f["ok"]),
            _pair(g(q, "total_ms"), g(f, "total_ms"), 1e-3, "%.2f"),
            _ratio(r.get("total_ms")),
            _pair(g(q, "transferred_bytes"), g(f, "transferred_bytes"),
                  1e-6, "%.0f"),
            _ratio(r.get("transferred_bytes")),
            _pair(g(q, "downtime_ms"), g(f, "downtime_ms"), 1, "%.0f"),
            _pair(g(q, "guest_pause_us"), g(f, "guest_pause_us"), 1e-3,
                  "%.0f", q.get("guest_pause_bound"),
                  f.get("guest_pause_bound")),
            _ratio(r.get("guest_pause_us")),
            _pair(g(q, "throughput_mb_s"), g(f, "throughput_mb_s"), 1,
                  "%.0f"),
            _pair(qt, ft, 100, "%.0f"),
            _pair(g(q, "src_cpu_s_per_gib"), g(f, "src_cpu_s_per_gib"), 1,
                  "%.2f"),
            "-" if g(f, "vcpus_pause_us") is None else
            "%.0f" % g(f, "vcpus_pause_us"),
        ]
        print("  ".join(t.rjust(w) if i else t.ljust(w)
                        for i, (t, (_, w)) in enumerate(zip(cells_txt,
                                                            cols))),
              file=out)
    shm = base.get("shm_write", {})
    print("  baselines: loopback TCP stream %s; write to /dev/shm %s" %
          ("%.0f MB/s" % tcp if tcp else
           "failed (%s)" % base.get("tcp_stream", {}).get("error"),
           "%.0f MB/s%s" % (shm["mb_s"], " (%.0f%% of the TCP stream)" %
                            (shm["vs_tcp"] * 100) if shm.get("vs_tcp")
                            else "")
           if shm.get("mb_s") else "failed (%s)" % shm.get("error")),
          file=out)
    for r in rows:
        if r["status"] not in ("ok", "skipped"):
            print("  %s %s run %d: %s: %s" % (
                r["cell"], r["vmm"], r["run"], r["status"],
                r["reason"].splitlines()[0] if r["reason"] else ""),
                file=out)
        elif r.get("downtime_limit_raised_ms"):
            print("  %s %s run %d: downtime-limit raised to %d ms after "
                  "%.0f s" % (r["cell"], r["vmm"], r["run"],
                              r["downtime_limit_raised_ms"],
                              r["raised_after_s"]), file=out)
    skipped = [r for r in rows if r["status"] == "skipped"]
    if skipped:
        print("  QEMU rows skipped: %s" % skipped[0]["reason"], file=out)
    print("  goals (issues 8 and 9, on the medians):", file=out)
    for x in gl:
        print("    %-44s %-18s %-7s %s%s" % (
            x["goal"], x["cell"], "-" if x["value"] is None else
            "%.2f" % x["value"], {True: "met", False: "MISSED",
                                  None: "n/a"}[x["met"]],
            " (" + x["note"] + ")" if x["note"] else ""), file=out)
    print("  medians of the ok runs; q = QEMU, f = ferry, f/q = ferry's "
          "median over QEMU's.\n"
          "  total: migrate to completed (VMM's total-time); sent: "
          "ram.transferred; down: the VMM's\n"
          "  downtime; pause: the longest pause the guest measured "
          "across the switchover (<=N: no\n"
          "  longer than an earlier one); MB/s: sent bytes over total "
          "time; % tcp: that over the\n"
          "  TCP stream; CPU s/GiB: source VMM CPU time during the "
          "migration, vCPU thread excluded,\n"
          "  per GiB sent; vcpus: the part of ferry's downtime spent "
          "getting every vCPU out of\n  KVM_RUN (docs/benchmarks.md)",
          file=out)


def host_info(ctx):
    h = mb.host_info()
    h["qemu"] = None
    if ctx.qemu:
        try:
            v = subprocess.run([ctx.qemu, "--version"], capture_output=True,
                               text=True, timeout=10)
            h["qemu"] = v.stdout.splitlines()[0] if v.stdout else None
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        g = subprocess.run(["git", "-C", os.path.dirname(ctx.build),
                            "describe", "--always", "--dirty"],
                           capture_output=True, text=True, timeout=10)
        h["ferry_git"] = g.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        h["ferry_git"] = None
    return h


# ---- main -------------------------------------------------------------

def select_cells(names, quick):
    by = {c.name: c for c in CELLS}
    for n in names:
        if n not in by:
            raise SystemExit("bench-compare: unknown cell '%s' (--list "
                             "shows them)" % n)
    cells = [c for c in CELLS if not names or c.name in names]
    if quick:
        cells = [c for c in cells if c.memory == GiB]
        if not cells:
            raise SystemExit("bench-compare: --quick runs only the 1 GiB "
                             "cells; none selected")
    return cells


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="compare.py",
        description="ferry vs QEMU: the same memstress guest live-migrated "
        "by both VMMs on loopback, interleaved")
    ap.add_argument("--build", default="build",
                    help="meson build directory (default: build)")
    ap.add_argument("--cell", action="append", default=[], metavar="NAME",
                    help="run only this cell (repeatable; default: all)")
    ap.add_argument("--repeat", type=int, metavar="N",
                    help="rounds, each running every cell on both VMMs "
                    "(default 3; 1 with --quick)")
    ap.add_argument("--quick", action="store_true",
                    help="the 1 GiB cells only, one round: a smoke run")
    ap.add_argument("--json-only", action="store_true",
                    help="print only the JSON document")
    ap.add_argument("--output", metavar="FILE",
                    help="where to write the JSON (default: "
                    "BUILD/bench-compare.json)")
    ap.add_argument("--qemu", default="qemu-system-x86_64", metavar="BIN",
                    help="QEMU binary (default: qemu-system-x86_64 on PATH)")
    ap.add_argument("--list", action="store_true",
                    help="list the cells and exit")
    a = ap.parse_args(argv)
    if a.repeat is None:
        a.repeat = 1 if a.quick else 3
    if a.repeat < 1 or a.repeat > 100:
        ap.error("--repeat must be 1..100")
    return a


def _on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def main(argv):
    a = parse_args(argv)
    if a.list:
        for c in CELLS:
            print("%-18s %-28s %s" % (c.name, c.cmdline().rsplit(" ", 1)[0],
                                      c.desc))
        return 0
    cells = select_cells(a.cell, a.quick)
    qemu = shutil.which(a.qemu)
    ctx = Ctx(a.build, qemu, a.qemu)
    missing = ctx.missing()
    if missing:
        log("missing build artefacts (run 'make build' first): " +
            ", ".join(missing))
        return 2
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
    except OSError as e:
        log("skipped: /dev/kvm is not usable: %s" % e)
        return 77
    if qemu is None:
        log("%s not found: QEMU rows are skipped, ferry runs alone (no "
            "ratios); install qemu-system-x86 to compare" % a.qemu)
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGHUP, _on_sigterm)

    started = datetime.datetime.now(datetime.timezone.utc)
    base = baselines(ctx)
    rows = []
    for rnd in range(1, a.repeat + 1):
        for c in cells:
            for vmm in VMMS:
                if vmm == "qemu" and qemu is None:
                    rows.append(run_once(ctx, vmm, c, rnd))
                    continue
                log("round %d/%d: %s %s: %s" % (rnd, a.repeat, c.name, vmm,
                                                c.desc))
                t = time.monotonic()
                row = run_once(ctx, vmm, c, rnd)
                row["wall_s"] = round(time.monotonic() - t, 1)
                log("%s %s run %d: %s%s" % (
                    c.name, vmm, rnd, row["status"],
                    (" (" + row["reason"].splitlines()[0] + ")")
                    if row["reason"] else ""))
                rows.append(row)

    summary = summarize(cells, rows, base)
    gl = goals(cells, summary, base)
    doc = {"ferry_bench_compare": 1,
           "started": started.isoformat(timespec="seconds"),
           "host": host_info(ctx), "quick": a.quick, "repeat": a.repeat,
           "transport": "tcp loopback",
           "parameters": {"downtime_limit_ms": DOWNTIME_LIMIT_MS,
                          "raised_downtime_limit_ms": RAISED_LIMIT_MS,
                          "max_bandwidth": MAX_BANDWIDTH},
           "cells": [c.describe() for c in cells],
           "baselines": base, "results": rows, "summary": summary,
           "goals": gl}
    text = mb.compact_json(doc)
    if not a.json_only:
        print_table(cells, summary, rows, base, gl, sys.stdout)
        print()
    print(text)
    out = a.output or os.path.join(ctx.build, "bench-compare.json")
    try:
        with open(out, "w") as f:
            f.write(text + "\n")
        log("results written to " + out)
    except OSError as e:
        log("cannot write %s: %s" % (out, e))
        return 1
    return 1 if any(r["status"] == "failed" for r in rows) else 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        log("interrupted; children stopped and temporary files removed")
        sys.exit(130)
