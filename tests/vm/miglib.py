# SPDX-License-Identifier: BSD-3-Clause
"""Helpers for the live-migration tests (tests/vm/test_migration.py):
a Cluster owns every ferry-dev and ferry-vmm process of one test and its
temp dir, and removes them on every path (failure, SIGTERM from meson's
timeout, and -- through PR_SET_PDEATHSIG -- even SIGKILL of the test).

Standard library only; reuses vmlib's QMP client and checks."""
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

import vmlib
from vmlib import TestFailure, check

SKIP = 77
WAIT_S = 60.0           # generous bound on any single wait
MIG_WAIT_S = 90.0       # one migration reaching a final status
EXIT_WAIT_S = 30.0      # a process leaving after it was told to
BOOT_WAIT_S = 120.0     # a guest's first heartbeat (kvm_pvm boot is slow)
POLL_S = 0.02
QMP_REFUSED_S = 5.0     # a QMP socket bound but not yet listening

VMM = os.environ.get("FERRY_VMM", "")
DEV = os.environ.get("FERRY_DEV", "")
MEMSTRESS = os.environ.get("FERRY_GUEST_MEMSTRESS", "")
DMASTRESS = os.environ.get("FERRY_GUEST_DMASTRESS", "")

FINAL = ("completed", "failed", "cancelled")
NO_GUEST_RAN = "no guest code ran here"

PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent():
    # A test killed with SIGKILL cannot clean up: take the children along.
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def skip(reason):
    print("SKIP: " + reason, file=sys.stderr)
    sys.exit(SKIP)


def require(*paths):
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
        os.close(fd)
    except OSError as e:
        skip("/dev/kvm unusable: %s" % e)
    for p in (VMM, DEV) + paths:
        if not p or not os.path.exists(p):
            skip("build artefact missing: %r" % p)


def wait_until(pred, what, timeout=WAIT_S):
    return vmlib.wait_until(pred, what, timeout=timeout, interval=POLL_S)


def read_text(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("latin-1")
    except FileNotFoundError:
        return ""


# ---- guest output ------------------------------------------------------

HEARTBEAT_RE = re.compile(r"^(\w+): heartbeat (.*)$", re.M)
VERDICT_RE = re.compile(r"^(\w+): (PASS|FAIL)\b(.*)$", re.M)
KV_RE = re.compile(r"(\w+)=(-?\d+)")


def heartbeats(text):
    """Every complete heartbeat line of a serial log as a dict of its
    counters. The guest writes its console a byte at a time: a line
    without its newline yet is still being written."""
    text = text[:text.rfind("\n") + 1]
    return [dict((k, int(v)) for k, v in KV_RE.findall(m.group(2)))
            for m in HEARTBEAT_RE.finditer(text)]


def verdict(text):
    """(PASS|FAIL, counters, line) of the last verdict line, or None."""
    text = text[:text.rfind("\n") + 1]
    found = None
    for m in VERDICT_RE.finditer(text):
        found = (m.group(2), dict((k, int(v)) for k, v in
                                  KV_RE.findall(m.group(3))), m.group(0))
    return found


# ---- processes ---------------------------------------------------------

class Proc:
    def __init__(self, cluster, name, argv):
        self.cluster = cluster
        self.name = name
        self.argv = argv
        self.log_path = cluster.join(name + ".stderr")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log,
                                         preexec_fn=_die_with_parent)
        self.rc = None
        cluster.procs.append(self)

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def log(self):
        return read_text(self.log_path)

    def wait(self, timeout=EXIT_WAIT_S):
        try:
            self.rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TestFailure("%s did not exit within %ss" %
                              (self.name, timeout))
        vmlib.check_sanitizer(self.log(), self.name)
        return self.rc

    def kill(self, sig=signal.SIGKILL):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            pass


class Dev(Proc):
    """One ferry-dev device server (one ferry-dma device)."""

    def __init__(self, cluster, name, extra=()):
        self.sock = cluster.join(name + ".sock")
        super().__init__(cluster, name, [DEV, "--socket", self.sock,
                                         "--name", name] + list(extra))
        wait_until(lambda: os.path.exists(self.sock) or not self.alive(),
                   "ferry-dev %s socket" % name)
        check(self.alive(), "ferry-dev %s died at start: %s" %
              (name, self.log()))


class Vmm(Proc):
    """One ferry-vmm: a source (kernel=...) or a destination (incoming=...)."""

    def __init__(self, cluster, name, devices=(), memory="128M", cpus=1,
                 kernel=None, append=None, incoming=None, may_exit=False,
                 extra=(), wait_ready=True):
        self.serial = cluster.join(name + ".serial")
        self.qmp_path = cluster.join(name + ".qmp")
        self.incoming = incoming
        argv = [VMM, "--memory", memory, "--cpus", str(cpus),
                "--serial", "file:" + self.serial,
                "--qmp", "unix:" + self.qmp_path]
        if kernel:
            argv += ["--kernel", kernel]
            if append:
                argv += ["--append", append]
        if incoming:
            argv += ["--incoming", incoming]
        for dev_id, dev in devices:
            argv += ["--device", "vfio-user,socket=%s,id=%s" %
                     (dev.sock, dev_id)]
        argv += list(extra)
        # a source that exits by itself once it handed the guest over
        self.exit_after = "--exit-after-migrate" in argv
        self.devices = list(devices)
        self._qmp = None
        super().__init__(cluster, name, argv)
        if not wait_ready:
            return      # e.g. a live update's new process: QMP comes later
        self.wait_ready(may_exit)

    def wait_ready(self, may_exit=False, listening=True):
        """QMP is up (and, with listening, the incoming socket)."""
        name = self.name
        incoming = self.incoming if listening else None
        wait_until(lambda: os.path.exists(self.qmp_path) or
                   not self.alive(), "%s QMP socket" % name)
        if may_exit:
            return      # e.g. a bad stream file: it may be done already
        check(self.alive(), "%s died at start (exit %s): %s" %
              (name, self.proc.returncode, self.log()))
        if incoming and incoming.startswith("unix:"):
            path = incoming[5:]
            wait_until(lambda: os.path.exists(path) or not self.alive(),
                       "%s incoming socket" % name)

    # -- QMP --
    def qmp(self):
        if self._qmp is None:
            # The socket file appears at bind(), a connect works from
            # listen(): a refusal in between is worth another try.
            end = time.monotonic() + QMP_REFUSED_S
            while True:
                try:
                    self._qmp = vmlib.Qmp(self.qmp_path, timeout=WAIT_S)
                    break
                except ConnectionRefusedError as e:
                    if time.monotonic() < end and self.alive():
                        time.sleep(POLL_S)
                        continue
                    err = e
                except OSError as e:
                    err = e
                raise TestFailure("%s: cannot reach QMP (%s; exit %s)" %
                                  (self.name, err, self.proc.poll()))
            self._qmp.negotiate()
        return self._qmp

    def cmd_raw(self, execute, arguments=None):
        try:
            return self.qmp().cmd(execute, arguments)
        except OSError as e:
            raise TestFailure("%s: QMP %s: %s (exit %s)" %
                              (self.name, execute, e, self.proc.poll()))

    def cmd(self, execute, arguments=None):
        r = self.cmd_raw(execute, arguments)
        check("return" in r, "%s: %s %r failed: %r" %
              (self.name, execute, arguments, r))
        return r["return"]


    def events(self, name=None):
        evs = self._qmp.events if self._qmp else []
        return [e for e in evs if name is None or e["event"] == name]

    def drain_events(self):
        """Parse whatever the VMM sent before it closed the connection."""
        q = self._qmp
        if not q:
            return
        try:
            q.sock.settimeout(1.0)
            while True:
                msg = q.read()
                if "event" in msg:
                    q.events.append(msg)
        except (TestFailure, OSError):
            pass

    def mig_statuses(self):
        return [e["data"]["status"] for e in self.events("MIGRATION")]

    def wait_mig_event(self, status):
        """Until the MIGRATION event for status has been read: as in
        QEMU, query-migrate may show a new status a moment before its
        event is sent."""
        wait_until(lambda: self.cmd("query-status") is not None and
                   status in self.mig_statuses(),
                   "%s: MIGRATION event %r" % (self.name, status))
        return self.mig_statuses()

    def status(self):
        return self.cmd("query-status")["status"]

    def query_migrate(self):
        return self.cmd("query-migrate")

    def wait_migration(self, want=FINAL, timeout=MIG_WAIT_S):
        """Poll query-migrate until its status is in want. A source that
        completed may be gone (--exit-after-migrate, or quit by
        ferryctl); if the connection closes first, the MIGRATION events
        already read tell the final status."""
        end = time.monotonic() + timeout
        last = None
        while time.monotonic() < end:
            try:
                last = self.query_migrate()
            except (TestFailure, OSError):
                self.drain_events()
                st = self.mig_statuses()
                if st and st[-1] in want:
                    # The event's own figures, when it has them.
                    ev = self.events("MIGRATION")[-1]["data"]
                    return dict(ev.get("x-info", {}), status=st[-1],
                                closed=True)
                raise TestFailure("%s: QMP gone while migrating (exit %s, "
                                  "events %r)" % (self.name,
                                                  self.proc.poll(), st))
            if last.get("status") in want:
                return last
            time.sleep(POLL_S)
        raise TestFailure("%s: migration not %s within %ss; last "
                          "query-migrate %r" % (self.name, "/".join(want),
                                                timeout, last))

    # -- guest --
    def serial_text(self):
        return read_text(self.serial)

    def heartbeats(self):
        return heartbeats(self.serial_text())

    def wait_heartbeats(self, n, timeout=BOOT_WAIT_S):
        """Until the guest printed n more heartbeats than it has now."""
        base = len(self.heartbeats())

        def more():
            check(self.alive(), "%s exited (%s) while waiting for its "
                  "guest" % (self.name, self.proc.poll()))
            return len(self.heartbeats()) >= base + n
        wait_until(more, "%d heartbeat(s) from %s" % (n, self.name),
                   timeout)
        return self.heartbeats()[-1]

    def devices_state(self, info):
        return {d["id"]: d["state"] for d in info.get("vfio-user-devices",
                                                        [])}

    def close_qmp(self):
        if self._qmp:
            self._qmp.close()
            self._qmp = None


class Cluster:
    """Every process and file of one test."""

    def __init__(self, name):
        self.path = tempfile.mkdtemp(prefix="ferry-mig-%s-" % name,
                                     dir="/tmp")
        self.procs = []
        self.seq = 0

    def join(self, name):
        return os.path.join(self.path, name)

    def device(self, name, extra=()):
        return Dev(self, name, extra)

    def source(self, kernel, append, devices=(), memory="128M", cpus=1,
               name="src", extra=()):
        return Vmm(self, name, devices, memory, cpus, kernel=kernel,
                   append=append, extra=extra)

    def dest(self, devices=(), memory="128M", cpus=1, incoming=None,
             name=None, may_exit=False, extra=()):
        self.seq += 1
        name = name or "dst%d" % self.seq
        if incoming is None:
            incoming = "unix:" + self.join(name + ".mig")
        return Vmm(self, name, devices, memory, cpus, incoming=incoming,
                   may_exit=may_exit, extra=extra)

    def free_tcp_port(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        return port

    def dump(self):
        out = []
        for p in self.procs:
            out.append("--- %s (pid %d, exit %s) %s\n%s" %
                       (p.name, p.pid, p.proc.poll(), " ".join(p.argv),
                        p.log()[-4000:]))
            if isinstance(p, Vmm):
                out.append("--- %s serial (tail)\n%s" %
                           (p.name, p.serial_text()[-3000:]))
        return "\n".join(out)

    def stop_and_check(self):
        """Stop what still runs with SIGTERM, so that the sanitizers of
        an ASan/UBSan build get to report, then look at every log."""
        for p in self.procs:
            if p.alive():
                p.proc.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.proc.wait(timeout=EXIT_WAIT_S)
            except subprocess.TimeoutExpired:
                raise TestFailure("%s ignored SIGTERM for %ss" %
                                  (p.name, EXIT_WAIT_S))
            vmlib.check_sanitizer(p.log(), p.name)

    def close(self):
        for p in self.procs:
            if isinstance(p, Vmm):
                p.close_qmp()
            if p.alive():
                p.proc.send_signal(signal.SIGKILL)
        for p in self.procs:
            try:
                p.proc.wait(timeout=EXIT_WAIT_S)
            except subprocess.TimeoutExpired:
                pass
        shutil.rmtree(self.path, ignore_errors=True)


# ---- migration steps -----------------------------------------------------

def set_migration(src, caps=None, params=None):
    if caps:
        src.cmd("migrate-set-capabilities", {"capabilities": [
            {"capability": k, "state": v} for k, v in caps.items()]})
    if params:
        src.cmd("migrate-set-parameters", params)


def hop(cluster, src, dst_devices, caps=None, params=None, memory="128M",
        cpus=1, extra=()):
    """Migrate src to a new destination on dst_devices; the hop must
    complete: source status completed, postmigrate until quit, then exit
    0; the destination runs."""
    return hop_to(src, cluster.dest(dst_devices, memory, cpus, extra=extra),
                  caps, params)


POSTMIGRATE_REFUSAL = "has migrated away"


def quit_postmigrate(src, mig_status="completed"):
    """A source that handed its guest over stays in postmigrate (as
    QEMU's): paused, the figures queryable (the migration's status
    mig_status: "failed" for a hand-over only x-migrate-outcome settled),
    cont and another migrate refused; quit ends it with status 0."""
    st = src.status()
    check(st == "postmigrate", "%s: status %r after handing over" %
          (src.name, st))
    check(src.query_migrate()["status"] == mig_status,
          "%s: query-migrate in postmigrate: %r" % (src.name,
                                                    src.query_migrate()))
    for cmd, args in (("cont", None), ("migrate", {"uri": "unix:/nowhere"})):
        r = src.cmd_raw(cmd, args)
        check("error" in r and POSTMIGRATE_REFUSAL in r["error"]["desc"],
              "%s: %s in postmigrate: %r" % (src.name, cmd, r))
    check(src.status() == "postmigrate", "%s left postmigrate" % src.name)
    src.cmd("quit")
    rc = src.wait()
    check(rc == 0, "%s exited %s on quit after a completed migration" %
          (src.name, rc))


def hop_to(src, dst, caps=None, params=None):
    """The same to a destination already started (and set up)."""
    set_migration(src, caps, params)
    src.cmd("migrate", {"uri": dst.incoming})
    info = src.wait_migration()
    check(info["status"] == "completed",
          "%s -> %s: migration %s: %r" % (src.name, dst.name,
                                          info["status"], info))
    if src.exit_after:
        rc = src.wait()
        check(rc == 0, "%s (--exit-after-migrate) exited %s after a "
              "completed migration" % (src.name, rc))
    else:
        quit_postmigrate(src)
    check(dst.alive(), "%s exited (%s) after taking the guest" %
          (dst.name, dst.proc.poll()))
    st = dst.status()
    check(st == "running", "%s status %r after migration" % (dst.name, st))
    return dst, info


def wait_guest_end(vmm, timeout):
    """The guest's own verdict, and ferry-vmm's exit status."""
    rc = vmm.wait(timeout)
    return rc, verdict(vmm.serial_text())


def expect_pass(vmm, timeout):
    rc, v = wait_guest_end(vmm, timeout)
    check(rc == 0 and v and v[0] == "PASS",
          "%s: guest did not PASS: exit %s, verdict %r" %
          (vmm.name, rc, v and v[2]))
    return v


def expect_no_guest(dst, timeout=WAIT_S):
    """A destination that must fail without running a guest instruction:
    non-zero exit, the engine's message, and nothing on its console."""
    rc = dst.wait(timeout)
    err = dst.log()
    check(rc != 0, "%s exited 0 after a failed migration" % dst.name)
    check(NO_GUEST_RAN in err, "%s: no '%s' in its stderr:\n%s" %
          (dst.name, NO_GUEST_RAN, err))
    check(dst.serial_text() == "",
          "%s: guest output on a destination that must not run it:\n%s" %
          (dst.name, dst.serial_text()[:2000]))
    return err


def expect_source_keeps_guest(src, info, key):
    """After a failed or cancelled migration: devices RUNNING, the vCPUs
    running, and the guest making progress (a counter that rises)."""
    for dev_id, state in src.devices_state(info).items():
        check(state == "RUNNING", "%s: device %s is %s after the "
              "migration ended %s" % (src.name, dev_id, state,
                                      info["status"]))
    if src.devices:
        evs = src.events("VFIO_MIGRATION")
        for dev_id, _ in src.devices:
            mine = [e["data"]["device-state"] for e in evs
                    if e["data"]["device-id"] == dev_id]
            # QEMU's QemuVfioMigrationState names in the event.
            check(not mine or mine[-1] == "running",
                  "%s: last VFIO_MIGRATION state of %s is %r" %
                  (src.name, dev_id, mine))
    st = src.status()
    check(st == "running", "%s: status %r after the migration ended %s" %
          (src.name, st, info["status"]))
    before = src.heartbeats()[-1]
    after = src.wait_heartbeats(2, timeout=WAIT_S)
    check(after[key] > before[key],
          "%s: guest made no progress after the migration ended: %s=%d "
          "then %d" % (src.name, key, before[key], after[key]))


def run(name, body):
    """Run a test body in a Cluster; every path cleans up."""
    # meson's timeout sends SIGTERM: leave through the finally below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    cluster = Cluster(name)
    t0 = time.monotonic()
    try:
        body(cluster)
        cluster.stop_and_check()
    except TestFailure as e:
        print("FAIL: %s" % e, file=sys.stderr)
        print(cluster.dump(), file=sys.stderr)
        sys.exit(1)
    except Exception:
        traceback.print_exc()
        print(cluster.dump(), file=sys.stderr)
        sys.exit(1)
    finally:
        cluster.close()
    print("OK %s (%.1f s)" % (name, time.monotonic() - t0))
    sys.exit(0)
