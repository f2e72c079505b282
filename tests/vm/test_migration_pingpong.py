#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Live migration ping-pong under load (real KVM, ferry-dev, guests).

usage: test_migration_pingpong.py CASE
CASE: dma1 | mem | dma2 | dma-msi | dma-intx | dirtylog-negative

A running guest is migrated HOPS times between two sets of device servers
(A -> B -> A ...), each hop into a new ferry-vmm started with --incoming,
with switchover-ack on. Every hop must complete (source status completed,
postmigrate until quit and exit 0 -- in the mem case exit 0 by itself
with --exit-after-migrate --, destination running), the guest's work counter must keep
rising across hops, and the guest must end PASS on the last destination.

dma-msi and dma-intx run two ferry-dev servers with --irq-mode msi / intx
(the proxy's MSI routing, and level INTx through the IOAPIC with the
resample eventfd), so those interrupts, too, must arrive exactly across
every hop (dmastress's own count against the device's).

dirtylog-negative is the negative control: the same dmastress run with the
debug capability x-ignore-device-dirty-log, so pages the device writes
during pre-copy go stale on the destination; the guest must notice (FAIL
verdict or a non-zero exit somewhere along the way).

Paths come from the environment (tests/vm/meson.build): FERRY_VMM,
FERRY_DEV, FERRY_GUEST_MEMSTRESS, FERRY_GUEST_DMASTRESS.
Exit 0 pass, 1 fail, 77 skip.
"""
import sys
import time

import miglib
from miglib import check, TestFailure

HOPS = 5
# Each hop usually takes well under a second (a slow one up to ~10 s
# under ASan) plus one heartbeat of the new destination; the guest must
# still be running when the last hop ends.
GUEST_SECONDS = 40
GUEST_TIMEOUT = 20      # dmastress: seconds without progress -> FAIL
END_MARGIN_S = 3        # guest time left at the last hop, at least
PASS_WAIT_S = GUEST_SECONDS + 60

# The mem case's VMMs exit by themselves after each hand-over (the
# others stay in postmigrate until quit).
EXIT_AFTER = {"mem": ["--exit-after-migrate"]}

CASES = {
    # name: (guest, devices per side, counter, extra caps[, ferry-dev args])
    "dma1": ("dma", 1, "jobs", {}),
    "mem": ("mem", 0, "rewrites", {}),
    "dma2": ("dma", 2, "jobs", {}),
    "dma-msi": ("dma", 2, "jobs", {}, ["--irq-mode", "msi"]),
    "dma-intx": ("dma", 2, "jobs", {}, ["--irq-mode", "intx"]),
    "dirtylog-negative": ("dma", 1, "jobs",
                          {"x-ignore-device-dirty-log": True}),
}


def guest_args(kind, ndev):
    if kind == "mem":
        return miglib.MEMSTRESS, "seconds=%d" % GUEST_SECONDS
    return miglib.DMASTRESS, "seconds=%d devices=%d timeout=%d" % (
        GUEST_SECONDS, ndev, GUEST_TIMEOUT)


def start(c, kind, ndev, dev_args=()):
    sides = [[("dma%d" % i, c.device("%s%d" % (side, i), dev_args))
              for i in range(ndev)] for side in ("A", "B")]
    kernel, append = guest_args(kind, ndev)
    src = c.source(kernel, append, sides[0],
                   extra=EXIT_AFTER.get(kind, []))
    src.wait_heartbeats(1)
    return src, sides


def pingpong(c, kind, ndev, key, caps, dev_args=()):
    src, sides = start(c, kind, ndev, dev_args)
    caps = dict({"switchover-ack": True}, **caps)
    chain = [src]
    cur = src
    last = cur.heartbeats()[-1]
    for h in range(HOPS):
        t0 = time.monotonic()
        cur, info = miglib.hop(c, cur, sides[(h + 1) % 2], caps=caps,
                               extra=EXIT_AFTER.get(kind, []))
        beat = cur.wait_heartbeats(1)
        check(beat[key] > last[key],
              "hop %d: %s did not advance: %d before the hop, %d after" %
              (h + 1, key, last[key], beat[key]))
        check(beat["t"] <= GUEST_SECONDS - END_MARGIN_S,
              "hop %d ended at guest time %ds: too close to the end of "
              "its %ds run for the test to mean anything; raise "
              "GUEST_SECONDS" % (h + 1, beat["t"], GUEST_SECONDS))
        print("hop %d -> %s: %.2f s, %s=%d t=%d" %
              (h + 1, cur.name, time.monotonic() - t0, key, beat[key],
               beat["t"]))
        chain.append(cur)
        last = beat
    return chain


def check_chain(chain, key):
    """Across all serial logs in hop order, the guest's clock and work
    counter never go back: the same guest moved, not a fresh boot."""
    seq = []
    for v in chain:
        check("start " not in v.serial_text() or v is chain[0],
              "%s: the guest booted again on a destination" % v.name)
        seq += [(v.name, b) for b in v.heartbeats()]
    for (n0, b0), (n1, b1) in zip(seq, seq[1:]):
        check(b1[key] >= b0[key] and b1["t"] >= b0["t"],
              "heartbeats go back from %s %r to %s %r" % (n0, b0, n1, b1))


def case_pass(c, kind, ndev, key, caps, dev_args=()):
    chain = pingpong(c, kind, ndev, key, caps, dev_args)
    v = miglib.expect_pass(chain[-1], PASS_WAIT_S)
    check_chain(chain, key)
    check(v[1].get(key, 0) >= chain[-1].heartbeats()[-1][key],
          "verdict %s below the last heartbeat: %r" % (key, v[2]))
    if kind == "dma":
        check(v[1].get("devices") == ndev, "verdict: %r" % v[2])
    if dev_args:
        # The guest took the interrupt kind the devices offer.
        mode = dev_args[-1]
        n = chain[0].serial_text().count(" irq=%s " % mode)
        check(n == ndev, "%d of %d device lines say irq=%s: %s" %
              (n, ndev, mode, chain[0].serial_text()[:2000]))
    print("ok: %s" % v[2])


def case_negative(c, kind, ndev, key, caps):
    """Stale device-written pages must be caught by the guest. It may
    catch them at any hop (then that VMM exits 1 and the chain stops) or
    at its final check."""
    try:
        chain = pingpong(c, kind, ndev, key, caps)
    except TestFailure as e:
        for p in c.procs:
            if isinstance(p, miglib.Vmm):
                v = miglib.verdict(p.serial_text())
                if v and v[0] == "FAIL":
                    print("ok: caught during the hops (%s): %s" % (e, v[2]))
                    return
        raise
    rc, v = miglib.wait_guest_end(chain[-1], PASS_WAIT_S)
    check(rc != 0 or (v and v[0] == "FAIL"),
          "negative control not caught: with device dirty logging off the "
          "guest still ended %r (exit %s) after %d hops" %
          (v and v[2], rc, HOPS))
    print("ok: caught at the end: exit %s, %s" % (rc, v and v[2]))


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in CASES:
        print(__doc__, file=sys.stderr)
        return 2
    kind, ndev, key, caps, *dev_args = CASES[sys.argv[1]]
    miglib.require(miglib.DMASTRESS if kind == "dma" else
                   miglib.MEMSTRESS)
    if caps:
        miglib.run("pingpong-" + sys.argv[1],
                   lambda c: case_negative(c, kind, ndev, key, caps))
    else:
        miglib.run("pingpong-" + sys.argv[1],
                   lambda c: case_pass(c, kind, ndev, key, caps,
                                       dev_args[0] if dev_args else ()))


if __name__ == "__main__":
    sys.exit(main())
