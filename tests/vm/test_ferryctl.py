# SPDX-License-Identifier: BSD-3-Clause
"""ferryctl: human and --json output, raw commands, QMP errors (exit 1),
usage errors (exit 2) and an unreachable socket (exit 3)."""
import json
import subprocess

import vmlib
from vmlib import Vmm, check


def ctl(*args):
    p = subprocess.run([vmlib.FERRYCTL] + list(args), capture_output=True,
                       stdin=subprocess.DEVNULL, timeout=vmlib.TIMEOUT)
    vmlib.check_sanitizer(p.stderr.decode(), " ".join(args))
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def main(wd, vmms):
    rc, out, err = ctl("--qmp", wd.join("nothing.sock"), "status")
    check(rc == 3 and "cannot connect" in err, "unreachable: %s %r" % (rc, err))
    for args, want in ((["status"], "--qmp PATH is required"),
                       (["--qmp", "x"], "no command given"),
                       (["--qmp", "x", "frobnicate"], "unknown command"),
                       (["--qmp", "x", "raw", "{bad"], "not a JSON object"),
                       (["--qmp", "x", "status", "extra"], "takes no argument"),
                       (["--bogus"], "unknown option")):
        rc, _, err = ctl(*args)
        check(rc == 2 and want in err, "%s: rc %s err %r" % (args, rc, err))
    rc, out, _ = ctl("--help")
    check(rc == 0 and "Usage: ferryctl" in out, "--help")

    v = Vmm(wd, append="mode=spin")
    vmms.append(v)
    v.wait_qmp()
    s = v.qmp_path
    rc, out, _ = ctl("--qmp", s, "status")
    check(rc == 0 and out.strip() == "VM status: running", "status %r" % out)
    rc, out, _ = ctl("--qmp", "unix:" + s, "stop")
    check(rc == 0 and "stopped" in out, "stop %r" % out)
    rc, out, _ = ctl("--qmp", s, "--json", "status")
    check(rc == 0 and json.loads(out)["status"] == "paused", "json %r" % out)
    rc, out, _ = ctl("--qmp", s, "cont")
    check(rc == 0, "cont")
    rc, out, _ = ctl("--qmp", s, "devices")
    check(rc == 0 and "8086:29c0" in out and "Host bridge" in out,
          "devices %r" % out)
    rc, out, _ = ctl("--qmp", s, "raw", '{"execute":"query-status","id":9}')
    r = json.loads(out)
    check(rc == 0 and r["id"] == 9 and r["return"]["running"], "raw %r" % out)
    rc, out, err = ctl("--qmp", s, "raw", '{"execute":"nope"}')
    check(rc == 1 and "CommandNotFound" in out and
          "has not been found" in err, "raw error: %s %r %r" % (rc, out, err))
    rc, out, _ = ctl("--qmp", s, "quit")
    check(rc == 0, "quit rc %s" % rc)
    check(v.wait() == 0, "vmm exit %s" % v.rc)


vmlib.run(main)
