#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Peers that are not what they should be, and a VMM that must not let
them wedge it (real KVM, ferry-dev, dmastress).

usage: test_migration_hostile.py CASE
CASE:
  junk-slowloris   before the real source, a peer that sends junk and one
                   that trickles a valid-looking header a byte a second
                   connect to the destination: both are refused (logged),
                   the destination keeps listening, and the real
                   migration completes. (Before: the first connection was
                   the only one; junk made the destination exit.)
  dest-stall       a "source" sends a valid header and then nothing: with
                   x-io-timeout 2000 the destination gives up within
                   seconds (not 60 s), and while it waits its
                   query-migrate shows x-io-idle-ms growing.
  switchover-stall the forward path stalls once the switchover began:
                   query-status says finish-migrate (not running) while
                   the guest is stopped, the source gives up at its
                   switchover budget (5 s) instead of the 10 s I/O
                   timeout, and the guest runs on; the guest's own
                   longest stall is bounded by that budget.
  qmp-clients      70 idle QMP clients (more than the 64 slots) and one
                   that never reads: a new client still gets in and
                   cancels a running migration.
  permissions      under umask 000 every socket (QMP, unix: incoming,
                   ferry-dev) is created 0600; an unprivileged uid cannot
                   connect, and even through a socket chmod'ed 0666 it is
                   refused by SO_PEERCRED (logged).
  bad-uri          migrate to port 99999 or an impossible host is refused
                   at submission, with a message, not accepted as {}.

Paths from the environment. Exit 0/1/77.
"""
import os
import select
import socket
import stat
import struct
import sys
import threading
import time

import miglib
import vmlib
from miglib import TestFailure, check

NOBODY = 65534
HDR = 16
SEC = 24
SEC_VCPU = 6


def crc32c(data):
    """CRC32C (Castagnoli), bitwise: fine for 12 bytes."""
    crc = 0xffffffff
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82f63b78 if crc & 1 else 0)
    return crc ^ 0xffffffff


def stream_header(minor=1):
    h = b"FERRYMIG" + struct.pack("<HH", 1, minor)
    return h + struct.pack("<I", crc32c(h))


def tcp_dest(c, devices):
    port = c.free_tcp_port()
    dst = c.dest(devices, incoming="tcp:127.0.0.1:%d" % port)
    miglib.wait_until(lambda: "waiting for the source" in dst.log(),
                      "destination listening")
    return dst, port


def source_with_device(c):
    side_a = [("dma0", c.device("A0"))]
    src = c.source(miglib.DMASTRESS, "seconds=600 devices=1 timeout=20",
                   side_a)
    src.wait_heartbeats(1)
    return src


def case_junk_slowloris(c):
    src = source_with_device(c)
    dst, port = tcp_dest(c, [("dma0", c.device("B0"))])
    junk = socket.create_connection(("127.0.0.1", port))
    junk.sendall(b"GET / HTTP/1.0\r\n\r\n")
    slow = socket.create_connection(("127.0.0.1", port))
    stop = threading.Event()

    def trickle():
        for b in stream_header():
            if stop.wait(1.0):
                return
            try:
                slow.send(bytes([b]))
            except OSError:
                return
    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    miglib.wait_until(lambda: "not a ferry migration stream" in dst.log(),
                      "junk refused")
    check(dst.alive(), "destination exited after junk: %s" % dst.log())
    src.cmd("migrate", {"uri": "tcp:127.0.0.1:%d" % port})
    info = src.wait_migration()
    stop.set()
    check(info["status"] == "completed", "migration after hostile peers: "
          "%r" % info)
    miglib.quit_postmigrate(src)
    log = dst.log()
    print("\n".join(l for l in log.splitlines() if "refused" in l))
    check("another source came first" in log or
          "no valid hello" in log, "slowloris not dropped:\n%s" % log)
    check(dst.alive() and dst.status() == "running", "destination does "
          "not run the guest")
    junk.close()
    slow.close()


def case_dest_stall(c):
    dst, port = tcp_dest(c, [])
    dst.cmd("migrate-set-parameters", {"x-io-timeout": 2000})
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(stream_header())
    idle = []
    t0 = time.monotonic()
    while dst.alive() and time.monotonic() - t0 < 10:
        try:
            q = dst.query_migrate()
        except TestFailure:
            break
        if "x-io-idle-ms" in q:
            idle.append(q["x-io-idle-ms"])
        time.sleep(0.2)
    rc = dst.wait(30)
    took = time.monotonic() - t0
    err = dst.log()
    print("destination gave up after %.1f s; x-io-idle-ms seen: %s" %
          (took, idle[:12]))
    check(rc != 0 and miglib.NO_GUEST_RAN in err,
          "destination: exit %s\n%s" % (rc, err))
    check("timed out" in err, "no timeout in the reason:\n%s" % err)
    check(took < 10, "destination waited %.1f s for a stalled source" % took)
    check(len(idle) >= 2 and idle[-1] > idle[0] and idle[-1] >= 1000,
          "x-io-idle-ms did not show the wait: %r" % idle)
    s.close()


class ForwardStall:
    """TCP proxy that stops forwarding (and reading) the source's bytes
    once a VCPU section went by: the switchover began."""

    def __init__(self, dst_port):
        self.dst_port = dst_port
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(1)
        self.port = self.lsock.getsockname()[1]
        self.stalled = threading.Event()
        self.stop = False
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        a, _ = self.lsock.accept()
        b = socket.create_connection(("127.0.0.1", self.dst_port))
        hdr, skip = b"", HDR
        while not self.stop:
            rl = [b] if self.stalled.is_set() else [a, b]
            r, _, _ = select.select(rl, [], [], 0.1)
            for s in r:
                data = s.recv(65536)
                if not data:
                    a.close()
                    b.close()
                    return
                if s is b:
                    a.sendall(data)
                    continue
                pos = 0
                while pos < len(data) and not self.stalled.is_set():
                    if skip:
                        n = min(skip, len(data) - pos)
                        skip -= n
                        pos += n
                        continue
                    need = SEC - len(hdr)
                    hdr += data[pos:pos + need]
                    pos += min(need, len(data) - pos)
                    if len(hdr) < SEC:
                        break
                    typ = struct.unpack("<H", hdr[:2])[0]
                    skip = struct.unpack("<Q", hdr[8:16])[0]
                    hdr = b""
                    if typ == SEC_VCPU:
                        self.stalled.set()
                        pos -= SEC
                b.sendall(data[:pos])

    def close(self):
        self.stop = True
        self.lsock.close()


def case_switchover_stall(c):
    src = source_with_device(c)
    dst, port = tcp_dest(c, [("dma0", c.device("B0"))])
    proxy = ForwardStall(port)
    try:
        src.cmd("migrate", {"uri": "tcp:127.0.0.1:%d" % proxy.port})
        miglib.wait_until(proxy.stalled.is_set, "switchover", timeout=60)
        st = src.cmd("query-status")
        print("source during the stall: %r" % st)
        check(st["status"] == "finish-migrate" and not st["running"],
              "query-status during the switchover: %r" % st)
        t0 = time.monotonic()
        info = src.wait_migration()
        waited = time.monotonic() - t0
        print("source: %s after %.1f s: %s" % (info["status"], waited,
                                               info.get("error-desc")))
        check(info["status"] == "failed", "status %r" % info)
        check("switchover took more than 5000 ms" in
              info.get("error-desc", ""), "reason: %r" % info)
        check(waited < 8, "the guest stayed stopped %.1f s" % waited)
        miglib.expect_source_keeps_guest(src, src.query_migrate(), "jobs")
        stall = src.heartbeats()[-1]["max_stall_us"]
        print("guest's longest stall: %.2f s" % (stall / 1e6))
        check(stall < 7e6, "guest saw a %.1f s stall" % (stall / 1e6))
    finally:
        proxy.close()


def case_qmp_clients(c):
    src = c.source(miglib.MEMSTRESS, "seconds=600", memory="512M")
    src.wait_heartbeats(1)
    idle = []
    for _ in range(70):
        s = socket.socket(socket.AF_UNIX)
        s.connect(src.qmp_path)
        idle.append(s)
    # One that negotiates and then never reads while events pile up.
    deaf = socket.socket(socket.AF_UNIX)
    deaf.connect(src.qmp_path)
    deaf.sendall(b'{"execute":"qmp_capabilities"}\n')
    time.sleep(0.5)
    mgmt = vmlib.Qmp(src.qmp_path)
    mgmt.negotiate()
    dst = c.dest(memory="512M")
    r = mgmt.cmd("migrate-set-parameters", {"max-bandwidth": 20000000,
                                            "downtime-limit": 0})
    check("return" in r, "set params: %r" % r)
    r = mgmt.cmd("migrate", {"uri": dst.incoming})
    check("return" in r, "migrate: %r" % r)
    miglib.wait_until(lambda: mgmt.cmd("query-migrate")["return"].get(
        "status") == "active", "active migration")
    later = vmlib.Qmp(src.qmp_path)     # still one more gets in
    later.negotiate()
    r = later.cmd("migrate_cancel")
    check("return" in r, "migrate_cancel from a new client: %r" % r)
    miglib.wait_until(lambda: later.cmd("query-migrate")["return"].get(
        "status") == "cancelled", "cancelled")
    print("71 idle or deaf clients; a new client cancelled the migration")
    log = src.log()
    check("dropping the one silent" in log, "no eviction logged")
    for s in idle + [deaf]:
        s.close()
    mgmt.close()
    later.close()
    dst.kill()


def connect_as(uid, path):
    """errno of connecting to path as uid (0: connected), and whether the
    server then closed on us without a word."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        res = b"?"
        try:
            os.setgid(uid)
            os.setuid(uid)
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(path)
                s.settimeout(5)
                try:
                    data = s.recv(4096)
                    res = b"0 " + (b"closed" if not data else b"greeted")
                except OSError:
                    res = b"0 greeted"      # e.g. vfio-user: waits for us
            except OSError as e:
                res = b"%d -" % e.errno
        finally:
            os.write(w, res)
            os._exit(0)
    os.close(w)
    out = os.read(r, 64).decode()
    os.close(r)
    os.waitpid(pid, 0)
    code, what = out.split()
    return int(code), what


def case_permissions(c):
    if os.geteuid() != 0:
        miglib.skip("needs root to act as an unprivileged uid")
    # Others may traverse the test's directory: only the sockets' own
    # modes and the peer check may keep them out.
    os.chmod(c.path, 0o711)
    old = os.umask(0)
    try:
        dev = c.device("A0")
        vmm = c.dest([("dma0", dev)])
        # ferry-dev serves one client at a time: a free one, so that a
        # stranger's connection is accepted (and checked) at once.
        free = c.device("A1")
    finally:
        os.umask(old)
    paths = {"ferry-dev": free.sock, "QMP": vmm.qmp_path,
             "unix: incoming": vmm.incoming[5:], "attached ferry-dev":
             dev.sock}
    for what, p in paths.items():
        mode = stat.S_IMODE(os.stat(p).st_mode)
        print("%s socket %s: mode %o" % (what, p, mode))
        check(mode == 0o600, "%s socket mode %o under umask 000" %
              (what, mode))
        code, _ = connect_as(NOBODY, p)
        check(code == 13, "uid %d connected to the %s socket (errno %d)" %
              (NOBODY, what, code))
    # Loosen the files: the peer check still says no.
    for what in ("QMP", "ferry-dev"):
        os.chmod(paths[what], 0o666)
        code, how = connect_as(NOBODY, paths[what])
        check(code == 0 and how == "closed", "uid %d through a 0666 %s "
              "socket: %s %s" % (NOBODY, what, code, how))
    miglib.wait_until(lambda: "refused a client of uid %d" % NOBODY in
                      vmm.log(), "QMP refusal logged")
    miglib.wait_until(lambda: "refused a client of uid %d" % NOBODY in
                      free.log(), "ferry-dev refusal logged")
    # The owner still gets in.
    q = vmlib.Qmp(vmm.qmp_path)
    q.negotiate()
    check("return" in q.cmd("query-status"), "owner refused")
    q.close()
    print("0600 under umask 000; uid %d refused by mode and by "
          "SO_PEERCRED" % NOBODY)


def case_bad_uri(c):
    src = c.source(miglib.MEMSTRESS, "seconds=600")
    src.wait_heartbeats(1)
    for uri, words in (("tcp:127.0.0.1:99999", "not 0..65535"),
                       ("tcp:no such host:4444", "not an address"),
                       ("tcp:127.0.0.1:0", "port 0")):
        r = src.cmd_raw("migrate", {"uri": uri})
        print("%s -> %r" % (uri, r.get("error", r)))
        check("error" in r and words in r["error"]["desc"],
              "migrate %s: %r" % (uri, r))
    check(src.query_migrate() == {} or
          src.query_migrate().get("status") in (None, "none"),
          "a refused migrate left a status: %r" % src.query_migrate())


CASES = {
    "junk-slowloris": case_junk_slowloris,
    "dest-stall": case_dest_stall,
    "switchover-stall": case_switchover_stall,
    "qmp-clients": case_qmp_clients,
    "permissions": case_permissions,
    "bad-uri": case_bad_uri,
}


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in CASES:
        print(__doc__, file=sys.stderr)
        return 2
    miglib.require(miglib.DMASTRESS, miglib.MEMSTRESS)
    miglib.run("hostile-" + sys.argv[1], CASES[sys.argv[1]])


if __name__ == "__main__":
    sys.exit(main())
