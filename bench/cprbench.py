#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""ferry live-update (CPR) pause benchmark.

One guest per cell -- dmastress driving 0, 1 or 2 ferry-dma devices in a
1, 4 or 16 GiB (sparse) VM -- goes through a few live updates of one
kind: cpr-transfer (a new ferry-vmm process), cpr-exec (a new image in
the same process) or a device-server update (a new ferry-dev takes one
device over). For each update two figures of the guest's pause:

  VMM     what the updater measured: query-migrate `downtime-us` of the
          old process (cpr-transfer), the new ferry-dev's `paused_us`
          (device-server update). cpr-exec has none: the image that
          started the clock is gone and the new one reports 0.
  guest   the guest's own TSC: `win_stall_us` of the heartbeat window
          holding the update (the longest gap between the main loop's
          samples in that second, the heartbeat's own console output
          left out; docs/guests.md).

A cell only counts when the guest ends its run with PASS (every DMA
result, completion and interrupt checked by itself, no device reset):
the benchmark of a broken update is worthless.

The processes and the update steps are the vm tests' (tests/vm/miglib.py,
test_cpr.py, test_devserver_update.py); this file only times them.

usage: cprbench.py --build DIR [--mode M]... [--memory GIB]...
                   [--devices N]... [--reps N] [--quick]
                   [--breakdown auto|always|never] [--json-only]
                   [--output FILE] [--list]

See docs/benchmarks.md ("Live update (CPR) pause")."""
import argparse
import datetime
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

# No __pycache__ in the source tree (bench/ or tests/vm/).
sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "vm"))
import migbench  # noqa: E402  (host_info, compact_json, kvm_flavour)
import miglib  # noqa: E402
import test_cpr  # noqa: E402
import test_devserver_update as devupdate  # noqa: E402

MODES = ("cpr-transfer", "cpr-exec", "devserver-update")
MEMORY_GIB = (1, 4, 16)
DEVICES = (0, 1, 2)
REPS = 5
QUICK = {"memory": (1, 4), "devices": (0, 2), "reps": 3}
GOAL_US = 5000		# the goal: <= 5 ms ...
GOAL_CELL = (4, 2)	# ... at 4 GiB with 2 devices

LISTENING = "live update: waiting for the old process on"
HEARTBEAT_S = 1.0	# the guests' heartbeat period
SAME_WINDOW_S = 0.6	# an update this quick is inside one window
POLL_S = 0.002		# heartbeat arrival, while syncing to it
BEAT_TIMEOUT = 10.0	# a heartbeat that does not come: the guest hangs
WARMUP_BEATS = 1	# heartbeats after the first before the first update
SKIP_SUSPECT_US = 10000	# a heartbeat's output this much longer than usual
			# may hide a pause: win_skip_us (its spread on a
			# busy host is a few ms)
TRIGGER_DELAY_S = 0.02	# after a heartbeat line: the guest has finished
			# printing it (the service call returned)
PER_UPDATE_S = 4	# guest time for one update (sync + 1-2 windows),
			# with room for a slow, loaded host
UPDATE_NEEDS_S = 3	# guest time left to start one more update
GUEST_TAIL_S = 3	# guest time left after the last update
GUEST_TIMEOUT = 20	# dmastress: seconds without progress -> FAIL
VERDICT_SLACK = 60.0	# past the guest's own end
BREAKDOWN_S = 8		# guest time for the traced update (see below)
STRACE_ATTACH_S = 10.0	# strace -p has seized every thread
STRACE_SETTLE_S = 0.1
STRACE_TAIL_S = 0.3	# the new image's first KVM_RUN is in the trace
STRACE_EXIT_S = 10.0


def log(msg):
    print("cprbench: " + msg, file=sys.stderr, flush=True)


class Cell:
    def __init__(self, mode, gib, ndev, reps):
        self.mode = mode
        self.gib = gib
        self.ndev = ndev
        self.reps = reps

    @property
    def name(self):
        return "%s %dG %ddev" % (self.mode, self.gib, self.ndev)

    def guest_seconds(self, breakdown):
        extra = BREAKDOWN_S if breakdown and self.mode != \
            "devserver-update" else 0
        return int(WARMUP_BEATS + 2 + self.reps * PER_UPDATE_S +
                   GUEST_TAIL_S + extra)


def cells(modes, memory, devices, reps):
    out = []
    for mode in modes:
        for gib in memory:
            for ndev in devices:
                # A device-server update needs a device server.
                if mode == "devserver-update" and ndev == 0:
                    continue
                out.append(Cell(mode, gib, ndev, reps))
    return out


class Beats:
    """The guest's heartbeats in order, over every serial file it wrote:
    a cpr-transfer or cpr-exec gives the guest a new process or image
    with a serial file of its own. A file that is done (its writer
    gone) is read once more and kept."""

    def __init__(self, path):
        self.done = []		# heartbeats of finished files
        self.split = []		# finished files that end inside a line
        self.path = path

    def follow(self, path):
        if path == self.path:
            return
        text = miglib.read_text(self.path)
        self.done += miglib.heartbeats(text)
        if text and not text.endswith("\n"):
            self.split.append(os.path.basename(self.path))
        self.path = path

    def all(self):
        return self.done + miglib.heartbeats(miglib.read_text(self.path))

    def count(self):
        return len(self.all())

    def wait_count(self, n, alive):
        end = time.monotonic() + BEAT_TIMEOUT * max(1, n - self.count())
        while True:
            beats = self.all()
            if len(beats) >= n:
                return beats
            if time.monotonic() >= end:
                raise miglib.TestFailure("no heartbeat %d from the guest "
                                         "(it printed %d)" %
                                         (n, len(beats)))
            alive()
            time.sleep(POLL_S)

    def wait_fresh(self, alive):
        """Block until the guest prints its next heartbeat; its index.
        Called right before an update, so that the update starts just
        after a window opened, far from the next heartbeat's output."""
        n = self.count()
        self.wait_count(n + 1, alive)
        return n


def windows_of(k, took_s):
    """The heartbeat windows an update may lie in, when it started just
    after heartbeat k was seen and took took_s: window k+1 (heartbeat
    k+1 reports the second after heartbeat k), and one more for each
    heartbeat period the update may have run into."""
    extra = 0
    if took_s >= SAME_WINDOW_S:
        extra = int((took_s - SAME_WINDOW_S) // HEARTBEAT_S) + 1
    return list(range(k + 1, k + 2 + extra))


def skip_suspect(beats, idx):
    """The output of a heartbeat left out of one of the windows idx
    (win_skip_us) took much longer than the guest's heartbeats usually
    take: the update's pause may be in it, and in no window."""
    usual = [b["win_skip_us"] for b in beats[1:] if "win_skip_us" in b]
    if not usual:
        return False
    limit = statistics.median(usual) + SKIP_SUSPECT_US
    return any((beats[j].get("win_skip_us") or 0) > limit for j in idx)


def check_consecutive(beats, k, idx):
    """The heartbeats from k on follow each other (t one apart): none
    was lost when its line was cut in two by the hand-over."""
    ts = [beats[j].get("t") for j in [k] + idx]
    for a, b in zip(ts, ts[1:]):
        if a is None or b is None or b - a != 1:
            return False
    return True


def run_cell(build, cell, breakdown):
    """Boot, update cell.reps times, wait for the verdict. A dict row."""
    row = {"mode": cell.mode, "memory_gib": cell.gib, "devices": cell.ndev,
           "guest": "dmastress", "reps": cell.reps, "status": "failed",
           "reason": None, "loadavg": loadavg(), "updates": []}
    c = miglib.Cluster("cprbench")
    t0 = time.monotonic()
    try:
        CellRun(cell, c, row, breakdown).run()
        row["status"] = "ok"
    except (miglib.TestFailure, OSError) as e:
        row["reason"] = str(e).strip()
        log("%s: failed: %s" % (cell.name, row["reason"].splitlines()[0]
                                if row["reason"] else "?"))
        for line in c.dump().splitlines()[-40:]:
            log("  | " + line)
    finally:
        c.close()
        row["wall_s"] = round(time.monotonic() - t0, 1)
    summarize(row)
    return row


class CellRun:
    """One guest through the cell's updates."""

    def __init__(self, cell, c, row, breakdown):
        self.cell = cell
        self.c = c
        self.row = row
        self.breakdown = breakdown	# "auto", "always" or "never"
        self.seconds = cell.guest_seconds(breakdown != "never")
        self.seq = 0
        self.update_windows = set()

    def alive(self):
        g = self.g
        miglib.check(g.vmm.alive(), "%s exited (%s) with the guest" %
                     (g.vmm.name, g.vmm.proc.poll()))

    def run(self):
        cell, row = self.cell, self.row
        self.g = g = test_cpr.Guest(self.c, kind="dma", seconds=self.seconds,
                                    memory="%dG" % cell.gib,
                                    timeout=GUEST_TIMEOUT, ndev=cell.ndev)
        self.beats = Beats(g.vmm.serial)
        self.srv = [d for _, d in g.devs]
        self.beats.wait_count(1 + WARMUP_BEATS, self.alive)
        while len([u for u in row["updates"]
                   if u["guest_us"] is not None]) < cell.reps:
            miglib.check(self.seq < 2 * cell.reps, "too many updates "
                         "whose window could not be told (a heartbeat line "
                         "cut in two, or a pause in a heartbeat's output)")
            if not self.time_left(UPDATE_NEEDS_S):
                # A slow host: fewer updates, not a failed cell.
                row["note"] = "the guest's %d s run ended after %d " \
                    "updates" % (self.seconds, len(row["updates"]))
                miglib.check(row["updates"], row["note"])
                break
            u = self.update()
            row["updates"].append(u)
            log("%s: update %d: VMM %s, guest %s (windows t=%s, %.0f ms)" %
                (cell.name, u["seq"], _us(u["vmm_us"]), _us(u["guest_us"]),
                 u["windows_t"], u["update_ms"]))
        if self.want_breakdown():
            if self.time_left(BREAKDOWN_S - 2):
                self.traced_update()
            else:
                row["breakdown"] = {"error": "no guest time left for it"}

        v = g.expect_pass(self.seconds + VERDICT_SLACK)
        if cell.mode == "devserver-update":
            miglib.check("disconnected" not in g.vmm.log(),
                         "the VMM saw a device server go:\n%s" %
                         g.vmm.log()[-2000:])
        row["guest_verdict"] = v[2]
        # Every window but the first (start-up) and the updates' own:
        # what the guest sees with nothing happening, to read the
        # figures against.
        row["baseline_us"] = [
            b.get("win_stall_us") for j, b in enumerate(self.beats.all())
            if j >= 1 and j not in self.update_windows and
            b.get("win_stall_us") is not None]
        row["split_serials"] = self.beats.split

    def time_left(self, need_s):
        """The guest has need_s of its run left after its last
        heartbeat (and one more heartbeat to sync to)."""
        beats = self.beats.all()
        return beats[-1].get("t", 0) + 1 + need_s < self.seconds

    def update(self, before=None):
        """One update, started right after a heartbeat; its figures.
        before(new_process) runs once the new process exists (for
        cpr-transfer) or right before the update (the others)."""
        cell, g, beats = self.cell, self.g, self.beats
        self.seq += 1
        k = beats.wait_fresh(self.alive)
        time.sleep(TRIGGER_DELAY_S)
        u = {"seq": self.seq}
        t1 = time.monotonic()
        if cell.mode == "cpr-transfer":
            def listening(nv):
                # The socket file exists from bind(), a connect works
                # from listen(): wait for the line logged after it.
                miglib.wait_until(lambda: LISTENING in nv.log() or
                                  not nv.alive(), "%s listening on its "
                                  "cpr channel" % nv.name)
                if before:
                    before(nv)
            with new_process_hook(g, listening):
                info = g.transfer()
            u["vmm_us"] = info.get("downtime-us")
        elif cell.mode == "cpr-exec":
            if before:
                before(None)
            info = g.exec()
            # The image that started the clock is gone: 0 = not known.
            u["vmm_us"] = info.get("downtime-us") or None
        else:
            d = (self.seq - 1) % cell.ndev
            old = self.srv[d]
            self.srv[d], us = devupdate.update(self.c, "D%d" % d,
                                               g.ctls[d], old, self.seq)
            u["device"] = d
            u["vmm_us"] = us
            u["phases_us"] = devserver_phases(old.log(), us)
        took = time.monotonic() - t1
        u["update_ms"] = round(took * 1000.0, 1)
        beats.follow(g.vmm.serial)
        idx = windows_of(k, took)
        now = beats.wait_count(idx[-1] + 1, self.alive)
        self.update_windows.update(idx)
        u["windows_t"] = [now[j].get("t") for j in idx]
        u["windows_us"] = [now[j].get("win_stall_us") for j in idx]
        u["skipped_us"] = [now[j].get("win_skip_us") for j in idx]
        if not check_consecutive(now, k, idx) or \
                None in u["windows_us"]:
            # A heartbeat line cut by the hand-over: its window cannot
            # be told from the next one. Not counted; one more update.
            u["guest_us"] = None
            u["note"] = "heartbeat line cut by the hand-over"
        elif skip_suspect(now, idx):
            # The guest was paused while it printed a heartbeat: that
            # time is left out of every window. Not counted either.
            u["guest_us"] = None
            u["note"] = "paused in a heartbeat's own output"
        else:
            u["guest_us"] = max(u["windows_us"])
        return u

    def want_breakdown(self):
        if self.breakdown == "never" or \
                self.cell.mode == "devserver-update":
            return False
        if self.breakdown == "always":
            return True
        r = dict(self.row)
        summarize(r)
        return any((r.get(k) or 0) > GOAL_US
                   for k in ("vmm_median_us", "guest_median_us"))

    def traced_update(self):
        """One more update, not counted, with strace on the VMM
        process(es): where the guest's pause goes."""
        row, c = self.row, self.c
        if not shutil.which("strace"):
            row["breakdown"] = {"error": "strace not found"}
            return
        traces = []

        def attach(new):
            for p in [self.g.vmm] + ([new] if new else []):
                path = c.join("strace-%s-%d.txt" % (p.name, len(traces)))
                sp = subprocess.Popen(
                    ["strace", "-f", "-ttt", "-T", "-qq", "-o", path,
                     "-p", str(p.pid)], stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                traces.append((sp, path))
                wait_traced(p.pid, sp)
            time.sleep(STRACE_SETTLE_S)

        try:
            u = self.update(before=attach)
            time.sleep(STRACE_TAIL_S)
        except BreakdownError as e:
            # Nothing started yet: the guest runs on where it was.
            row["breakdown"] = {"error": str(e)}
            log("%s: no breakdown: %s" % (self.cell.name, e))
            return
        finally:
            for sp, _ in traces:
                if sp.poll() is None:
                    sp.send_signal(signal.SIGINT)
                try:
                    sp.wait(STRACE_EXIT_S)
                except subprocess.TimeoutExpired:
                    sp.kill()
                    sp.wait()
        bd = {"update": u, "tool": "strace -f -ttt -T"}
        try:
            evs = [parse_strace(path) for _, path in traces]
            if self.cell.mode == "cpr-exec":
                bd.update(exec_phases(evs[0]))
            else:
                bd.update(transfer_phases(evs[0], evs[1]))
        except BreakdownError as e:
            bd["error"] = str(e)
        row["breakdown"] = bd
        log("%s: traced update: %s" % (self.cell.name,
                                       bd.get("error") or "%d phases" %
                                       len(bd.get("phases", []))))


def wait_traced(pid, sp):
    """Until every thread of pid has sp as its tracer: an update must
    not start while strace is still attaching (it would stop threads in
    the middle of it)."""
    def tracer(task):
        try:
            with open("/proc/%d/task/%s/status" % (pid, task)) as f:
                for line in f:
                    if line.startswith("TracerPid:"):
                        return int(line.split()[1])
        except (OSError, ValueError):
            pass
        return None

    end = time.monotonic() + STRACE_ATTACH_S
    while True:
        if sp.poll() is not None:
            raise BreakdownError("strace -p %d exited (%s) before it "
                                 "attached" % (pid, sp.returncode))
        try:
            tasks = os.listdir("/proc/%d/task" % pid)
        except OSError:
            tasks = []
        if tasks and all(tracer(t) == sp.pid for t in tasks):
            return
        if time.monotonic() >= end:
            raise BreakdownError("strace did not attach to %d within "
                                 "%.0f s" % (pid, STRACE_ATTACH_S))
        time.sleep(0.01)


class new_process_hook:
    """Run hook(new_vmm) inside Guest.transfer(), between the start of
    the new process and the migrate command (to wait until it listens,
    to attach a tracer to it before the pause), by wrapping the Guest's
    start_new()."""

    def __init__(self, g, hook):
        self.g = g
        self.hook = hook

    def __enter__(self):
        orig = self.g.start_new

        def start_new(*a, **kw):
            nv, cpr, main = orig(*a, **kw)
            self.hook(nv)
            return nv, cpr, main
        self.g.start_new = start_new

    def __exit__(self, *exc):
        del self.g.start_new	# the class's method again
        return False


# ---- where the time goes ---------------------------------------------------

class BreakdownError(Exception):
    pass


_HANDED = re.compile(r"handed over to pid \d+: quiesce_us=(\d+) "
                     r"capture_us=(\d+) taken_us=(\d+)")


def devserver_phases(old_log, paused_us):
    """A device-server update's pause from the two ferry-devs' own
    figures: the old one stops the device engine and waits for a
    message boundary (quiesce), captures and sends state and fds
    (capture), the new one restores and answers (until taken); the rest
    of the new one's paused_us is the commit and its resume."""
    m = _HANDED.search(old_log or "")
    if not m or paused_us is None:
        return None
    q, cap, taken = (int(x) for x in m.groups())
    return {"quiesce": q, "capture_send": cap,
            "new_restores": max(taken - q - cap, 0),
            "commit_resume": max(paused_us - taken, 0)}


_SC_DONE = re.compile(r"^(\d+)\s+([\d.]+)\s+(\w+)\((.*)\)\s+=\s+(.*?)"
                      r"\s+<([\d.]+)>$")
_SC_START = re.compile(r"^(\d+)\s+([\d.]+)\s+(\w+)\((.*?)\s*"
                       r"<unfinished \.\.\.>$")
_SC_END = re.compile(r"^(\d+)\s+([\d.]+)\s+<\.\.\. (\w+) resumed>(.*?)"
                     r"\)?\s+=\s+(.*?)\s+<([\d.]+)>$")


class Sc:
    """One system call from strace: thread, start/end (s), name (the
    ioctl's request for an ioctl), result."""
    __slots__ = ("tid", "start", "end", "name", "ret")

    def __init__(self, tid, start, dur, name, args, ret):
        self.tid = tid
        self.start = start
        self.end = start + dur
        if name == "ioctl":
            parts = args.split(",")
            name = parts[1].strip() if len(parts) > 1 else name
        self.name = name
        self.ret = ret


def parse_strace(path):
    out, pending = [], {}
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise BreakdownError("strace output: %s" % e)
    for line in lines:
        m = _SC_DONE.match(line)
        if m and "resumed>" not in line:
            out.append(Sc(int(m.group(1)), float(m.group(2)),
                          float(m.group(6)), m.group(3), m.group(4),
                          m.group(5)))
            continue
        m = _SC_START.match(line)
        if m:
            pending[int(m.group(1))] = (float(m.group(2)), m.group(3),
                                        m.group(4))
            continue
        m = _SC_END.match(line)
        if m:
            tid, name = int(m.group(1)), m.group(3)
            st = pending.pop(tid, None)
            if st is None or st[1] != name:
                # execve finishes in the thread that becomes the
                # process (strace: "superseded by execve").
                for t, v in list(pending.items()):
                    if v[1] == name:
                        st = pending.pop(t)
                        break
            if st is not None:
                out.append(Sc(tid, st[0], float(m.group(6)), name,
                              st[2] + m.group(4), m.group(5)))
    out.sort(key=lambda e: e.start)
    if not out:
        raise BreakdownError("empty strace output (%s)" %
                             os.path.basename(path))
    return out


IMMEDIATE_EXIT_S = 100e-6
VCPU_STATE = ("KVM_SET_SREGS", "KVM_SET_REGS", "KVM_SET_XSAVE",
              "KVM_SET_XCRS", "KVM_SET_MSRS", "KVM_SET_LAPIC",
              "KVM_SET_VCPU_EVENTS", "KVM_SET_MP_STATE",
              "KVM_SET_DEBUGREGS", "KVM_SET_FPU")


def guest_stop(evs):
    """When the guest last ran: the end of the last KVM_RUN, not
    counting a KVM_RUN that came back at once with EINTR (the vCPU was
    kicked while outside the guest: immediate_exit)."""
    runs = [e for e in evs if e.name == "KVM_RUN"]
    for e in reversed(runs):
        if e.ret.startswith("-1 EINTR") and \
                e.end - e.start < IMMEDIATE_EXIT_S:
            continue
        return e.end
    raise BreakdownError("no KVM_RUN of the old VMM in the trace")


def _first(evs, name, after=0.0):
    for e in evs:
        if e.name == name and e.start >= after:
            return e
    return None


def tracer_cost(evs):
    """What strace adds to each system call, from the trace itself: the
    median distance between back-to-back short system calls of one
    thread (a loop such as one KVM_GET_MSRS per MSR), which untraced
    is a few us."""
    by, d = {}, []
    for e in evs:
        by.setdefault(e.tid, []).append(e)
    for calls in by.values():
        for a, b in zip(calls, calls[1:]):
            if a.end - a.start < 20e-6 and b.start - a.end < 100e-6:
                d.append(b.start - a.start)
    return statistics.median(d) if len(d) >= 20 else 0.0


def _phases(bounds, evs):
    """[(label, boundary)] made monotonic -> list of dicts with the
    duration and the number of system calls started in each (each made
    longer by tracing it: see tracer_cost())."""
    out, prev = [], bounds[0][1]
    for label, b in bounds[1:]:
        b = prev if b is None else max(b, prev)
        n = len([e for e in evs if prev <= e.start < b])
        out.append({"phase": label, "us": round((b - prev) * 1e6),
                    "syscalls": n})
        prev = b
    return out, round(tracer_cost(evs) * 1e6, 1)


def _new_vm_markers(new, after):
    """The new VMM's build markers from `after` on."""
    vm = _first(new, "KVM_CREATE_VM", after)
    vcpu = _first(new, "KVM_CREATE_VCPU", after)
    if not vm or not vcpu:
        raise BreakdownError("no KVM_CREATE_VM/KVM_CREATE_VCPU in the "
                             "new VMM's trace")
    mems = [e for e in new if e.name == "KVM_SET_USER_MEMORY_REGION" and
            vm.start <= e.start < vcpu.start]
    cpuid = _first(new, "KVM_SET_CPUID2", vcpu.start)
    return vm, mems, vcpu, cpuid


def _load_markers(new, after):
    """Where the VMM state load, the irqfds and the first KVM_RUN are."""
    run = _first(new, "KVM_RUN", after)
    if not run:
        raise BreakdownError("no KVM_RUN of the new VMM in the trace")
    chip = _first(new, "KVM_SET_IRQCHIP", after)
    state = [e for e in new if e.name in VCPU_STATE and
             after <= e.start < run.start]
    irq = [e for e in new if e.name in ("KVM_IRQFD", "KVM_SET_GSI_ROUTING")
           and state and e.start >= state[-1].end and e.start < run.start]
    return (chip.start if chip else None,
            state[-1].end if state else None,
            irq[-1].end if irq else None, run.start)


def exec_phases(evs):
    """cpr-exec: one process, the old image then the new one."""
    exe = [e for e in evs if e.name == "execve" and e.ret.startswith("0")]
    if not exe:
        raise BreakdownError("no successful execve in the trace")
    exe = exe[0]
    stop = guest_stop([e for e in evs if e.end <= exe.start])
    post = [e for e in evs if e.start >= exe.start]
    vm, mems, vcpu, cpuid = _new_vm_markers(post, exe.end)
    chip, state_end, irq_end, run = _load_markers(post, vcpu.start)
    bounds = [
        ("", stop),
        ("old image: stop, freeze devices, state file, fd registry",
         exe.start),
        ("execve: old image torn down (KVM VM, mappings, threads)",
         exe.end),
        ("new image: start-up, options, fds imported", vm.start),
        ("KVM VM creation (VM, irqchip, PIT)",
         mems[0].start if mems else None),
        ("memslots: guest RAM (%d x SET_USER_MEMORY_REGION)" % len(mems),
         mems[-1].end if mems else None),
        ("vCPU creation", (cpuid or vcpu).end),
        ("device adoption, state file opened", chip),
        ("VMM state load (irqchip, PIT, clock, vCPU state)", state_end),
        ("interrupts re-attached (GSI routes, irqfds)", irq_end),
        ("vCPU thread start -> first KVM_RUN", run),
    ]
    phases, c = _phases(bounds, evs)
    return {"phases": phases, "total_us": round((run - stop) * 1e6),
            "strace_us_per_syscall": c}


def transfer_phases(old, new):
    """cpr-transfer: the new VM is built before the pause; the pause is
    the old process's stop and send plus the new one's load."""
    stop = guest_stop(old)
    vm, mems, vcpu, cpuid = _new_vm_markers(new, 0.0)
    chip, state_end, irq_end, run = _load_markers(new, stop)
    both = sorted(old + new, key=lambda e: e.start)
    bounds = [
        ("", stop),
        ("old: stop, freeze devices, send state; new: receive", chip),
        ("new: VMM state load (irqchip, PIT, clock, vCPU state)",
         state_end),
        ("new: devices taken over, interrupts re-attached", irq_end),
        ("new: vCPU thread start -> first KVM_RUN", run),
    ]
    before = [
        {"phase": "KVM VM creation",
         "us": round(((mems[0].start if mems else vcpu.start) - vm.start)
                     * 1e6)},
        {"phase": "memslots (%d)" % len(mems),
         "us": round(sum(e.end - e.start for e in mems) * 1e6)},
        {"phase": "vCPU creation",
         "us": round(((cpuid or vcpu).end - vcpu.start) * 1e6)},
    ]
    phases, c = _phases(bounds, both)
    return {"phases": phases, "total_us": round((run - stop) * 1e6),
            "strace_us_per_syscall": c, "before_pause": before}


def _us(v):
    return "-" if v is None else "%.2f ms" % (v / 1000.0)


def _stats(vals, prefix, row):
    vals = [v for v in vals if v is not None]
    if vals:
        row[prefix + "_median_us"] = statistics.median(vals)
        row[prefix + "_max_us"] = max(vals)


def summarize(row):
    ups = row["updates"]
    _stats([u["vmm_us"] for u in ups], "vmm", row)
    _stats([u["guest_us"] for u in ups], "guest", row)
    _stats(row.get("baseline_us", []), "baseline", row)
    row["counted"] = len([u for u in ups if u["guest_us"] is not None])


def goal(rows):
    """The issue's goal, per mode: the 4 GiB + 2 devices cell's pause
    <= 5 ms, by the VMM's figure and by the guest's, median and max."""
    out = {}
    for r in rows:
        if (r["memory_gib"], r["devices"]) != GOAL_CELL:
            continue
        g = {"status": r["status"], "limit_us": GOAL_US}
        if r["status"] == "ok":
            for who in ("vmm", "guest"):
                for stat in ("median", "max"):
                    v = r.get("%s_%s_us" % (who, stat))
                    g["%s_%s_met" % (who, stat)] = \
                        None if v is None else v <= GOAL_US
        out[r["mode"]] = g
    return out


# ---- output -------------------------------------------------------------

def _ms(r, key):
    v = r.get(key)
    return "-" if v is None else "%.2f" % (v / 1000.0)


COLUMNS = [
    ("mode", 16, lambda r: r["mode"]),
    ("GiB", 3, lambda r: str(r["memory_gib"])),
    ("dev", 3, lambda r: str(r["devices"])),
    ("status", 6, lambda r: r["status"]),
    ("n", 2, lambda r: str(r.get("counted", 0))),
    ("vmm med", 7, lambda r: _ms(r, "vmm_median_us")),
    ("vmm max", 7, lambda r: _ms(r, "vmm_max_us")),
    ("guest med", 9, lambda r: _ms(r, "guest_median_us")),
    ("guest max", 9, lambda r: _ms(r, "guest_max_us")),
    ("base med", 8, lambda r: _ms(r, "baseline_median_us")),
    ("base max", 8, lambda r: _ms(r, "baseline_max_us")),
]


def print_table(rows, goals, out):
    head = "  ".join(h.rjust(w) if i else h.ljust(w)
                     for i, (h, w, _) in enumerate(COLUMNS))
    print(head, file=out)
    print("-" * len(head), file=out)
    for r in rows:
        print("  ".join(f(r).rjust(w) if i else f(r).ljust(w)
                        for i, (_, w, f) in enumerate(COLUMNS)), file=out)
    for r in rows:
        why = r["reason"] if r["status"] != "ok" else r.get("note")
        if why or r["status"] != "ok":
            print("  %s %dG %ddev: %s" % (r["mode"], r["memory_gib"],
                                          r["devices"],
                                          why.splitlines()[0] if why
                                          else "?"), file=out)
    print("  pause in ms, median and max over n updates. vmm = the "
          "updater's figure (cpr-transfer:\n  old process, vCPUs stopped "
          "-> new process confirmed; devserver-update: new ferry-dev,\n"
          "  quiesce -> resume; cpr-exec: none, the new image reports 0). "
          "guest = the guest's TSC:\n  longest gap in the heartbeat "
          "window holding the update. base = the same in the\n  windows "
          "without an update (what the guest sees anyway on this host).",
          file=out)
    for r in rows:
        print_breakdown(r, out)
    for mode, g in goals.items():
        if g["status"] != "ok":
            print("  goal <= %d ms at %d GiB + %d devices, %s: not "
                  "measured (cell failed)" % (GOAL_US // 1000, GOAL_CELL[0],
                                              GOAL_CELL[1], mode), file=out)
            continue
        parts = []
        for who in ("vmm", "guest"):
            if g.get(who + "_median_met") is None:
                parts.append("%s -" % who)
                continue
            parts.append("%s median %s, max %s" % (
                who, "met" if g[who + "_median_met"] else "MISSED",
                "met" if g[who + "_max_met"] else "MISSED"))
        print("  goal <= %d ms at %d GiB + %d devices, %s: %s" %
              (GOAL_US // 1000, GOAL_CELL[0], GOAL_CELL[1], mode,
               "; ".join(parts)), file=out)


DEVSERVER_PHASES = [
    ("quiesce", "old: device engine stopped, client at a message boundary"),
    ("capture_send", "old: state and fds captured and sent"),
    ("new_restores", "new: device and server restored, \"taken\" sent"),
    ("commit_resume", "commit; the new one resumes the device"),
]


def print_breakdown(r, out):
    """Where the time goes, for a row that has it."""
    name = "%s %dG %ddev" % (r["mode"], r["memory_gib"], r["devices"])
    if r["mode"] == "devserver-update":
        ph = [u["phases_us"] for u in r["updates"] if u.get("phases_us")]
        if not ph:
            return
        print("  where the time goes, %s: the ferry-dev logs\n  (ms, "
              "median of %d updates):" % (name, len(ph)), file=out)
        for key, label in DEVSERVER_PHASES:
            print("    %-56s %7.2f" % (label, statistics.median(
                [p[key] for p in ph]) / 1000.0), file=out)
        return
    bd = r.get("breakdown")
    if not bd:
        return
    if bd.get("error"):
        print("  where the time goes, %s: no breakdown: %s" %
              (name, bd["error"]), file=out)
        return
    print("  where the time goes, %s: one more update under strace,\n"
          "  from the old vCPU's last KVM_RUN to the new one's first (ms, "
          "system calls;\n  tracing adds about %.0f us to each call):" %
          (name, bd["strace_us_per_syscall"]), file=out)
    for p in bd["phases"]:
        print("    %-56s %7.2f %4d" % (p["phase"], p["us"] / 1000.0,
                                       p["syscalls"]), file=out)
    print("    %-56s %7.2f" % ("total", bd["total_us"] / 1000.0), file=out)
    if bd.get("before_pause"):
        print("    before the pause, guest running: " + ", ".join(
            "%s %.2f" % (p["phase"], p["us"] / 1000.0)
            for p in bd["before_pause"]), file=out)


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except (OSError, ValueError):
        return None


def parse_args(argv):
    ap = argparse.ArgumentParser(
        prog="cprbench.py",
        description="ferry live-update (CPR) guest pause benchmark")
    ap.add_argument("--build", default="build",
                    help="meson build directory (default: build)")
    ap.add_argument("--mode", action="append", default=[], choices=MODES,
                    help="update kind (repeatable; default: all)")
    ap.add_argument("--memory", action="append", default=[], type=int,
                    metavar="GIB", help="guest RAM in GiB (repeatable; "
                    "default: 1 4 16)")
    ap.add_argument("--devices", action="append", default=[], type=int,
                    choices=DEVICES, help="ferry-dma devices (repeatable; "
                    "default: 0 1 2)")
    ap.add_argument("--reps", type=int, metavar="N",
                    help="updates per cell (default %d; %d with --quick)" %
                    (REPS, QUICK["reps"]))
    ap.add_argument("--quick", action="store_true",
                    help="1 and 4 GiB, 0 and 2 devices, %d updates per "
                    "cell: a smoke run" % QUICK["reps"])
    ap.add_argument("--breakdown", choices=("auto", "always", "never"),
                    default="auto",
                    help="one more update per cpr-transfer/cpr-exec cell, "
                    "not counted, under strace, to show where the pause "
                    "goes: when the cell's median is over the goal "
                    "(auto, the default), always, or never")
    ap.add_argument("--json-only", action="store_true",
                    help="print only the JSON document")
    ap.add_argument("--output", metavar="FILE",
                    help="where to write the JSON (default: "
                    "BUILD/bench-cpr-results.json)")
    ap.add_argument("--list", action="store_true",
                    help="list the cells and exit")
    a = ap.parse_args(argv)
    if a.reps is not None and not 1 <= a.reps <= 50:
        ap.error("--reps must be 1..50")
    if any(m < 1 or m > 64 for m in a.memory):
        ap.error("--memory must be 1..64 (GiB)")
    return a


def _on_sigterm(signum, frame):
    # Unwind through every finally: children are killed, temp dirs go.
    raise SystemExit(128 + signum)


def main(argv):
    a = parse_args(argv)
    reps = a.reps or (QUICK["reps"] if a.quick else REPS)
    selected = cells(a.mode or MODES,
                 a.memory or (QUICK["memory"] if a.quick else MEMORY_GIB),
                 a.devices or (QUICK["devices"] if a.quick else DEVICES),
                 reps)
    if not selected:
        log("no cell to run (a device-server update needs a device)")
        return 2
    if a.list:
        for cl in selected:
            print(cl.name)
        return 0
    build = migbench.Build(a.build)
    missing = [p for p in [build.vmm, build.dev,
                           build.guests["dmastress"]]
               if not os.access(p, os.R_OK)]
    if missing:
        log("missing build artefacts (run 'make build' first): " +
            ", ".join(missing))
        return 2
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
    except OSError as e:
        log("skipped: /dev/kvm is not usable: %s" % e)
        return 77
    # The vm tests' helpers take their binaries from module globals.
    miglib.VMM = build.vmm
    miglib.DEV = build.dev
    miglib.DMASTRESS = build.guests["dmastress"]
    miglib.MEMSTRESS = build.guests["memstress"]
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGHUP, _on_sigterm)

    started = datetime.datetime.now(datetime.timezone.utc)
    load0 = loadavg()
    rows = []
    for i, cl in enumerate(selected):
        log("cell %d/%d: %s, %d updates" % (i + 1, len(selected), cl.name,
                                            cl.reps))
        row = run_cell(build, cl, a.breakdown)
        log("%s: %s; VMM median %s, guest median %s (baseline %s)" %
            (cl.name, row["status"], _us(row.get("vmm_median_us")),
             _us(row.get("guest_median_us")),
             _us(row.get("baseline_median_us"))))
        rows.append(row)
    goals = goal(rows)
    host = migbench.host_info()
    host["loadavg_start"] = load0
    host["loadavg_end"] = loadavg()
    doc = {"ferry_bench_cpr": 1,
           "started": started.isoformat(timespec="seconds"),
           "host": host, "quick": a.quick, "reps": reps,
           "guest": "dmastress (default working set), sparse RAM",
           "goal": {"limit_us": GOAL_US, "memory_gib": GOAL_CELL[0],
                    "devices": GOAL_CELL[1], "by_mode": goals},
           "results": rows}
    text = migbench.compact_json(doc)
    if not a.json_only:
        print_table(rows, goals, sys.stdout)
        print()
    print(text, flush=True)
    out = a.output or os.path.join(build.path, "bench-cpr-results.json")
    try:
        with open(out, "w") as f:
            f.write(text + "\n")
        log("results written to " + out)
    except OSError as e:
        log("cannot write %s: %s" % (out, e))
        return 1
    return 1 if any(r["status"] != "ok" for r in rows) else 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        log("interrupted; children stopped and temporary files removed")
        sys.exit(130)
