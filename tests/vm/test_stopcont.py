# SPDX-License-Identifier: BSD-3-Clause
"""stop/cont in the middle of a self-checking run: query-status follows,
the guest makes no progress while stopped, and it still ends in PASS."""
import os
import time

import vmlib
from vmlib import Qmp, Vmm, check, wait_until


def stop_cont_run(wd, vmms, kernel, append, progress, name):
    v = Vmm(wd, kernel=kernel, append=append, memory="256M", name=name)
    vmms.append(v)
    v.wait_qmp()
    q = Qmp(v.qmp_path)
    q.negotiate()
    wait_until(lambda: progress(v.serial_text()), name + " progress")
    for _ in range(2):
        check(q.cmd("stop") == {"return": {}}, "stop")
        q.wait_event("STOP")
        st = q.cmd("query-status")["return"]
        # ferry's own member: the stop's time to get the vCPUs out
        pause_us = st.pop("x-vcpus-pause-us", None)
        check(isinstance(pause_us, int) and 0 < pause_us < 10 ** 7,
              "x-vcpus-pause-us %r" % pause_us)
        check(st == {"running": False, "singlestep": False,
                     "status": "paused"}, "paused status %r" % st)
        before = v.serial_text()
        time.sleep(0.5)
        check(v.serial_text() == before, "console moved while stopped")
        check(v.proc.poll() is None, "guest finished while stopped")
        # A second stop is a no-op, as in QEMU.
        check(q.cmd("stop") == {"return": {}}, "second stop")
        check(q.cmd("cont") == {"return": {}}, "cont")
        q.wait_event("RESUME")
        st = q.cmd("query-status")["return"]
        check(st["running"] or st["status"] == "shutdown",
              "running status %r" % st)
    check(v.wait(timeout=180) == 0, "%s exit %s" % (name, v.rc))
    check("PASS" in v.serial_text(), name + ": no PASS")
    q.close()


def main(wd, vmms):
    stop_cont_run(wd, vmms, None, "mode=pass loops=3000",
                  lambda s: s.count(".") >= 2, "mbtest")
    mem = os.environ.get("FERRY_GUEST_MEMSTRESS")
    if mem and os.path.exists(mem):
        stop_cont_run(wd, vmms, mem, "seconds=4",
                      lambda s: len(s.splitlines()) >= 2, "memstress")


vmlib.run(main)
