# SPDX-License-Identifier: BSD-3-Clause
"""Plumbing for the migration benchmarks: temporary directories, child
processes that are always reaped, a QMP client that reads events while it
waits, and parsers for the self-checking guests' console lines.

Standard library only. Nothing here measures anything: the figures come
from the VMM (query-migrate) and from the guest (max_stall_us)."""
import ctypes
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time


class BenchError(Exception):
    """A scenario could not be run or its result is not trustworthy."""


def wait_until(pred, what, timeout, interval=0.05):
    """Poll pred() until it returns a true value; BenchError on timeout."""
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= end:
            raise BenchError("timed out after %.0f s waiting for %s" %
                             (timeout, what))
        time.sleep(interval)


def free_tcp_port():
    """A port the kernel just gave out on loopback. Another process may
    take it before the destination binds it; the caller retries then."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:
    _libc = None
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent):
    """In the child, before exec: SIGKILL when the runner dies, however it
    dies (even SIGKILL, when no finally runs). The runner is single-
    threaded, so 'the thread that forked' is the runner itself."""
    def setup():
        if _libc is not None:
            _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)	# the runner died before prctl took effect
    return setup


class Workdir:
    """A private directory under /tmp, removed by cleanup()."""

    def __init__(self, prefix="ferry-bench-"):
        self.path = tempfile.mkdtemp(prefix=prefix, dir="/tmp")

    def join(self, name):
        return os.path.join(self.path, name)

    def cleanup(self):
        shutil.rmtree(self.path, ignore_errors=True)


class Proc:
    """A child process with stdout/stderr in files of the work directory.

    kill() is idempotent and always reaps, so a Proc never outlives the
    scenario that started it; PR_SET_PDEATHSIG covers a runner that is
    killed outright."""

    def __init__(self, wd, name, argv):
        self.name = name
        self.argv = argv
        self.err_path = wd.join(name + ".stderr")
        self.out_path = wd.join(name + ".stdout")
        self._err = open(self.err_path, "wb")
        self._out = open(self.out_path, "wb")
        try:
            # Own process group: a Ctrl-C on the terminal reaches only
            # the runner, which then tears the children down in order.
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                         stdout=self._out, stderr=self._err,
                                         start_new_session=True,
                                         preexec_fn=_die_with_parent(
                                             os.getpid()))
        except OSError:
            self._close_files()
            raise
        self.rc = None

    def _close_files(self):
        for f in (self._err, self._out):
            if not f.closed:
                f.close()

    @property
    def pid(self):
        return self.proc.pid

    def poll(self):
        if self.rc is None:
            self.rc = self.proc.poll()
        return self.rc

    def alive(self):
        return self.poll() is None

    def wait(self, timeout):
        """Exit status, or None if still running after timeout."""
        try:
            self.rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.rc

    def wait_rusage(self, timeout):
        """Like wait(), reaping with wait4(): (status, resource usage of
        the whole process) or (None, None) if still running after timeout.
        The usage is None when the child had already been reaped (by
        poll() or wait()), so call this before those."""
        end = time.monotonic() + timeout
        while self.proc.returncode is None:
            try:
                pid, status, ru = os.wait4(self.proc.pid, os.WNOHANG)
            except ChildProcessError:
                return self.wait(0), None
            if pid == self.proc.pid:
                self.proc.returncode = os.waitstatus_to_exitcode(status)
                self.rc = self.proc.returncode
                return self.rc, ru
            if time.monotonic() >= end:
                return None, None
            time.sleep(0.01)
        self.rc = self.proc.returncode
        return self.rc, None

    def stderr(self):
        try:
            with open(self.err_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def kill(self, grace=2.0):
        """SIGTERM (ferry-vmm and ferry-dev shut down cleanly on it), then
        SIGKILL after grace seconds."""
        if self.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
            if self.wait(grace) is None:
                self.proc.send_signal(signal.SIGKILL)
                self.rc = self.proc.wait()
        self._close_files()


class QmpError(BenchError):
    pass


class Qmp:
    """QMP client. Events are collected in self.events whenever the socket
    is read; cmd() matches its reply by id, so it may be interleaved with
    events. Every read is bounded by timeout."""

    def __init__(self, path, timeout=30.0):
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except OSError:
            self.sock.close()
            raise
        self.buf = ""
        self.dec = json.JSONDecoder()
        self.events = []
        self.replies = {}
        self.next_id = 1
        self.closed = False
        self.greeting = self._read_one(timeout)
        if not self.greeting or "QMP" not in self.greeting:
            raise QmpError("not a QMP server: %r" % (self.greeting,))
        r = self.cmd("qmp_capabilities")
        if "return" not in r:
            raise QmpError("qmp_capabilities: %r" % (r,))

    def close(self):
        self.sock.close()

    def _parse(self):
        text = self.buf.lstrip()
        if not text:
            self.buf = ""
            return None
        try:
            obj, end = self.dec.raw_decode(text)
        except ValueError:
            self.buf = text
            return None
        self.buf = text[end:]
        return obj

    def _fill(self, timeout):
        """Read what arrives within timeout; False on timeout."""
        if self.closed:
            raise QmpError("QMP connection closed")
        r, _, _ = select.select([self.sock], [], [], max(timeout, 0))
        if not r:
            return False
        try:
            chunk = self.sock.recv(65536)
        except OSError as e:
            self.closed = True
            raise QmpError("QMP connection lost: %s" % e)
        if not chunk:
            self.closed = True
            raise QmpError("QMP connection closed")
        self.buf += chunk.decode("utf-8", "replace")
        return True

    def _read_one(self, timeout):
        end = time.monotonic() + timeout
        while True:
            obj = self._parse()
            if obj is not None:
                return obj
            if not self._fill(end - time.monotonic()):
                if time.monotonic() >= end:
                    return None

    def _dispatch(self, obj):
        if "event" in obj:
            self.events.append(obj)
        elif "id" in obj:
            self.replies[obj["id"]] = obj

    def pump(self, timeout=0.0):
        """Take in every message that arrives within timeout."""
        end = time.monotonic() + timeout
        while True:
            obj = self._parse()
            if obj is not None:
                self._dispatch(obj)
                continue
            left = end - time.monotonic()
            if not self._fill(left) or left <= 0:
                # Drain what is already buffered, then stop.
                while True:
                    obj = self._parse()
                    if obj is None:
                        return
                    self._dispatch(obj)

    def send(self, execute, arguments=None):
        """Send a command; returns its id (reply later via reply())."""
        cid = self.next_id
        self.next_id += 1
        msg = {"execute": execute, "id": cid}
        if arguments is not None:
            msg["arguments"] = arguments
        try:
            self.sock.sendall((json.dumps(msg) + "\n").encode())
        except OSError as e:
            self.closed = True
            raise QmpError("QMP connection lost: %s" % e)
        return cid

    def reply(self, cid, timeout=None):
        end = time.monotonic() + (self.timeout if timeout is None
                                  else timeout)
        while cid not in self.replies:
            left = end - time.monotonic()
            if left <= 0:
                raise QmpError("no QMP reply within the timeout")
            obj = self._read_one(left)
            if obj is not None:
                self._dispatch(obj)
        return self.replies.pop(cid)

    def cmd(self, execute, arguments=None, timeout=None):
        return self.reply(self.send(execute, arguments), timeout)

    def cmd_ok(self, execute, arguments=None):
        r = self.cmd(execute, arguments)
        if "return" not in r:
            desc = r.get("error", {}).get("desc", repr(r))
            raise QmpError("%s: %s" % (execute, desc))
        return r["return"]

    def take_events(self, name=None):
        out = [e for e in self.events if name is None or e["event"] == name]
        self.events = [e for e in self.events if e not in out]
        return out


def connect_qmp(path, proc, timeout):
    """Wait for a VMM's QMP socket and connect; fail early if it died."""
    wait_until(lambda: os.path.exists(path) or not proc.alive(),
               "QMP socket " + path, timeout)
    if not proc.alive():
        raise BenchError("%s exited at start (status %s): %s" %
                         (proc.name, proc.rc, proc.stderr().strip()))
    return Qmp(path, timeout)


# Guest console lines (docs/guests.md).
_KV = re.compile(r"(\w+)=(\S+)")
_VERDICT = re.compile(r"^(memstress|dmastress): (PASS|FAIL)\b(.*)$", re.M)


def _fields(text):
    out = {}
    for k, v in _KV.findall(text):
        try:
            out[k] = int(v, 0)
        except ValueError:
            out[k] = v
    return out


def read_text(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("latin-1")
    except FileNotFoundError:
        return ""


def heartbeats(text):
    """Every heartbeat line's fields, in order."""
    return [_fields(m.group(1)) for m in
            re.finditer(r"^\w+: heartbeat (.*)$", text, re.M)]


def verdict(text):
    """(passed, line, fields) of the guest's verdict, or None if none."""
    m = _VERDICT.search(text)
    if not m:
        return None
    return (m.group(2) == "PASS", m.group(0).strip(), _fields(m.group(3)))


# The source's own summary, printed just before it exits: the fallback
# when its QMP socket closed before the final query-migrate was answered.
_COMPLETED = re.compile(r"migration completed: ([\d.]+) s total, ([\d.]+) ms "
                        r"downtime, (\d+) bytes, (\d+) iterations")


def completion_line(text):
    m = _COMPLETED.search(text)
    if not m:
        return None
    return {"total_ms": float(m.group(1)) * 1000.0,
            "downtime_ms": float(m.group(2)),
            "transferred": int(m.group(3)),
            "iterations": int(m.group(4))}


def sanitizer_report(text):
    for mark in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                 "runtime error:"):
        if mark in text:
            return mark
    return None


# ---- the machine's own figures -------------------------------------------

BASELINE_TIMEOUT = 180.0


def run_tcpstream(tool, args, prefix="ferry-bench-"):
    """One run of bench/tcpstream (its JSON line as a dict), or
    {"error": ...}: what this machine can do, measured in the same run
    as the figures compared with it."""
    wd = Workdir(prefix)
    p = None
    try:
        p = Proc(wd, "tcpstream", [tool] + list(args))
        rc = p.wait(BASELINE_TIMEOUT)
        if rc is None:
            return {"error": "timed out after %d s" % BASELINE_TIMEOUT}
        out = read_text(p.out_path).strip()
        if rc != 0 or not out:
            return {"error": "status %s: %s" % (rc, p.stderr().strip())}
        try:
            return json.loads(out.splitlines()[-1])
        except ValueError:
            return {"error": "bad output: %r" % out[:200]}
    finally:
        if p is not None:
            p.kill()
        wd.cleanup()
