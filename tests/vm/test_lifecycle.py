# SPDX-License-Identifier: BSD-3-Clause
"""Shutdown hygiene: QMP quit, SIGTERM and SIGINT all end ferry-vmm with
status 0, remove the QMP socket, and leave no child process behind; while
running, the process holds only the threads and fds it should (one
thread per vCPU plus main, no fd growth from QMP clients coming and
going)."""
import os
import signal

import vmlib
from vmlib import Qmp, Vmm, check


def tasks(pid):
    """User threads; KVM's own workers (kvm-nx-lpage-recovery) show up
    in the task list too, created lazily by the kernel."""
    n = 0
    for t in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/comm" % (pid, t)) as f:
                if not f.read().startswith("kvm-"):
                    n += 1
        except FileNotFoundError:
            pass
    return n


def fds(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def children(pid):
    out = []
    for t in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/children" % (pid, t)) as f:
                out += f.read().split()
        except FileNotFoundError:
            pass
    return out


def main(wd, vmms):
    for how in ("quit", "SIGTERM", "SIGINT"):
        v = Vmm(wd, append="mode=spin", cpus=2, name=how)
        vmms.append(v)
        v.wait_qmp()
        q = Qmp(v.qmp_path)
        q.negotiate()
        n_tasks = tasks(v.pid)
        # main + 2 vCPUs; nothing else is started without devices.
        check(n_tasks == 3, "%s: %d threads, want 3" % (how, n_tasks))
        base = fds(v.pid)
        for _ in range(20):
            c = Qmp(v.qmp_path)
            c.negotiate()
            c.close()
        vmlib.wait_until(lambda: fds(v.pid) == base,
                         "fds back to %d (now %d)" % (base, fds(v.pid)))
        check(not children(v.pid), "child processes %r" % children(v.pid))
        if how == "quit":
            check(q.cmd("quit") == {"return": {}}, "quit")
        else:
            os.kill(v.pid, getattr(signal, how))
        e = q.wait_event("SHUTDOWN")
        check(e["data"]["reason"] ==
              ("host-qmp-quit" if how == "quit" else "host-signal"),
              "reason %r" % e)
        check(v.wait() == 0, "%s: exit %s" % (how, v.rc))
        check(not os.path.exists(v.qmp_path), "%s: socket left" % how)
        check("error" not in v.stderr(), "%s: errors: %s" % (how, v.stderr()))
        q.close()

    # The guest's own exit also removes the socket.
    v = Vmm(wd, append="mode=exit:3", name="guestexit")
    vmms.append(v)
    check(v.wait() == 3, "guest exit 3: %s" % v.rc)
    check(not os.path.exists(v.qmp_path), "socket left after guest exit")


vmlib.run(main)
