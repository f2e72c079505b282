#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Multifd live migration of a VM with vfio-user devices (real KVM).

usage: test_migration_multifd.py CASE
CASE: pingpong4 | channel-cut | reorder-negative

pingpong4: a dmastress guest driving 4 ferry-dma devices of 32 MiB device
memory each is migrated HOPS times between two sets of device servers
with 4 multifd channels and switchover-ack; the first hop is driven by
ferryctl (--channels 4 on both ends, the destination started with
--incoming defer), the others by QMP, alternating unix and TCP loopback.
Every hop must complete with every channel carrying data and the devices'
switchover state arriving as packets; the guest's counters keep rising
and it ends PASS (its own check of every DMA result and device memory).

channel-cut: the migration goes through a TCP proxy that closes multifd
channel 2 after 8 MiB: the source must keep running its guest (devices
RUNNING, the guest progressing), the destination must never run it, and
a second migration, direct, must complete; the guest ends PASS.

reorder-negative: with devices that offer no pre-copy (all their state
at the switchover, in many packets), the source sends each device's state packets last to
first (x-multifd-devstate-reverse) and the destination hands them to the
device in arrival order (x-multifd-no-reorder): the device must refuse
the disordered stream and the guest must stay, running, on the source.
This is the negative control of the reassembly the other cases rely on.

Exit 0 pass, 1 fail, 77 skip.
"""
import os
import socket
import subprocess
import sys
import threading
import time

import miglib
from miglib import check

HOPS = 5
CHANNELS = 4
NDEV = 4
DEVMEM = "32M"
GUEST_SECONDS = 70
GUEST_TIMEOUT = 20
PASS_WAIT_S = GUEST_SECONDS + 90
CUT_CONN = 3                    # accept order: 0 main, k multifd k-1
CUT_AFTER = 8 << 20
FERRYCTL = os.environ.get("FERRYCTL", "")


def multifd_caps(extra=None):
    caps = {"switchover-ack": True, "multifd": True}
    caps.update(extra or {})
    return caps


PARAMS = {"multifd-channels": CHANNELS}


def start(c, dev_args=()):
    sides = [[("dma%d" % i, c.device("%s%d" % (side, i),
                                     ["--device-memory", DEVMEM] +
                                     list(dev_args)))
              for i in range(NDEV)] for side in ("A", "B")]
    src = c.source(miglib.DMASTRESS, "seconds=%d devices=%d timeout=%d" %
                   (GUEST_SECONDS, NDEV, GUEST_TIMEOUT), sides[0],
                   memory="256M")
    src.wait_heartbeats(1)
    return src, sides


def check_multifd_info(src_info, dst, what):
    """Every channel carried data on both ends, the same amounts, and
    the devices' state came as packets, as many as were sent."""
    dinfo = dst.query_migrate()
    sch = src_info.get("x-multifd-channel-bytes", [])
    dch = dinfo.get("x-multifd-channel-bytes", [])
    check(len(sch) == CHANNELS and all(b > 0 for b in sch),
          "%s: source channel bytes %r" % (what, sch))
    check(sch == dch, "%s: channel bytes sent %r, received %r" %
          (what, sch, dch))
    sds = src_info.get("x-device-state", {})
    dds = dinfo.get("x-device-state", {})
    check(sds.get("packets", 0) >= NDEV and
          sds.get("packets") == dds.get("packets"),
          "%s: device state packets sent %r, received %r" %
          (what, sds, dds))
    return dinfo


def ferryctl(vmm, *args):
    r = subprocess.run([FERRYCTL, "--qmp", vmm.qmp_path] + list(args),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=miglib.MIG_WAIT_S + 30)
    return r.returncode, r.stdout


def hop_ferryctl(c, src, devices):
    """Both ends set up by ferryctl: the destination waits with
    --incoming defer until ferryctl gives it the URI and the channels."""
    dst = c.dest(devices, memory="256M", incoming="defer")
    uri = "unix:" + c.join(dst.name + ".mig")
    rc, out = ferryctl(dst, "--channels", str(CHANNELS), "migrate-incoming",
                       uri)
    check(rc == 0, "ferryctl migrate-incoming: exit %d: %s" % (rc, out))
    src.cmd("migrate-set-capabilities", {"capabilities": [
        {"capability": "switchover-ack", "state": True}]})
    rc, out = ferryctl(src, "--channels", str(CHANNELS), "migrate", uri)
    check(rc == 0, "ferryctl migrate: exit %d: %s" % (rc, out))
    check("completed" in out, "ferryctl migrate said: %s" % out)
    check("source VMM quit" in out, "ferryctl did not quit the source in "
          "postmigrate: %s" % out)
    info = src.wait_migration()
    check(src.wait() == 0, "%s exited non-zero after migrating" % src.name)
    check(dst.status() == "running", "%s not running" % dst.name)
    return dst, info


def hop_qmp(c, src, devices, tcp):
    incoming = ("tcp:127.0.0.1:%d" % c.free_tcp_port()) if tcp else None
    dst = c.dest(devices, memory="256M", incoming=incoming)
    if tcp:
        wait_port(dst)
    miglib.set_migration(dst, multifd_caps(), PARAMS)
    return miglib.hop_to(src, dst, caps=multifd_caps(), params=PARAMS)


def wait_port(dst):
    port = int(dst.incoming.rsplit(":", 1)[1])

    def listening():
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0 or \
                not dst.alive()
    # A probe that connects and closes is refused by the door and
    # logged; harmless, and the door stays open.
    miglib.wait_until(listening, "%s listening" % dst.name)


def case_pingpong4(c):
    src, sides = start(c)
    chain = [src]
    last = src.heartbeats()[-1]
    for h in range(HOPS):
        t0 = time.monotonic()
        devs = sides[(h + 1) % 2]
        if h == 0:
            cur, info = hop_ferryctl(c, chain[-1], devs)
        else:
            cur, info = hop_qmp(c, chain[-1], devs, tcp=h % 2 == 1)
        dinfo = check_multifd_info(info, cur, "hop %d" % (h + 1))
        beat = cur.wait_heartbeats(1)
        check(beat["jobs"] > last["jobs"],
              "hop %d: jobs did not advance (%d, then %d)" %
              (h + 1, last["jobs"], beat["jobs"]))
        print("hop %d -> %s: %.2f s, setup %s ms, downtime %s ms, channels "
              "%r, device state %r, jobs=%d t=%d" %
              (h + 1, cur.name, time.monotonic() - t0,
               info.get("setup-time"), info.get("downtime"),
               info.get("x-multifd-channel-bytes"),
               dinfo.get("x-device-state"), beat["jobs"], beat["t"]))
        chain.append(cur)
        last = beat
    v = miglib.expect_pass(chain[-1], PASS_WAIT_S)
    check(v[1].get("devices") == NDEV, "verdict: %r" % v[2])
    print("ok: %s" % v[2])


class CutProxy:
    """TCP loopback proxy to target_port that closes its n-th
    connection (0 = the first) after `after` bytes source to
    destination. Bounded: every thread ends when the proxy closes."""

    def __init__(self, target_port, cut_conn, after):
        self.target = target_port
        self.cut_conn = cut_conn
        self.after = after
        self.cut = False
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.lsock.settimeout(0.2)
        self.port = self.lsock.getsockname()[1]
        self.stop = threading.Event()
        self.socks = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _pump(self, a, b, limit):
        sent = 0
        try:
            while not self.stop.is_set():
                data = a.recv(65536)
                if not data:
                    break
                if limit is not None and sent + len(data) > limit:
                    b.sendall(data[:limit - sent])
                    self.cut = True
                    break
                b.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _accept(self):
        n = 0
        while not self.stop.is_set():
            try:
                a, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            b = socket.create_connection(("127.0.0.1", self.target))
            self.socks += [a, b]
            limit = self.after if n == self.cut_conn else None
            for x, y, lim in ((a, b, limit), (b, a, None)):
                t = threading.Thread(target=self._pump, args=(x, y, lim),
                                     daemon=True)
                t.start()
                self.threads.append(t)
            n += 1

    def close(self):
        self.stop.set()
        for s in self.socks + [self.lsock]:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self.threads:
            t.join(timeout=5)
        for s in self.socks + [self.lsock]:
            s.close()


def failed_hop(c, src, devices, uri_for, caps_src, caps_dst,
               params=PARAMS):
    """A migration that must fail: the source keeps its guest running,
    the destination never runs it."""
    port = c.free_tcp_port()
    dst = c.dest(devices, memory="256M",
                 incoming="tcp:127.0.0.1:%d" % port, may_exit=True)
    wait_port(dst)
    miglib.set_migration(dst, caps_dst, PARAMS)
    miglib.set_migration(src, caps_src, params)
    src.cmd("migrate", {"uri": uri_for(port)})
    info = src.wait_migration()
    check(info["status"] == "failed", "migration %s: %r" %
          (info["status"], info))
    err = miglib.expect_no_guest(dst)
    miglib.expect_source_keeps_guest(src, info, "jobs")
    return info, err


def case_channel_cut(c):
    src, sides = start(c)
    proxies = []

    def via_proxy(port):
        p = CutProxy(port, CUT_CONN, CUT_AFTER)
        proxies.append(p)
        return "tcp:127.0.0.1:%d" % p.port
    try:
        info, err = failed_hop(c, src, sides[1], via_proxy, multifd_caps(),
                               multifd_caps())
        check(proxies[0].cut, "the proxy never cut channel %d" %
              (CUT_CONN - 1))
    finally:
        for p in proxies:
            p.close()
    print("failed as it must: source: %s" % info.get("error-desc"))
    print("destination: %s" % err.strip().splitlines()[-1])
    dst, info = hop_qmp(c, src, sides[1], tcp=True)
    check_multifd_info(info, dst, "the retry")
    v = miglib.expect_pass(dst, PASS_WAIT_S)
    print("ok: retried and completed; %s" % v[2])


def case_reorder_negative(c):
    # Without pre-copy, all 32 MiB of each device's state go at the
    # switchover, in many packets: reversed, they are truly out of order.
    src, sides = start(c, ["--no-precopy"])
    info, err = failed_hop(
        c, src, sides[1], lambda port: "tcp:127.0.0.1:%d" % port,
        multifd_caps({"x-multifd-devstate-reverse": True}),
        multifd_caps({"x-multifd-no-reorder": True}),
        # 128 MiB of device state at the switchover: allow for it.
        dict(PARAMS, **{"downtime-limit": 3000}))
    check("rejected its migration data" in err,
          "the destination failed, but not because a device refused "
          "the disordered state:\n%s" % err)
    print("ok: caught: %s" % info.get("error-desc"))


CASES = {
    "pingpong4": case_pingpong4,
    "channel-cut": case_channel_cut,
    "reorder-negative": case_reorder_negative,
}


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in CASES:
        print(__doc__, file=sys.stderr)
        return 2
    miglib.require(miglib.DMASTRESS, FERRYCTL)
    return miglib.run("multifd-" + sys.argv[1], CASES[sys.argv[1]])


if __name__ == "__main__":
    sys.exit(main())
