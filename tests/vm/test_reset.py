#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""system_reset (real KVM, ferry-dev, the self-checking guests).

usage: test_reset.py CASE
CASE: dma | paused | smp | refused

dma: dmastress with a ferry-dma device is reset mid-run; QMP answers {},
  the RESET event says host-qmp-system-reset, the guest boots again (a
  second start line, its clock from 0) and that run ends PASS with the
  device working (its DMA results and interrupts checked by the guest),
  and the device server did reset the device.
paused: a stopped VM stays stopped through the reset (QEMU's rule) and
  boots again only on cont.
smp: memstress on 4 vCPUs: every AP starts again (the guest checks each
  one) and the run ends PASS.
refused: a migration destination has no kernel to boot (the reset is
  refused with the reason, the guest runs on); a source that handed its
  guest over refuses it too.

Exit 0 pass, 1 fail, 77 skip.
"""
import sys
import time

import miglib
from miglib import check

GUEST_S = 8
RUN_WAIT_S = 120


def starts(vmm, guest):
    return vmm.serial_text().count("%s: start " % guest)


def reset(vmm):
    check(vmm.cmd("system_reset") == {}, "system_reset")
    ev = vmm.qmp().wait_event("RESET")
    check(ev.get("data") == {"guest": False,
                             "reason": "host-qmp-system-reset"},
          "RESET event %r" % ev)


def expect_reboot_pass(vmm, guest, key):
    """The second run ends PASS on its own clock."""
    v = miglib.expect_pass(vmm, RUN_WAIT_S)
    check(starts(vmm, guest) == 2, "%d start lines, expected 2:\n%s" %
          (starts(vmm, guest), vmm.serial_text()[-3000:]))
    beats = vmm.heartbeats()
    check(any(b1["t"] <= b0["t"] for b0, b1 in zip(beats, beats[1:])),
          "the guest clock never went back: no second boot")
    check(v[1].get(key, 0) > 0, "second run did no work: %s" % v[2])
    return v


def case_dma(c):
    dev = c.device("A0")
    v = c.source(miglib.DMASTRESS, "seconds=%d devices=1 timeout=20" %
                 GUEST_S, [("dma0", dev)])
    v.wait_heartbeats(2)
    reset(v)
    check(v.status() == "running", "status %r after reset" % v.status())
    verdict = expect_reboot_pass(v, "dmastress", "jobs")
    check(verdict[1].get("devices") == 1 and verdict[1].get("resets") == 0,
          "second run: %s" % verdict[2])
    check("device reset" in dev.log(), "ferry-dev did not reset the "
          "device:\n%s" % dev.log())
    print("ok: %s" % verdict[2])


def case_paused(c):
    v = c.source(miglib.MEMSTRESS, "seconds=%d" % GUEST_S)
    v.wait_heartbeats(1)
    v.cmd("stop")
    reset(v)
    check(v.status() == "paused", "status %r after a reset while stopped" %
          v.status())
    before = v.serial_text()
    time.sleep(1.0)
    check(v.serial_text() == before, "the guest ran while stopped")
    check(starts(v, "memstress") == 1, "booted again while stopped")
    v.cmd("cont")
    verdict = expect_reboot_pass(v, "memstress", "rewrites")
    print("ok: %s" % verdict[2])


def case_smp(c):
    v = c.source(miglib.MEMSTRESS, "seconds=%d cpus=4" % GUEST_S, cpus=4)
    v.wait_heartbeats(2)
    reset(v)
    verdict = expect_reboot_pass(v, "memstress", "rewrites")
    check(verdict[1].get("cpus") == 4, "second run: %s" % verdict[2])
    print("ok: %s" % verdict[2])


def case_refused(c):
    # Forever and slow: the migration converges even on a nested KVM.
    src = c.source(miglib.MEMSTRESS, "seconds=0 pages=256 rate=2000")
    src.wait_heartbeats(1)
    dst = c.dest()
    src.cmd("migrate", {"uri": dst.incoming})
    check(src.wait_migration()["status"] == "completed", "migration")
    r = src.cmd_raw("system_reset")
    check("error" in r and miglib.POSTMIGRATE_REFUSAL in r["error"]["desc"],
          "system_reset in postmigrate: %r" % r)
    miglib.quit_postmigrate(src)
    r = dst.cmd_raw("system_reset")
    check("error" in r and "did not boot the guest" in r["error"]["desc"],
          "system_reset on a destination: %r" % r)
    check(dst.status() == "running", "destination status %r" % dst.status())
    dst.wait_heartbeats(1)
    check(not dst.events("RESET"), "RESET event for a refused reset")
    dst.cmd("quit")
    check(dst.wait() == 0, "destination exit on quit")
    print("ok: both refused with their reasons")


CASES = {
    "dma": case_dma,
    "paused": case_paused,
    "smp": case_smp,
    "refused": case_refused,
}


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in CASES:
        print(__doc__, file=sys.stderr)
        return 2
    miglib.require(miglib.MEMSTRESS, miglib.DMASTRESS)
    return miglib.run("reset-" + sys.argv[1], CASES[sys.argv[1]])


if __name__ == "__main__":
    sys.exit(main())
