# SPDX-License-Identifier: BSD-3-Clause
"""Helpers for the vm suite: KVM check, temp dirs, ferry-vmm processes,
and a small QMP client. Standard library only."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

SKIP = 77
TIMEOUT = 60.0  # generous bound on every wait; never a performance check

VMM = os.environ.get("FERRY_VMM", "")
FERRYCTL = os.environ.get("FERRYCTL", "")
MBTEST = os.environ.get("FERRY_MBTEST", "")


class TestFailure(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise TestFailure(msg)


def skip(reason):
    print("SKIP: " + reason, file=sys.stderr)
    sys.exit(SKIP)


def require_kvm():
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
        os.close(fd)
    except OSError as e:
        skip("/dev/kvm unusable: %s" % e)
    for path in (VMM, FERRYCTL, MBTEST):
        if not path or not os.path.exists(path):
            skip("build artefact missing: %r" % path)


def check_sanitizer(text, who):
    """Under an ASan/UBSan build, any report fails the test."""
    for mark in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                 "runtime error:"):
        check(mark not in text, "%s: sanitizer report:\n%s" % (who, text))


def wait_until(pred, what, timeout=TIMEOUT, interval=0.02):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise TestFailure("timed out waiting for " + what)


class Workdir:
    def __init__(self):
        self.path = tempfile.mkdtemp(prefix="ferry-vm-", dir="/tmp")

    def join(self, name):
        return os.path.join(self.path, name)

    def cleanup(self):
        shutil.rmtree(self.path, ignore_errors=True)


class Vmm:
    """One ferry-vmm process with its serial console in a file."""

    def __init__(self, wd, kernel=None, append=None, memory="64M", cpus=1,
                 qmp=True, extra=(), name="vmm"):
        self.wd = wd
        self.serial = wd.join(name + ".serial")
        self.qmp_path = wd.join(name + ".qmp") if qmp else None
        self.stderr_path = wd.join(name + ".stderr")
        argv = [VMM, "--kernel", kernel or MBTEST, "--memory", memory,
                "--cpus", str(cpus), "--serial", "file:" + self.serial]
        if append:
            argv += ["--append", append]
        if qmp:
            argv += ["--qmp", "unix:" + self.qmp_path]
        argv += list(extra)
        self.errf = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=self.errf)
        self.rc = None

    @property
    def pid(self):
        return self.proc.pid

    def wait_qmp(self):
        wait_until(lambda: os.path.exists(self.qmp_path) or
                   self.proc.poll() is not None, "QMP socket")
        check(self.proc.poll() is None,
              "ferry-vmm died at start: " + self.stderr())

    def serial_text(self):
        try:
            with open(self.serial, "rb") as f:
                return f.read().decode("latin-1")
        except FileNotFoundError:
            return ""

    def stderr(self):
        self.errf.flush()
        with open(self.stderr_path, "rb") as f:
            return f.read().decode("latin-1")

    def wait(self, timeout=TIMEOUT):
        try:
            self.rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise TestFailure("ferry-vmm did not exit within %ss" % timeout)
        check_sanitizer(self.stderr(), "ferry-vmm")
        return self.rc

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.errf.close()


class Qmp:
    def __init__(self, path, timeout=TIMEOUT):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""
        self.events = []
        self.dec = json.JSONDecoder()
        self.greeting = self.read()

    def close(self):
        self.sock.close()

    def send_raw(self, data):
        self.sock.sendall(data if isinstance(data, bytes) else data.encode())

    def read(self):
        while True:
            text = self.buf.decode("utf-8", "replace").lstrip()
            if text:
                try:
                    obj, end = self.dec.raw_decode(text)
                    self.buf = text[end:].encode()
                    return obj
                except ValueError:
                    pass
            chunk = self.sock.recv(65536)
            if not chunk:
                raise TestFailure("QMP connection closed")
            self.buf += chunk

    def reply(self):
        while True:
            msg = self.read()
            if "event" in msg:
                self.events.append(msg)
                continue
            return msg

    def cmd(self, execute, arguments=None, **extra):
        msg = {"execute": execute}
        if arguments is not None:
            msg["arguments"] = arguments
        msg.update(extra)
        self.send_raw(json.dumps(msg) + "\n")
        return self.reply()

    def negotiate(self):
        r = self.cmd("qmp_capabilities")
        check(r == {"return": {}}, "qmp_capabilities: %r" % r)

    def wait_event(self, name):
        while True:
            for e in self.events:
                if e["event"] == name:
                    self.events.remove(e)
                    return e
            self.events.append(self.read())


def run(main):
    """Run a test body; turn failures into exit status 1."""
    require_kvm()
    wd = Workdir()
    vmms = []
    try:
        main(wd, vmms)
    except TestFailure as e:
        print("FAIL: %s" % e, file=sys.stderr)
        for v in vmms:
            print("--- %s stderr:\n%s--- serial:\n%s" %
                  (v.pid, v.stderr(), v.serial_text()), file=sys.stderr)
        sys.exit(1)
    finally:
        for v in vmms:
            v.kill()
        wd.cleanup()
    print("OK")
    sys.exit(0)
