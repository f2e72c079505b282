#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Partitions at the hand-over: the guest runs on exactly one side
(real KVM, ferry-dev, dmastress).

usage: test_migration_partition.py CASE
CASE: rp-stall | commit-cut | resumed-cut

The source migrates through a TCP proxy that understands the stream's
framing and silently drops one direction at one point of the hand-over
(the connection stays open: a stall, not a close):

rp-stall     nothing comes back from the destination once END went
             through. Before the three-step hand-over the destination ran
             the guest at END and the source, hearing nothing, resumed it
             too. Now the destination waits for COMMIT and never runs;
             the source gives up at its switchover budget and keeps the
             guest: it runs on the source only.
commit-cut   the source's COMMIT and everything after it are dropped.
             Neither side may run the guest on its own: the destination
             exits without running it, the source keeps it paused with
             its devices stopped and reports an unknown outcome
             ("postmigrate", cont refused) until x-migrate-outcome says
             "here"; then it runs on the source only.
resumed-cut  nothing comes back once COMMIT went through: the
             destination runs the guest, its RESUMED is lost. The source
             must not resume on silence: unknown outcome, paused, devices
             STOP; told "destination", it exits 0. The guest runs on the
             destination only.

"Runs" is read from each side's serial console (heartbeats that keep
coming) and exit status. Paths from the environment. Exit 0/1/77.
"""
import select
import socket
import struct
import sys
import threading
import time

import miglib
from miglib import TestFailure, check

HDR = 16                    # stream header
SEC = 24                    # section header
SEC_COMMIT = 13
SEC_END = 0xffff
IO_TIMEOUT_MS = 3000        # x-io-timeout on both sides: short waits


class Proxy:
    """TCP proxy from a listening port to the destination's. It follows
    the forward stream's sections; at `cut` it stops forwarding one
    direction, reading and dropping what comes, never closing."""

    def __init__(self, dst_port, cut):
        self.dst_port = dst_port
        self.cut = cut
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(1)
        self.port = self.lsock.getsockname()[1]
        self.stop = False
        self.fwd_cut = False
        self.rp_cut = False
        self.seen = []
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def sections(self, buf, state):
        """Walk forward bytes; note each section type as it starts."""
        pos = 0
        while pos < len(buf):
            if state["skip"]:
                n = min(state["skip"], len(buf) - pos)
                state["skip"] -= n
                pos += n
                continue
            need = SEC - len(state["hdr"])
            state["hdr"] += buf[pos:pos + need]
            pos += min(need, len(buf) - pos)
            if len(state["hdr"]) < SEC:
                break
            typ, _flags, _id, length = struct.unpack("<HHIQ",
                                                     state["hdr"][:16])
            state["hdr"] = b""
            state["skip"] = length
            self.on_section(typ, pos - SEC)
            if self.fwd_cut:
                return pos - SEC    # forward only what came before
        return len(buf)

    def on_section(self, typ, _at):
        self.seen.append(typ)
        if typ == SEC_COMMIT and self.cut == "commit-cut":
            self.fwd_cut = True

    def run(self):
        try:
            a, _ = self.lsock.accept()
        except OSError:
            return
        b = socket.create_connection(("127.0.0.1", self.dst_port))
        state = {"hdr": b"", "skip": HDR}
        while not self.stop:
            r, _, _ = select.select([a, b], [], [], 0.1)
            for s in r:
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    # A real close passes through (the test's cuts are
                    # stalls, not closes).
                    a.close()
                    b.close()
                    return
                if s is a:
                    if self.fwd_cut:
                        continue
                    n = self.sections(data, state)
                    b.sendall(data[:n])
                    if self.cut == "rp-stall" and SEC_END in self.seen:
                        self.rp_cut = True
                    if self.cut == "resumed-cut" and SEC_COMMIT in self.seen:
                        self.rp_cut = True
                else:
                    if not self.rp_cut:
                        a.sendall(data)

    def close(self):
        self.stop = True
        self.lsock.close()


def runs(vmm, key="jobs"):
    """Does this side's guest make progress right now?"""
    if not vmm.alive():
        return False
    before = vmm.heartbeats()
    try:
        miglib.wait_until(lambda: len(vmm.heartbeats()) >= len(before) + 2,
                          "heartbeats", timeout=5)
    except TestFailure:
        return False
    after = vmm.heartbeats()
    return not before or after[-1][key] > before[-1][key]


def body(c, case):
    side_a = [("dma0", c.device("A0"))]
    side_b = [("dma0", c.device("B0"))]
    src = c.source(miglib.DMASTRESS, "seconds=600 devices=1 timeout=20",
                   side_a)
    src.wait_heartbeats(1)
    port = c.free_tcp_port()
    dst = c.dest(side_b, incoming="tcp:127.0.0.1:%d" % port)
    proxy = Proxy(port, case)
    try:
        params = {"x-io-timeout": IO_TIMEOUT_MS}
        miglib.set_migration(src, params=params)
        dst.cmd("migrate-set-parameters", params)
        src.cmd("migrate", {"uri": "tcp:127.0.0.1:%d" % proxy.port})
        info = src.wait_migration()
        print("source: %s: %s" % (info["status"], info.get("error-desc")))
        print("sections seen: %s" % ", ".join(
            "%#x" % t for t in sorted(set(proxy.seen))))
        check(info["status"] == "failed", "source ended %r: %r" %
              (info["status"], info))
        if case == "rp-stall":
            # Whichever gives up first -- the source at its switchover
            # budget, or the destination waiting for COMMIT (then the
            # close reaches the source) -- the guest stays here.
            check(info.get("error-desc"), "failed without a reason: %r" %
                  info)
            check(not info.get("x-outcome-unknown"), "outcome unknown "
                  "although nothing was committed: %r" % info)
            miglib.expect_no_guest(dst)
            miglib.expect_source_keeps_guest(src, src.query_migrate(),
                                             "jobs")
            print("guest runs on the source only")
        elif case == "commit-cut":
            check(info.get("x-outcome-unknown") is True,
                  "outcome not unknown: %r" % info)
            check(src.status() == "postmigrate", "source status %r" %
                  src.status())
            for dev_id, st in src.devices_state(info).items():
                check(st == "STOP", "device %s %s with the outcome "
                      "unknown" % (dev_id, st))
            r = src.cmd_raw("cont")
            check("error" in r and "x-migrate-outcome" in
                  r["error"]["desc"], "cont with the outcome unknown: %r" % r)
            check(not runs(src), "source guest runs with the outcome "
                  "unknown")
            miglib.expect_no_guest(dst)
            src.cmd("x-migrate-outcome", {"guest-runs": "here"})
            miglib.expect_source_keeps_guest(src, src.query_migrate(),
                                             "jobs")
            print("neither ran it alone; told 'here', the source runs it")
        else:
            check(info.get("x-outcome-unknown") is True,
                  "outcome not unknown: %r" % info)
            for dev_id, st in src.devices_state(info).items():
                check(st == "STOP", "device %s %s with the outcome "
                      "unknown" % (dev_id, st))
            check(runs(dst), "the destination does not run the guest")
            check(not runs(src), "the source resumed on silence: the "
                  "guest runs twice")
            src.cmd("x-migrate-outcome", {"guest-runs": "destination"})
            miglib.quit_postmigrate(src, "failed")
            check(runs(dst), "destination stopped running the guest")
            print("the destination runs it; told so, the source went to "
                  "postmigrate and exited 0 on quit")
    finally:
        proxy.close()


def main():
    cases = ("rp-stall", "commit-cut", "resumed-cut")
    if len(sys.argv) != 2 or sys.argv[1] not in cases:
        print(__doc__, file=sys.stderr)
        return 2
    miglib.require(miglib.DMASTRESS)
    miglib.run("partition-" + sys.argv[1], lambda c: body(c, sys.argv[1]))


if __name__ == "__main__":
    sys.exit(main())
