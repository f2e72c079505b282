#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""A destination configured unlike the source refuses the migration
before loading anything (real KVM, ferry-dev, dmastress).

usage: test_migration_config.py CASE
CASE: memory | cpus | device-missing | device-memory

The source runs dmastress with one ferry-dma (4 MiB device memory) in a
128 MiB, 1-vCPU VM. The destination differs in one thing: --memory 256M,
--cpus 2, no --device, or a device server with --device-memory 8M. It must
exit non-zero with "configuration mismatch" naming both values and
without running guest code; the source must end failed with that reason
in error-desc, devices RUNNING, the guest still making progress.

Paths from the environment (tests/vm/meson.build). Exit 0/1/77.
"""
import sys

import miglib
from miglib import check

MISMATCH = "configuration mismatch"

CASES = {
    # case: (dest memory, dest cpus, dest device args or None,
    #        words the message must name)
    "memory": ("256M", 1, [], ("134217728", "268435456")),
    "cpus": ("128M", 2, [], ("1 vCPUs", "destination 2")),
    "device-missing": ("128M", 1, None, ("1 devices", "destination 0")),
    "device-memory": ("128M", 1, ["--device-memory", "8M"],
                      ("device 0", "4194304", "8388608")),
}


def body(c, case):
    memory, cpus, dev_args, words = CASES[case]
    side_a = [("dma0", c.device("A0"))]
    side_b = [] if dev_args is None else [("dma0", c.device("B0", dev_args))]
    src = c.source(miglib.DMASTRESS, "seconds=600 devices=1 timeout=20",
                   side_a)
    src.wait_heartbeats(1)
    dst = c.dest(side_b, memory, cpus)
    miglib.set_migration(src, {"switchover-ack": True})
    src.cmd("migrate", {"uri": dst.incoming})
    info = src.wait_migration()
    desc = info.get("error-desc", "")
    print("source: %s, error-desc %r" % (info["status"], desc))
    check(info["status"] == "failed", "migration to a mismatched "
          "destination ended %r: %r" % (info["status"], info))
    check(MISMATCH in desc, "error-desc lacks %r: %r" % (MISMATCH, desc))

    err = miglib.expect_no_guest(dst)
    line = [l for l in err.splitlines() if MISMATCH in l]
    check(line, "destination stderr lacks %r:\n%s" % (MISMATCH, err))
    for w in words:
        check(w in line[0], "message does not name %r: %s" % (w, line[0]))
    check("configuration matches" not in err,
          "destination got past the check:\n%s" % err)
    print("destination: %s" % line[0])

    miglib.expect_source_keeps_guest(src, src.query_migrate(), "jobs")
    src.cmd("quit")
    check(src.wait() == 0, "source quit with %s" % src.rc)


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in CASES:
        print(__doc__, file=sys.stderr)
        return 2
    miglib.require(miglib.DMASTRESS)
    miglib.run("config-" + sys.argv[1], lambda c: body(c, sys.argv[1]))


if __name__ == "__main__":
    sys.exit(main())
