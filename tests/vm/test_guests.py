# SPDX-License-Identifier: BSD-3-Clause
"""The project's self-checking guests (memstress, dmastress without a
device) boot under ferry-vmm and report PASS through the exit port."""
import os

import vmlib
from vmlib import Vmm, check


def main(wd, vmms):
    guests = [(os.environ.get("FERRY_GUEST_MEMSTRESS"), "seconds=2"),
              (os.environ.get("FERRY_GUEST_DMASTRESS"), "seconds=2")]
    present = [(k, a) for k, a in guests if k and os.path.exists(k)]
    if not present:
        vmlib.skip("guest images not built")
    for kernel, append in present:
        v = Vmm(wd, kernel=kernel, append=append, memory="256M", qmp=False,
                name=os.path.basename(kernel))
        vmms.append(v)
        v.wait(timeout=120)
        check(v.rc == 0, "%s exited %s" % (kernel, v.rc))
        check("PASS" in v.serial_text(), "%s: no PASS" % kernel)


vmlib.run(main)
