#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Live update of the device servers under a running guest (real KVM).

usage: test_devserver_update.py CASE
CASE: chain | negative | reset-seen

chain: dmastress drives 2 ferry-dma devices (every batch raises an
interrupt) while their ferry-dev servers are updated 20 times, the two
devices in turn: each time a new `ferry-dev --takeover CONTROL` takes the
device over from the running one, which must exit 0 with the new one
serving. The VMM is not told and must not notice (it stays up, no
reconnect). After every update the guest's work counter must have moved
on; at the end the guest must PASS -- every DMA result, completion and
interrupt checked by itself -- with resets=0: no device was reset.

negative: one update by a new process that drops RING_TAIL
(--x-takeover-fault=lose-ring-tail): the guest must catch it (a FAIL
verdict), which shows that its checks see a takeover that is not exact.
reset-seen: one by a new process that resets the device it took
(reset-device): the guest must say so, `FAIL reset_seen` with resets=1 --
what resets=0 at the end of chain is worth.

Paths come from the environment (tests/vm/meson.build): FERRY_VMM,
FERRY_DEV, FERRY_GUEST_DMASTRESS. Exit 0 pass, 1 fail, 77 skip.
"""
import re
import statistics
import sys
import time

import miglib
from miglib import check

NDEV = 2
UPDATES = 20
GUEST_SECONDS = 50
GUEST_TIMEOUT = 20      # dmastress: seconds without progress -> FAIL
END_MARGIN_S = 3        # guest time left at the last update, at least
PASS_WAIT_S = GUEST_SECONDS + 60
TAKEOVER_TIMEOUT_MS = "5000"

PAUSED_RE = re.compile(r"paused_us=(\d+)")


def start(c, timeout=GUEST_TIMEOUT):
    """NDEV device servers with control sockets, one guest on them."""
    devs = []
    for i in range(NDEV):
        name = "d%d" % i
        ctl = c.join(name + ".ctl")
        devs.append((name, ctl, c.device(name, ["--control", ctl,
                                                "--takeover-timeout",
                                                TAKEOVER_TIMEOUT_MS])))
    vmm = c.source(miglib.DMASTRESS,
                   "seconds=%d devices=%d timeout=%d" %
                   (GUEST_SECONDS, NDEV, timeout),
                   [("dma%d" % i, d[2]) for i, d in enumerate(devs)])
    vmm.wait_heartbeats(1)
    return vmm, devs


def update(c, name, ctl, old, seq, fault=None):
    """One takeover of device `name`: the new process serves, the old one
    exits 0. Returns the new process and the pause it measured."""
    argv = [miglib.DEV, "--takeover", ctl, "--name", name,
            "--takeover-timeout", TAKEOVER_TIMEOUT_MS]
    if fault:
        argv += ["--x-takeover-fault", fault]
    new = miglib.Proc(c, "%s-u%d" % (name, seq), argv)
    rc = old.wait(miglib.WAIT_S)
    check(rc == 0, "%s: the old server exited %s after the takeover:\n%s"
          "\n%s" % (name, rc, old.log()[-2000:], new.log()[-2000:]))
    check(new.alive(), "%s: the new server exited (%s):\n%s" %
          (name, new.proc.poll(), new.log()[-2000:]))
    paused = [None]

    def logged():
        m = PAUSED_RE.search(new.log())
        paused[0] = m and int(m.group(1))
        return m is not None
    miglib.wait_until(logged, "%s: the new server's takeover report" % name)
    return new, paused[0]


def case_chain(c):
    vmm, devs = start(c)
    cur = [d[2] for d in devs]
    last = vmm.heartbeats()[-1]
    paused = []
    for i in range(UPDATES):
        k = i % NDEV
        name, ctl = devs[k][0], devs[k][1]
        t0 = time.monotonic()
        cur[k], us = update(c, name, ctl, cur[k], i + 1)
        took = time.monotonic() - t0
        paused.append(us)
        beat = vmm.wait_heartbeats(1)
        check(vmm.alive(), "the VMM exited during the updates")
        check(beat["jobs"] > last["jobs"] and beat["irqs"] > last["irqs"],
              "update %d (%s): guest made no progress: %r then %r" %
              (i + 1, name, last, beat))
        check(beat["t"] <= GUEST_SECONDS - END_MARGIN_S,
              "update %d ended at guest time %ds: too close to the end of "
              "its %ds run for the test to mean anything; raise "
              "GUEST_SECONDS" % (i + 1, beat["t"], GUEST_SECONDS))
        print("update %2d: %s -> pid %d in %.2f s, device paused %d us; "
              "guest t=%d jobs=%d irqs=%d max_stall_us=%d" %
              (i + 1, name, cur[k].pid, took, us, beat["t"], beat["jobs"],
               beat["irqs"], beat["max_stall_us"]))
        last = beat
    v = miglib.expect_pass(vmm, PASS_WAIT_S)
    check(v[1].get("devices") == NDEV, "verdict: %r" % v[2])
    check(v[1].get("resets") == 0, "a device was reset: %r" % v[2])
    check(v[1].get("jobs", 0) >= last["jobs"],
          "verdict below the last heartbeat: %r" % v[2])
    check("disconnected" not in vmm.log(),
          "the VMM saw a device server go:\n%s" % vmm.log()[-3000:])
    print("server-side pause over %d updates: median %d us, max %d us; "
          "guest's longest stall %d us" %
          (len(paused), statistics.median(paused), max(paused),
           v[1].get("max_stall_us", -1)))
    print("ok: %s" % v[2])


def case_negative(c):
    vmm, devs = start(c)
    name, ctl, old = devs[0]
    update(c, name, ctl, old, 1, fault="lose-ring-tail")
    rc, v = miglib.wait_guest_end(vmm, PASS_WAIT_S)
    check(rc != 0 and v and v[0] == "FAIL",
          "negative control not caught: a takeover that dropped RING_TAIL "
          "and the guest ended %r (exit %s)" % (v and v[2], rc))
    print("ok: caught: %s" % v[2])


def case_reset_seen(c):
    # A reset device stops completing: the guest finds out when its
    # wait for a completion runs out, then names the reset.
    vmm, devs = start(c, timeout=3)
    name, ctl, old = devs[1]
    update(c, name, ctl, old, 1, fault="reset-device")
    rc, v = miglib.wait_guest_end(vmm, PASS_WAIT_S)
    check(rc != 0 and v and v[2].startswith("dmastress: FAIL reset_seen "
                                            "dev=1") and
          v[1].get("resets") == 1,
          "a device reset under the guest was not reported as such: %r "
          "(exit %s)" % (v and v[2], rc))
    print("ok: caught: %s" % v[2])


CASES = {"chain": case_chain, "negative": case_negative,
         "reset-seen": case_reset_seen}


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in CASES:
        print(__doc__, file=sys.stderr)
        return 2
    miglib.require(miglib.DMASTRESS)
    miglib.run("devserver-update-" + sys.argv[1], CASES[sys.argv[1]])


if __name__ == "__main__":
    sys.exit(main())
