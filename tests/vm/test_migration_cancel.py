#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Aborted live migrations roll back, and a retry then succeeds
(real KVM, ferry-dev, dmastress).

usage: test_migration_cancel.py CASE
CASE: setup | active | device | dest-killed

  setup       migrate_cancel sent together with migrate: lands in setup
  active      cancel during a long pre-copy iteration (max-bandwidth
              20 MB/s, downtime-limit 0 so it never converges, 512 MiB RAM)
  device      cancel during switchover (status "device"): 256 MiB of
              device memory to stop-copy, downtime-limit huge so the
              switchover starts after the first iteration
  dest-killed SIGKILL of the destination during iteration
  noconverge  a guest that dirties faster than max-bandwidth (5 MB/s)
              allows against a 10 ms downtime-limit: the migration keeps
              iterating, query-migrate says why (x-convergence), and it
              ends only when cancelled

Each: the source ends cancelled (dest-killed: failed, with error-desc),
its devices are RUNNING again, the guest keeps making progress on the
source, the destination exits non-zero without running guest code
(nothing on its console), and a retry to a fresh destination completes
with the guest ending PASS there.

Paths from the environment (tests/vm/meson.build). Exit 0/1/77.
"""
import json
import signal
import sys

import miglib
from miglib import check

GUEST_SECONDS = 25
GUEST_TIMEOUT = 20
PASS_WAIT_S = GUEST_SECONDS + 60
SLOW_BANDWIDTH = 20 * 1000 * 1000       # bytes/s: a pre-copy that lasts
MID_ITERATION_BYTES = 4 << 20           # this much sent: inside pass 1
HUGE_DOWNTIME_MS = 2000000              # QEMU's maximum: switch at once
DEFAULTS = {"downtime-limit": 300, "max-bandwidth": 0}
SETUP_ATTEMPTS = 3

CASES = {
    # case: (device server args, source memory)
    "setup": ([], "128M"),
    "active": ([], "512M"),
    "device": (["--device-memory", "256M"], "128M"),
    "dest-killed": ([], "512M"),
    "noconverge": ([], "128M"),
}
NOCONVERGE_BANDWIDTH = 5 * 1000 * 1000
NOCONVERGE_LIMIT_MS = 10
NOCONVERGE_ITERATIONS = 3


def wait_status(src, want):
    return src.wait_migration(want=(want,) + miglib.FINAL)


def cancel_in_setup(c, src, side_b, memory, cpus=1):
    """migrate and migrate_cancel in one write: QMP runs them back to
    back, so the cancel arrives while the migration thread is still
    connecting and sending its configuration. The MIGRATION events
    prove where it landed; a cancel that came too late is retried."""
    for attempt in range(SETUP_ATTEMPTS):
        dst = c.dest(side_b, memory, cpus)
        q = src.qmp()
        q.send_raw(json.dumps({"execute": "migrate",
                               "arguments": {"uri": dst.incoming}}) +
                   "\n" + json.dumps({"execute": "migrate_cancel"}) + "\n")
        for what in ("migrate", "migrate_cancel"):
            r = q.reply()
            check(r == {"return": {}}, "%s: %r" % (what, r))
        info = src.wait_migration()
        st = src.wait_mig_event(info["status"])
        print("attempt %d: MIGRATION events %s" % (attempt + 1, st))
        check(info["status"] == "cancelled",
              "migration ended %r, not cancelled: %r" %
              (info["status"], info))
        check(st[-1] == "cancelled" and "completed" not in st,
              "MIGRATION events %r" % st)
        if st[:2] == ["setup", "cancelling"]:
            # Once cancelling, only cancelled may follow: a client that
            # watches events must not see the migration come back.
            check(st[2:] == ["cancelled"],
                  "status left 'cancelling' for something other than "
                  "'cancelled': MIGRATION events %r" % st)
            return dst, info
        # Too late (active already): a valid cancel, but not this case.
        miglib.expect_no_guest(dst)
        del src.qmp().events[:]
    raise miglib.TestFailure("migrate_cancel never landed in setup in %d "
                             "attempts" % SETUP_ATTEMPTS)


def expect_dest_not_run(dst):
    """The destination of a cancelled migration never ran the guest:
    it exited with the engine's message -- or, when the cancel closed
    the connection before the source's hello, it refused that peer and
    still waits for a real one (a stray connection must not end an
    incoming VM): then quit it. Returns what it said last."""
    if dst.alive() and "closed before its hello" in dst.log():
        check(dst.status() == "inmigrate", "%s: status %r" %
              (dst.name, dst.status()))
        check(dst.serial_text() == "", "%s ran guest code" % dst.name)
        dst.cmd("quit")
        check(dst.wait() == 0, "%s: exit on quit" % dst.name)
        return dst.log()
    return miglib.expect_no_guest(dst)


def cancel_when(c, src, side_b, memory, status, caps, params, min_bytes=0,
                cpus=1):
    dst = c.dest(side_b, memory, cpus)
    miglib.set_migration(src, caps, params)
    src.cmd("migrate", {"uri": dst.incoming})
    info = wait_status(src, status)
    check(info["status"] == status,
          "migration never reached %r: %r" % (status, info))
    if min_bytes:
        info = miglib.wait_until(
            lambda: (lambda i: i if i["status"] != status or
                     i["ram"]["transferred"] >= min_bytes else None)(
                src.query_migrate()),
            "%d bytes sent" % min_bytes)
        check(info["status"] == status, "left %r early: %r" %
              (status, info))
    src.cmd("migrate_cancel")
    info = src.wait_migration()
    st = src.wait_mig_event(info["status"])
    print("cancelled in %r: MIGRATION events %s" % (status, st))
    check(info["status"] == "cancelled", "migration ended %r: %r" %
          (info["status"], info))
    i = st.index("cancelling")
    check(st[i - 1] == status and st[i:] == ["cancelling", "cancelled"],
          "MIGRATION events %r" % st)
    return dst, info


def kill_dest_midstream(c, src, side_b, memory):
    dst = c.dest(side_b, memory)
    miglib.set_migration(src, {"switchover-ack": True},
                         {"downtime-limit": 0,
                          "max-bandwidth": SLOW_BANDWIDTH})
    src.cmd("migrate", {"uri": dst.incoming})
    miglib.wait_until(
        lambda: (lambda i: i["status"] in miglib.FINAL or
                 (i["status"] == "active" and
                  i["ram"]["transferred"] >= MID_ITERATION_BYTES))(
            src.query_migrate()), "the stream to get going")
    check(src.query_migrate()["status"] == "active", "not active: %r" %
          src.query_migrate())
    dst.kill(signal.SIGKILL)
    info = src.wait_migration()
    print("destination killed: %s, error-desc %r" %
          (src.mig_statuses(), info.get("error-desc")))
    check(info["status"] == "failed", "migration ended %r after the "
          "destination died: %r" % (info["status"], info))
    check(info.get("error-desc"), "failed without error-desc: %r" % info)
    check(dst.proc.returncode == -signal.SIGKILL, "dst exit %r" %
          dst.proc.returncode)
    return dst, info


def keep_iterating(c, src, side_b, memory):
    """A migration that cannot converge iterates until cancelled, and
    says why."""
    dst = c.dest(side_b, memory)
    miglib.set_migration(src, {"switchover-ack": True},
                         {"downtime-limit": NOCONVERGE_LIMIT_MS,
                          "max-bandwidth": NOCONVERGE_BANDWIDTH})
    src.cmd("migrate", {"uri": dst.incoming})
    info = miglib.wait_until(
        lambda: (lambda i: i if i["status"] in miglib.FINAL or
                 i.get("iterations", 0) >= NOCONVERGE_ITERATIONS else None)(
            src.query_migrate()),
        "%d iterations" % NOCONVERGE_ITERATIONS)
    print("after %d iterations: %s; expected downtime %s ms" %
          (info.get("iterations", 0), info.get("x-convergence"),
           info.get("expected-downtime")))
    check(info["status"] == "active", "did not keep iterating: %r" % info)
    why = info.get("x-convergence", "")
    check("expected downtime" in why and
          "limit %d ms" % NOCONVERGE_LIMIT_MS in why,
          "query-migrate does not say why it iterates: %r" % why)
    check(info.get("expected-downtime", 0) > NOCONVERGE_LIMIT_MS,
          "expected-downtime %r within the limit" %
          info.get("expected-downtime"))
    src.cmd("migrate_cancel")
    info = src.wait_migration()
    check(info["status"] == "cancelled", "migration ended %r: %r" %
          (info["status"], info))
    return dst, info


def body(c, case):
    dev_args, memory = CASES[case]
    side_a = [("dma0", c.device("A0", dev_args))]
    side_b = [("dma0", c.device("B0", dev_args))]
    src = c.source(miglib.DMASTRESS, "seconds=%d devices=1 timeout=%d" %
                   (GUEST_SECONDS, GUEST_TIMEOUT), side_a, memory)
    src.wait_heartbeats(1)

    if case == "setup":
        dst, info = cancel_in_setup(c, src, side_b, memory)
    elif case == "active":
        dst, info = cancel_when(c, src, side_b, memory, "active",
                                {"switchover-ack": True},
                                {"downtime-limit": 0,
                                 "max-bandwidth": SLOW_BANDWIDTH},
                                MID_ITERATION_BYTES)
    elif case == "device":
        # Without switchover-ack: with it the source would wait until
        # the destination loaded all initial data, leaving little for
        # stop-copy.
        dst, info = cancel_when(c, src, side_b, memory, "device",
                                {"switchover-ack": False},
                                {"downtime-limit": HUGE_DOWNTIME_MS})
    elif case == "noconverge":
        dst, info = keep_iterating(c, src, side_b, memory)
    else:
        dst, info = kill_dest_midstream(c, src, side_b, memory)

    miglib.expect_source_keeps_guest(src, src.query_migrate(), "jobs")
    if case != "dest-killed":
        err = expect_dest_not_run(dst)
        print("destination: %s" % err.strip().splitlines()[-1])

    # The same source, a fresh destination on the same device servers.
    src.wait_heartbeats(1)
    dst2, info = miglib.hop(c, src, side_b, caps={"switchover-ack": True},
                            params=DEFAULTS, memory=memory)
    v = miglib.expect_pass(dst2, PASS_WAIT_S)
    print("retry completed; ok: %s" % v[2])


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in CASES:
        print(__doc__, file=sys.stderr)
        return 2
    miglib.require(miglib.DMASTRESS)
    miglib.run("cancel-" + sys.argv[1], lambda c: body(c, sys.argv[1]))


if __name__ == "__main__":
    sys.exit(main())
