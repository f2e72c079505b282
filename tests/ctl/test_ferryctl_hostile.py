#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""ferryctl against a hostile or broken VMM (no KVM needed).

A fake QMP server on a UNIX socket plays the VMM, one behaviour per
case; ferryctl runs against it and must end on its own -- within its
--timeout however many events trickle in, with an error and no crash
on answers of the wrong shape, and give up on a cpr-exec whose VMM never
execs -- and must send what a plain migration needs (mode normal,
whatever an earlier live update left).

usage: test_ferryctl_hostile.py FERRYCTL
Exit 0 pass, 1 fail."""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

GREETING = {"QMP": {"version": {"qemu": {"major": 7, "minor": 2,
                                         "micro": 0}, "package": "fake"},
                    "capabilities": []}}
# How long a case may take at most: far above ferryctl's --timeout, far
# below the old behaviour (waiting as long as events came, or forever).
CASE_BOUND_S = 20
EVENT_FOR_S = 40	# the trickle lasts longer than the bound


class Fake:
    """One connection: greeting, negotiation, then handler(conn, msg)
    for every later message; every message ferryctl sent is kept."""

    def __init__(self, path, handler):
        self.path = path
        self.handler = handler
        self.sent = []
        self.stop = threading.Event()
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(path)
        self.srv.listen(1)
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def send(self, conn, obj):
        conn.sendall(json.dumps(obj).encode() + b"\r\n")

    def run(self):
        self.srv.settimeout(CASE_BOUND_S)
        try:
            conn, _ = self.srv.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(0.2)
            self.send(conn, GREETING)
            buf = b""
            while not self.stop.is_set():
                try:
                    data = conn.recv(65536)
                except socket.timeout:
                    self.handler(self, conn, None)
                    continue
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if not line.strip():
                        continue
                    msg = json.loads(line)
                    self.sent.append(msg)
                    try:
                        if msg.get("execute") == "qmp_capabilities":
                            self.send(conn, {"return": {}})
                        else:
                            self.handler(self, conn, msg)
                    except OSError:
                        return

    def close(self):
        self.stop.set()
        self.srv.close()
        self.thread.join(5)


failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL: " + what, flush=True)


def run_case(ctl, wd, name, handler, args, want_rc=None):
    path = os.path.join(wd, name + ".qmp")
    fake = Fake(path, handler)
    t0 = time.monotonic()
    try:
        p = subprocess.run([ctl, "--qmp", path, "--timeout", "2"] + args,
                           capture_output=True, text=True,
                           timeout=CASE_BOUND_S)
        rc, err = p.returncode, p.stderr
    except subprocess.TimeoutExpired:
        rc, err = None, "still running after %d s" % CASE_BOUND_S
    took = time.monotonic() - t0
    fake.close()
    print("%s: exit %s after %.1f s; stderr: %s" %
          (name, rc, took, err.strip().splitlines()[-1] if err.strip()
           else ""), flush=True)
    check(rc is not None, "%s: ferryctl did not end (%s)" % (name, err))
    check(rc is None or rc >= 0,
          "%s: ferryctl died of signal %d" % (name, -(rc or 0)))
    check(rc is None or "AddressSanitizer" not in err and
          "runtime error" not in err, "%s: sanitizer report" % name)
    if want_rc is not None:
        check(rc == want_rc, "%s: exit %s, want %s" % (name, rc, want_rc))
    return rc, err, fake.sent


def trickle(fake, conn, msg):
    """Never answers; an event every 0.2 s for EVENT_FOR_S."""
    if not hasattr(fake, "t0"):
        fake.t0 = time.monotonic()
    if time.monotonic() - fake.t0 < EVENT_FOR_S:
        fake.send(conn, {"event": "STOP", "data": {},
                         "timestamp": {"seconds": 0, "microseconds": 0}})


def shapeless_migration(fake, conn, msg):
    """migrate accepted; then events with a null name and a final
    MIGRATION event whose figures have no status."""
    if msg is None:
        return
    cmd = msg.get("execute")
    if cmd in ("migrate-set-parameters", "migrate-set-capabilities",
               "migrate"):
        fake.send(conn, {"return": {}})
    elif cmd == "query-migrate":
        fake.send(conn, {"event": None})
        fake.send(conn, {"event": "MIGRATION",
                         "data": {"status": None, "x-info": {"status": 7}}})
    else:
        fake.send(conn, {"error": {"class": "CommandNotFound",
                                   "desc": "fake"}})


def stuck_exec(fake, conn, msg):
    """cpr-exec accepted, then 'device' for ever: no exec, no end."""
    if msg is None:
        return
    if msg.get("execute") == "query-migrate":
        fake.send(conn, {"return": {"status": "device"}})
    else:
        fake.send(conn, {"return": {}})


def null_devices(fake, conn, msg):
    if msg is None:
        return
    fake.send(conn, {"return": [{"bus": 0, "devices": [
        {"slot": 1, "id": {"vendor": 1, "device": 2}, "qdev_id": None,
         "vfio-user": {"socket": None, "backend": None}},
        {"slot": None, "id": None, "qdev_id": 5}]}]})


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    ctl = sys.argv[1]
    with tempfile.TemporaryDirectory(prefix="ferryctl-hostile-") as wd:
        rc, err, _ = run_case(ctl, wd, "trickle", trickle, ["status"])
        check("timed out" in err, "trickle: no timeout message: %r" % err)
        check(rc not in (None, 0), "trickle: exit %s" % rc)

        rc, err, sent = run_case(ctl, wd, "shapeless", shapeless_migration,
                                 ["migrate", "tcp:127.0.0.1:1"])
        check(rc not in (None, 0), "shapeless: a migration without a "
              "status passed as completed (exit %s)" % rc)
        params = [m.get("arguments", {}) for m in sent
                  if m.get("execute") == "migrate-set-parameters"]
        check(params and params[0].get("mode") == "normal",
              "migrate did not set mode normal first: %r" % params)

        rc, err, _ = run_case(ctl, wd, "null-devices", null_devices,
                              ["devices"], want_rc=0)

        rc, err, _ = run_case(ctl, wd, "stuck-exec", stuck_exec,
                              ["cpr-exec", "--file", os.path.join(wd, "st"),
                               "--", "/bin/true"])
        check(rc not in (None, 0) and "without exec" in err,
              "stuck-exec: exit %s: %r" % (rc, err))
    if failures:
        print("%d failure(s)" % len(failures))
        return 1
    print("ferryctl held against every hostile VMM")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
