#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Live update (CPR) of ferry-vmm with vfio-user devices (real KVM).

usage: test_cpr.py CASE
CASE: chain | smp-chain | gap-delivered | negative-irqfd | new-killed |
      new-refuses | bad-registry | exec-missing | memstress-4g

chain: dmastress with 2 ferry-dma devices raising interrupts all the time
goes through 100 consecutive cpr-transfers (every 25th by `ferryctl
cpr-transfer`, every 10th into a new process started with `--incoming
defer` and given its main channel by migrate-incoming), then 20
cpr-execs (one by `ferryctl cpr-exec`), each into a new ferry-vmm built
over the same guest RAM, devices adopted without reset, and then 20
live updates of the device servers (the two in turn). Every hop: the old
VMM reports completed and exits 0 (or, for exec, the same PID runs the
new image; for a device server, the old server exits 0), the new one
runs the guest, the guest's counters keep rising, and every VMM has as
many fds open as the first one had. The guest checks every DMA result and counts every
completion's interrupt: it must end PASS (0 lost, 0 spurious).

smp-chain: the same guest on 4 vCPUs (every vCPU submits descriptors,
the devices' MSI-X vectors go to different vCPUs, each vCPU counts its
own interrupts) through 20 cpr-transfers and 2 cpr-execs (the last of
each by ferryctl): every vCPU's state, pending interrupts included,
moves with the VMM; PASS with
cpus=4 and every per-vCPU count exact. FERRY_TEST_DEV_ARGS (e.g.
"--irq-mode intx") passes extra ferry-dev arguments, for runs by hand.

gap-delivered: 5 transfers with x-cpr-gap-ms 200 -- the devices keep
completing jobs and raising interrupts while the guest is paused -- and
the guest still ends PASS: interrupts held in the eventfds are delivered
by the new process. negative-irqfd: the same with x-cpr-keep-irqfds (the
old process leaves its irqfds attached): the guest must catch a lost
interrupt (irq_missing) within a few hops.

Failure paths, each leaving the guest running in the old process with
its devices (heartbeats go on; a later update to a good new process
completes and the guest ends PASS): new-killed (the new process is
SIGKILLed inside the pause), new-refuses (the new process was started
with another --memory: it refuses the fds and exits), exec-missing
(cpr-exec of a binary that does not exist). bad-registry: a new
ferry-vmm fed a corrupted registry, or one with an fd missing, by a fake
old process exits non-zero without running anything.

memstress-4g: a 4 GiB memstress guest through 3 transfers and 2 execs
ends PASS: its memory (checked by itself) is the same memory.

Exit 0 pass, 1 fail, 77 skip.
"""
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

import miglib
import test_devserver_update as devupdate
from miglib import check

FERRYCTL = os.environ.get("FERRYCTL", "")
NDEV = 2
TRANSFERS = 100
EXECS = 20
DEV_UPDATES = 20
DEFER_EVERY = 10
FERRYCTL_EVERY = 25
GAP_MS = 200


def cpr_channel(path):
    return json.dumps({"channel-type": "cpr", "addr": {
        "transport": "socket", "type": "unix", "path": path}})


def unix_channel(kind, path):
    return {"channel-type": kind, "addr": {
        "transport": "socket", "type": "unix", "path": path}}


def stacks(proc):
    """Every thread's stack of a live process (gdb, if installed): what
    a new process that never got ready was doing."""
    gdb = shutil.which("gdb")
    if not gdb or not proc.alive():
        return ""
    try:
        r = subprocess.run([gdb, "-p", str(proc.pid), "-batch", "-ex",
                            "thread apply all bt"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "(gdb timed out)"
    return "\n%s's threads:\n%s" % (proc.name, r.stdout[-6000:])


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


class Guest:
    """The one running guest and the VMM that runs it now."""

    def __init__(self, c, kind="dma", seconds=60, memory="128M",
                 timeout=20, append="", ndev=NDEV, cpus=1, dev_args=()):
        self.c = c
        self.memory = memory
        self.cpus = cpus
        self.seq = 0
        self.ndev = ndev if kind == "dma" else 0
        if kind == "dma":
            # With a control socket each: a new ferry-dev can take over.
            self.ctls = [c.join("D%d.ctl" % i) for i in range(ndev)]
            self.devs = [("dma%d" % i, c.device("D%d" % i, [
                "--control", self.ctls[i], "--takeover-timeout",
                devupdate.TAKEOVER_TIMEOUT_MS] + list(dev_args)))
                for i in range(ndev)]
            kernel = miglib.DMASTRESS
            args = "seconds=%d devices=%d timeout=%d" % (seconds, ndev,
                                                        timeout)
            self.key = "jobs"
        else:
            self.devs = []
            kernel = miglib.MEMSTRESS
            args = "seconds=%d %s" % (seconds, append)
            self.key = "rewrites"
        if cpus > 1:
            args += " cpus=%d" % cpus
        self.vmm = c.source(kernel, args, self.devs, memory=memory,
                            cpus=cpus)
        self.boot_serial = self.vmm.serial
        self.vmm.wait_heartbeats(1)
        # Counted with our QMP connection open, as for every later VMM.
        self.vmm.status()
        self.fds0 = fd_count(self.vmm.pid)
        self.last = self.vmm.heartbeats()[-1]

    def new_name(self):
        self.seq += 1
        return "v%d" % self.seq

    def start_new(self, memory=None, defer=False):
        """A new process waiting on its cpr channel."""
        name = self.new_name()
        cpr = self.c.join(name + ".cpr")
        main = self.c.join(name + ".main")
        nv = miglib.Vmm(self.c, name, self.devs, memory=memory or
                        self.memory, cpus=self.cpus,
                        incoming="defer" if defer else "unix:" + main,
                        extra=["--incoming", cpr_channel(cpr)],
                        wait_ready=False, may_exit=True)
        miglib.wait_until(lambda: os.path.exists(cpr) or not nv.alive(),
                          "%s cpr channel" % name)
        return nv, cpr, main

    def set_params(self, params, caps=None):
        miglib.set_migration(self.vmm, caps, params)

    def transfer(self, via_ferryctl=False, params=None, defer=False):
        nv, cpr, main = self.start_new(defer=defer)
        self.set_params(dict({"mode": "cpr-transfer"}, **(params or {})))
        if via_ferryctl:
            r = subprocess.run([FERRYCTL, "--qmp", self.vmm.qmp_path,
                                "cpr-transfer", "--to", cpr, "--main",
                                "unix:" + main], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True,
                               timeout=miglib.MIG_WAIT_S)
            check(r.returncode == 0 and "guest paused" in r.stdout,
                  "ferryctl cpr-transfer: exit %d: %s" % (r.returncode,
                                                          r.stdout))
        else:
            self.vmm.cmd("migrate", {"channels": [
                unix_channel("main", main), unix_channel("cpr", cpr)]})
        if defer:
            # The new process takes the fds and builds its VM first; its
            # QMP comes up after that, and the old one retries its
            # connect meanwhile.
            miglib.wait_until(lambda: os.path.exists(nv.qmp_path) or
                              not nv.alive(), "%s QMP" % nv.name)
            nv.cmd("migrate-incoming", {"uri": "unix:" + main})
        info = self.vmm.wait_migration()
        check(info["status"] == "completed", "transfer to %s: %r%s" %
              (nv.name, info, "" if info["status"] == "completed" else
               stacks(nv)))
        check(info.get("x-mode") == "cpr-transfer", "x-mode: %r" % info)
        rc = self.vmm.wait()
        check(rc == 0, "%s exited %s after handing over" %
              (self.vmm.name, rc))
        nv.wait_ready(listening=False)
        check(nv.status() == "running", "%s not running" % nv.name)
        self.vmm = nv
        return info

    def exec(self, via_ferryctl=False, argv0=None):
        name = self.new_name()
        state = self.c.join(name + ".state")
        pid = self.vmm.pid
        argv = [argv0 or miglib.VMM, "--memory", self.memory,
                "--cpus", str(self.cpus), "--serial",
                "file:" + self.c.join(name + ".serial"),
                "--qmp", "unix:" + self.c.join(name + ".qmp"),
                "--incoming", "file:" + state]
        for dev_id, dev in self.devs:
            argv += ["--device", "vfio-user,socket=%s,id=%s" %
                     (dev.sock, dev_id)]
        if via_ferryctl:
            r = subprocess.run([FERRYCTL, "--qmp", self.vmm.qmp_path,
                                "cpr-exec", "--file", state, "--"] + argv,
                               stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True,
                               timeout=miglib.MIG_WAIT_S)
            check(r.returncode == 0 and "took over" in r.stdout,
                  "ferryctl cpr-exec: exit %d: %s" % (r.returncode,
                                                      r.stdout))
        else:
            self.set_params({"mode": "cpr-exec", "cpr-exec-command": argv})
            self.vmm.cmd("migrate", {"uri": "file:" + state})
        qmp = self.c.join(name + ".qmp")
        miglib.wait_until(lambda: os.path.exists(qmp) or
                          not self.vmm.alive(), "the new image's QMP")
        check(self.vmm.alive() and self.vmm.pid == pid,
              "the process changed: %s" % self.vmm.log()[-2000:])
        # The same process, a new image: its own QMP and serial.
        self.vmm.close_qmp()
        self.vmm.qmp_path = qmp
        self.vmm.serial = self.c.join(name + ".serial")
        self.vmm.name = name
        # Loading the state may still run (the status is none before).
        miglib.wait_until(lambda: self.vmm.query_migrate().get("status")
                          not in (None, "setup", "active"), "the load")
        info = self.vmm.query_migrate()
        check(info.get("status") == "completed" and
              info.get("x-mode") == "cpr-exec",
              "the new image's incoming: %r" % info)
        check(self.vmm.status() == "running", "%s not running" % name)
        return info

    def progressed(self, what):
        beat = self.vmm.wait_heartbeats(1)
        check(beat[self.key] > self.last[self.key],
              "%s: %s did not advance (%d, then %d)" %
              (what, self.key, self.last[self.key], beat[self.key]))
        check(self.vmm.serial == self.boot_serial or
              "start " not in self.vmm.serial_text(),
              "%s: the guest booted again" % what)
        self.last = beat
        return beat

    def checkpoint(self, what):
        """After a run of updates: the guest moved on, the VMM holds as
        many fds as the first one."""
        b = self.progressed(what)
        self.fds_stable(what)
        print("%s: %s pid %d jobs=%d t=%d fds=%d" %
              (what, self.vmm.name, self.vmm.pid, b["jobs"], b["t"],
               fd_count(self.vmm.pid)))
        return b

    def fds_stable(self, what):
        n = fd_count(self.vmm.pid)
        check(n == self.fds0, "%s: %s has %d fds open, the first VMM %d" %
              (what, self.vmm.name, n, self.fds0))

    def expect_pass(self, timeout):
        v = miglib.expect_pass(self.vmm, timeout)
        check(v[1].get("cpus", 1) == self.cpus, "verdict: %r" % v[2])
        if self.key == "jobs":
            check(v[1].get("devices") == self.ndev, "verdict: %r" % v[2])
            check(v[1].get("resets", 0) == 0, "a device was reset: %r" %
                  v[2])
        return v


def case_chain(c):
    g = Guest(c, seconds=90)
    pauses = []
    for i in range(TRANSFERS):
        info = g.transfer(via_ferryctl=(i % FERRYCTL_EVERY ==
                                        FERRYCTL_EVERY - 1),
                          defer=(i % DEFER_EVERY == DEFER_EVERY - 2))
        pauses.append(info.get("downtime-us", 0) / 1000.0)
        if i % 10 == 9:
            g.checkpoint("transfer %d" % (i + 1))
    pauses.sort()
    print("cpr-transfer pause (VMM): median %.2f ms, max %.2f ms" %
          (pauses[len(pauses) // 2], pauses[-1]))
    pid = g.vmm.pid
    for i in range(EXECS):
        g.exec(via_ferryctl=(i == EXECS - 1))
        if i % 5 == 4:
            g.checkpoint("exec %d" % (i + 1))
    check(g.vmm.pid == pid, "cpr-exec changed the PID")
    devs = [d for _, d in g.devs]
    paused = []
    for i in range(DEV_UPDATES):
        k = i % NDEV
        devs[k], us = devupdate.update(c, "D%d" % k, g.ctls[k], devs[k],
                                       i + 1)
        paused.append(us)
        b = g.progressed("device server update %d" % (i + 1))
        check(g.vmm.alive() and g.vmm.pid == pid,
              "the VMM changed during the device server updates")
    g.fds_stable("device server updates")
    paused.sort()
    print("device server updates: %d, device paused median %d us, max %d "
          "us; jobs=%d t=%d" % (DEV_UPDATES, paused[len(paused) // 2],
                                paused[-1], b["jobs"], b["t"]))
    v = g.expect_pass(240)
    check("disconnected" not in g.vmm.log(),
          "the VMM saw a device server go:\n%s" % g.vmm.log()[-3000:])
    print("ok: %s" % v[2])


SMP_TRANSFERS = 20
SMP_EXECS = 2


def case_smp_chain(c):
    g = Guest(c, seconds=60, cpus=4, dev_args=os.environ.get(
        "FERRY_TEST_DEV_ARGS", "").split())
    for i in range(SMP_TRANSFERS):
        g.transfer(via_ferryctl=(i == SMP_TRANSFERS - 1))
        if i % 5 == 4:
            g.checkpoint("transfer %d" % (i + 1))
    for i in range(SMP_EXECS):
        g.exec(via_ferryctl=(i == SMP_EXECS - 1))
        g.progressed("exec %d" % (i + 1))
    v = g.expect_pass(240)
    print("ok: %s" % v[2])


def case_gap(c, keep):
    g = Guest(c, seconds=40, timeout=3)
    caps = {"x-cpr-keep-irqfds": keep}
    for i in range(5):
        g.set_params({"x-cpr-gap-ms": GAP_MS}, caps)
        try:
            info = g.transfer()
        except miglib.TestFailure:
            if keep:
                break
            raise
        check(info.get("downtime-us", 0) >= GAP_MS * 1000,
              "the gap was not in the pause: %r" % info)
        rc, v = None, miglib.verdict(g.vmm.serial_text())
        if v:
            break
        try:
            g.progressed("transfer %d" % (i + 1))
        except miglib.TestFailure:
            if keep:
                break
            raise
    if keep:
        rc, v = miglib.wait_guest_end(g.vmm, 60)
        check(rc != 0 and v and v[0] == "FAIL" and "irq_missing" in v[2],
              "negative control not caught: with irqfds left attached the "
              "guest ended %r (exit %s)" % (v and v[2], rc))
        print("ok: caught: %s" % v[2])
        return
    v = g.expect_pass(90)
    print("ok: interrupts raised in %d ms pauses delivered: %s" %
          (GAP_MS, v[2]))


def failed_then_good(g, info, what):
    """The old process kept the guest: devices run, the guest goes on,
    and a good update afterwards works."""
    check(info["status"] == "failed", "%s: %r" % (what, info))
    print("%s: %s" % (what, info.get("error-desc")))
    check(g.vmm.status() == "running", "%s: old process not running" % what)
    g.progressed(what)
    g.fds_stable(what)
    g.transfer()
    g.progressed("good transfer after " + what)
    v = g.expect_pass(90)
    print("ok: %s" % v[2])


def case_new_killed(c):
    g = Guest(c, seconds=40)
    nv, cpr, main = g.start_new()
    g.set_params({"mode": "cpr-transfer", "x-cpr-gap-ms": 1500})
    g.vmm.cmd("migrate", {"channels": [unix_channel("main", main),
                                       unix_channel("cpr", cpr)]})
    # Inside the pause (finish-migrate): the new one dies.
    miglib.wait_until(lambda: g.vmm.status() == "finish-migrate",
                      "the pause")
    nv.kill(signal.SIGKILL)
    info = g.vmm.wait_migration()
    g.set_params({"x-cpr-gap-ms": 0})
    failed_then_good(g, info, "new process killed in the pause")


def case_new_refuses(c):
    g = Guest(c, seconds=40)
    nv, cpr, main = g.start_new(memory="256M")
    # No x-io-timeout: the old process must see the new one exit (its
    # pidfd), not wait out MIG_CPR_READY_MS for a listener that never
    # comes.
    g.set_params({"mode": "cpr-transfer"})
    g.vmm.cmd("migrate", {"channels": [unix_channel("main", main),
                                       unix_channel("cpr", cpr)]})
    info = g.vmm.wait_migration()
    rc = nv.wait()
    check(rc != 0 and "the old process has" in nv.log(),
          "the new process with another --memory: exit %s: %s" %
          (rc, nv.log()[-1000:]))
    check(nv.serial_text() == "", "the new process ran guest code")
    check("exited before it listened" in info.get("error-desc", ""),
          "the old process did not see the new one exit: %r" % info)
    failed_then_good(g, info, "new process refused the fds")


def case_exec_missing(c):
    g = Guest(c, seconds=40)
    g.set_params({"mode": "cpr-exec",
                  "cpr-exec-command": ["/nonexistent/ferry-vmm"]})
    g.vmm.cmd("migrate", {"uri": "file:" + c.join("x.state")})
    info = g.vmm.wait_migration()
    check("nonexistent" in (info.get("error-desc") or ""),
          "error: %r" % info)
    g.set_params({"mode": "normal"})
    failed_then_good(g, info, "exec of a missing binary")


# ---- a fake old process: registries by hand ------------------------------

def _crc32c_table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t


_CRC_T = _crc32c_table()


def crc32c(data, crc=0xffffffff):
    for b in data:
        crc = _CRC_T[(crc ^ b) & 0xff] ^ (crc >> 8)
    return crc


def registry(names, blob):
    body = b"".join(n.encode() + b"\0" for n in names) + blob
    hdr = b"FERRYFDS" + struct.pack("<IIIII", 1, len(names),
                                    len(body) - len(blob), len(blob), 0)
    crc = crc32c(body, crc32c(hdr)) ^ 0xffffffff
    return hdr + struct.pack("<I", crc) + body


def send_registry(path, data, fds):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    miglib.wait_until(lambda: os.path.exists(path), "cpr channel")
    s.connect(path)
    s.sendall(data)
    if fds:
        socket.send_fds(s, [struct.pack("<I", len(fds))], fds)
    return s


def case_bad_registry(c):
    devs = [("dma0", c.device("D0"))]
    desc = {"version": 1, "id": "ab" * 16, "mode": "cpr-transfer",
            "memory": 128 << 20, "cpus": 1, "devices": [
                {"id": "dma0", "slot": 1, "backend": {}, "info": {}}]}
    blob = json.dumps(desc).encode() + b"\0"
    memfd = os.memfd_create("ram")
    os.ftruncate(memfd, 128 << 20)
    cases = [
        ("a flipped byte", lambda d: d[:-3] + bytes([d[-3] ^ 1]) + d[-2:],
         ["ram"], [memfd], "CRC"),
        ("the device's connection missing", lambda d: d, ["ram"],
         [memfd], "dev0.sock"),
        ("fewer fds than announced", lambda d: d, ["ram", "dev0.sock"],
         [memfd], "fd"),
    ]
    for what, mangle, names, fds, want in cases:
        name = "bad%d" % len(c.procs)
        cpr = c.join(name + ".cpr")
        nv = miglib.Vmm(c, name, devs, incoming="unix:" +
                        c.join(name + ".main"),
                        extra=["--incoming", cpr_channel(cpr)],
                        wait_ready=False, may_exit=True)
        s = send_registry(cpr, mangle(registry(names, blob)), fds)
        rc = nv.wait()
        s.close()
        check(rc not in (None, 0) and want in nv.log(),
              "%s: exit %s, log:\n%s" % (what, rc, nv.log()[-1500:]))
        check(nv.serial_text() == "" if os.path.exists(nv.serial) else
              True, "%s: guest code ran" % what)
        print("ok: %s refused: %s" % (what, nv.log().strip().splitlines()
                                      [-1]))
    os.close(memfd)
    # The device server never saw any of it.
    check(devs[0][1].alive(), "ferry-dev died")


def case_memstress_4g(c):
    g = Guest(c, kind="mem", seconds=50, memory="4G",
              append="pages=%d fill=1 rate=0" % (1 << 18))
    for _ in range(3):
        g.transfer()
        g.progressed("transfer")
    for _ in range(2):
        g.exec()
        g.progressed("exec")
    v = g.expect_pass(120)
    print("ok: %s" % v[2])


CASES = {
    "chain": case_chain,
    "smp-chain": case_smp_chain,
    "gap-delivered": lambda c: case_gap(c, False),
    "negative-irqfd": lambda c: case_gap(c, True),
    "new-killed": case_new_killed,
    "new-refuses": case_new_refuses,
    "bad-registry": case_bad_registry,
    "exec-missing": case_exec_missing,
    "memstress-4g": case_memstress_4g,
}


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in CASES:
        print(__doc__, file=sys.stderr)
        return 2
    miglib.require(miglib.DMASTRESS, miglib.MEMSTRESS, FERRYCTL)
    return miglib.run("cpr-" + sys.argv[1], CASES[sys.argv[1]])


if __name__ == "__main__":
    sys.exit(main())
