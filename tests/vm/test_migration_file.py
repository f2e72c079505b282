#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Migration streams through a file (real KVM, ferry-dev, dmastress).

usage: test_migration_file.py CASE
CASE: intact | corrupt

Both cases save a running dmastress VM with one ferry-dma to file:PATH.
A file has no return path, so the source does not hand the guest over:
it must end completed and stay, paused, with its devices RUNNING, and
`cont` must resume the guest there.

  intact   the file loads into `ferry-vmm --incoming file:PATH` on another
           device server, and the guest ends PASS there.
  autostart-off
           the same into `--incoming defer` told `stop` before
           migrate-incoming (QEMU's autostart off): the guest arrives
           paused and stays so, with no RESUME, until `cont`; then PASS.
  corrupt  truncated copies (0, 15, half, len-1 bytes) and copies with one
           bit flipped (stream header, first section header, CONFIG
           payload, a payload in the middle, the END section) each make
           the destination exit non-zero with "incoming migration failed:
           <reason>; no guest code ran here" and nothing on its console.
           Every attempt gets a fresh device server, so one rejected
           stream cannot influence the next.

Paths from the environment (tests/vm/meson.build). Exit 0/1/77.
"""
import os
import sys
import time

import miglib
from miglib import check

GUEST_SECONDS = 15
GUEST_TIMEOUT = 20
PASS_WAIT_S = GUEST_SECONDS + 60
HDR_LEN = 16            # "FERRYMIG", major, minor, crc
SEC_HDR_LEN = 24        # type, flags, id, length, crcs


def save_to_file(c):
    side_a = [("dma0", c.device("A0"))]
    src = c.source(miglib.DMASTRESS, "seconds=%d devices=1 timeout=%d" %
                   (GUEST_SECONDS, GUEST_TIMEOUT), side_a)
    src.wait_heartbeats(1)
    path = c.join("vm.mig")
    # events off (QEMU's default): no MIGRATION or MIGRATION_PASS
    miglib.set_migration(src, {"switchover-ack": False, "events": False})
    src.cmd("migrate", {"uri": "file:" + path})
    info = src.wait_migration()
    check(info["status"] == "completed", "file migration ended %r: %r" %
          (info["status"], info))
    src.status()        # reads whatever events came before its reply
    for ev in ("MIGRATION", "MIGRATION_PASS"):
        check(not src.events(ev), "%s events with the events capability "
              "off: %r" % (ev, src.events(ev)))
    check(src.events("STOP"), "no STOP event (not gated by 'events')")
    check(src.alive(), "source exited (%s) after a file migration: the "
          "guest has nowhere else to run" % src.proc.poll())
    st = src.status()
    check(st == "paused", "source is %r after a file migration, expected "
          "paused (the file holds the guest at that instant)" % st)
    for dev_id, state in src.devices_state(src.query_migrate()).items():
        check(state == "RUNNING", "device %s is %s after a file "
              "migration" % (dev_id, state))
    size = os.path.getsize(path)
    print("saved %d bytes; source paused, devices RUNNING" % size)
    src.cmd("cont")
    check(src.status() == "running", "cont did not resume the source")
    before = src.heartbeats()[-1]["jobs"]
    after = src.wait_heartbeats(2, timeout=miglib.WAIT_S)["jobs"]
    check(after > before, "guest made no progress after cont (%d, %d)" %
          (before, after))
    src.cmd("quit")
    src.wait()
    return path, size


def case_intact(c):
    path, _ = save_to_file(c)
    dst = c.dest([("dma0", c.device("B0"))], incoming="file:" + path)
    v = miglib.expect_pass(dst, PASS_WAIT_S)
    check("start " not in dst.serial_text(),
          "the guest booted again instead of resuming")
    print("ok: loaded from the file: %s" % v[2])


def case_autostart_off(c):
    path, _ = save_to_file(c)
    dst = c.dest([("dma0", c.device("B0"))], incoming="defer")
    check(dst.status() == "inmigrate", "%s: %s before migrate-incoming" %
          (dst.name, dst.status()))
    dst.cmd("stop")
    dst.cmd("migrate-incoming", {"uri": "file:" + path})
    miglib.wait_until(lambda: dst.status() != "inmigrate",
                      "%s loaded the file" % dst.name)
    check(dst.status() == "paused", "%s: %s after loading, stop was sent "
          "first" % (dst.name, dst.status()))
    serial = dst.serial_text()
    time.sleep(2)
    check(dst.status() == "paused" and dst.serial_text() == serial,
          "%s: the guest ran although stopped before it came" % dst.name)
    check(not dst.events("RESUME"), "%s: RESUME while it stays paused" %
          dst.name)
    dst.cmd("cont")
    v = miglib.expect_pass(dst, PASS_WAIT_S)
    print("ok: arrived paused, ran on cont: %s" % v[2])


def variants(data):
    n = len(data)
    for cut in (0, 15, n // 2, n - 1):
        yield "truncated at %d" % cut, data[:cut]
    for where, off in (("stream magic", 3),
                       ("stream header CRC", 13),
                       ("first section type", HDR_LEN),
                       ("first section length", HDR_LEN + 8),
                       ("CONFIG payload", HDR_LEN + SEC_HDR_LEN + 5),
                       ("middle of the stream", n // 2),
                       ("END section", n - 2)):
        flipped = bytearray(data)
        flipped[off] ^= 0x08
        yield "bit flip in %s (byte %d)" % (where, off), bytes(flipped)


def case_corrupt(c):
    path, _ = save_to_file(c)
    with open(path, "rb") as f:
        data = f.read()
    for i, (what, blob) in enumerate(variants(data)):
        bad = c.join("bad%d.mig" % i)
        with open(bad, "wb") as f:
            f.write(blob)
        dev = c.device("B%d" % i)
        dst = c.dest([("dma0", dev)], incoming="file:" + bad,
                     may_exit=True)
        err = miglib.expect_no_guest(dst)
        line = [l for l in err.splitlines()
                if "incoming migration failed: " in l]
        check(line, "%s: no 'incoming migration failed' line:\n%s" %
              (what, err))
        print("%s: %s" % (what, line[-1].split("failed: ", 1)[1]))
        dev.kill()
        os.unlink(bad)


def main():
    cases = {"intact": case_intact, "corrupt": case_corrupt,
             "autostart-off": case_autostart_off}
    if len(sys.argv) != 2 or sys.argv[1] not in cases:
        print(__doc__, file=sys.stderr)
        return 2
    miglib.require(miglib.DMASTRESS)
    miglib.run("file-" + sys.argv[1], cases[sys.argv[1]])


if __name__ == "__main__":
    sys.exit(main())
