# SPDX-License-Identifier: BSD-3-Clause
"""A live migration driven only by QEMU's documented QMP sequence (the
one libvirt uses), run against ferry-vmm and, when qemu-system-x86_64 is
installed, the very same script against QEMU with the same guest: what
passes against both proves the sequence and the shapes are QEMU's.

The sequence: qmp_capabilities; migrate-set-capabilities on both sides
(QEMU capabilities a driver turns off, and events on); the destination
started with --incoming defer (-incoming defer) and given migrate-incoming;
migrate; poll query-migrate until completed; the final figures on the
source; quit the source. Around it, the commands a management layer
calls on any VM (query-name, query-uuid, query-cpus-fast,
query-qmp-schema) and QEMU's error class for a command that is not there.

Both sources must stay in postmigrate after completed, answering with
their final figures, until quit (docs/migration.md)."""
import os
import shutil
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import miglib                                           # noqa: E402
from miglib import check, TestFailure                   # noqa: E402

QEMU = shutil.which(os.environ.get("FERRY_QEMU", "qemu-system-x86_64"))
MEMORY_MIB = 128
NAME = "interop-vm"
UUID = "5f1c0a3e-8d2b-4c6a-9e7f-0123456789ab"
# What a driver written for QEMU sets: off for what it does not use.
CAPS = [{"capability": "events", "state": True},
        {"capability": "xbzrle", "state": False},
        {"capability": "auto-converge", "state": False},
        {"capability": "postcopy-ram", "state": False},
        {"capability": "multifd", "state": False},
        {"capability": "zero-copy-send", "state": False}]
RAM_FIELDS = ("transferred", "remaining", "total", "duplicate", "normal",
              "normal-bytes", "dirty-pages-rate", "mbps", "dirty-sync-count",
              "pages-per-second", "precopy-bytes", "downtime-bytes")
GUEST_ARGS = "seconds=600 pages=8192"


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Side:
    """One VMM process and its QMP connection."""

    def __init__(self, cluster, kind, name, incoming):
        self.kind, self.name = kind, name
        self.qmp_path = cluster.join("%s-%s.qmp" % (kind, name))
        serial = cluster.join("%s-%s.serial" % (kind, name))
        if kind == "qemu":
            # bench/compare.py's command line (same guest, same RAM).
            argv = [QEMU, "-name", NAME, "-uuid", UUID, "-accel", "kvm",
                    "-m", "%dM" % MEMORY_MIB, "-smp", "1", "-nodefaults",
                    "-display", "none", "-no-reboot",
                    "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
                    "-kernel", miglib.MEMSTRESS, "-append", GUEST_ARGS,
                    "-serial", "file:" + serial,
                    "-qmp", "unix:%s,server=on,wait=off" % self.qmp_path]
            if incoming:
                argv += ["-incoming", "defer"]
        else:
            argv = [miglib.VMM, "--name", NAME, "--uuid", UUID,
                    "--memory", "%dM" % MEMORY_MIB, "--cpus", "1",
                    "--serial", "file:" + serial,
                    "--qmp", "unix:" + self.qmp_path]
            argv += ["--incoming", "defer"] if incoming else \
                ["--kernel", miglib.MEMSTRESS, "--append", GUEST_ARGS]
        self.serial = serial
        self.proc = miglib.Proc(cluster, "%s-%s" % (kind, name), argv)
        miglib.wait_until(lambda: os.path.exists(self.qmp_path) or
                          not self.proc.alive(), "%s QMP socket" %
                          self.proc.name)
        check(self.proc.alive(), "%s died at start: %s" %
              (self.proc.name, self.proc.log()))
        # QEMU binds its socket a moment before it listens.
        self.qmp = None

        def connect():
            try:
                self.qmp = miglib.vmlib.Qmp(self.qmp_path,
                                            timeout=miglib.WAIT_S)
            except ConnectionRefusedError:
                check(self.proc.alive(), "%s died at start: %s" %
                      (self.proc.name, self.proc.log()))
            return self.qmp is not None
        miglib.wait_until(connect, "%s QMP" % self.proc.name)
        check("QMP" in self.qmp.greeting, "%s greeting %r" %
              (self.proc.name, self.qmp.greeting))

    def cmd(self, execute, arguments=None):
        r = self.qmp.cmd(execute, arguments)
        check("return" in r, "%s: %s %r: %r" % (self.proc.name, execute,
                                                arguments, r))
        return r["return"]

    def error(self, execute, arguments=None):
        r = self.qmp.cmd(execute, arguments)
        check("error" in r, "%s: %s %r succeeded: %r" %
              (self.proc.name, execute, arguments, r))
        return r["error"]

    def events(self, name):
        return [e for e in self.qmp.events if e["event"] == name]


def check_vm_commands(side):
    """What a management layer asks any VM."""
    check(side.cmd("query-name") == {"name": NAME}, "query-name")
    check(side.cmd("query-uuid") == {"UUID": UUID}, "query-uuid")
    cpus = side.cmd("query-cpus-fast")
    check(len(cpus) == 1, "query-cpus-fast: %r" % cpus)
    c = cpus[0]
    for k, t in (("cpu-index", int), ("qom-path", str), ("thread-id", int),
                 ("props", dict), ("target", str)):
        check(isinstance(c.get(k), t), "query-cpus-fast %s: %r" % (k, c))
    check(c["target"] == "x86_64" and c["cpu-index"] == 0,
          "query-cpus-fast: %r" % c)
    schema = side.cmd("query-qmp-schema")
    by_name = {e["name"]: e for e in schema}
    for cmd in ("migrate", "migrate-incoming", "query-migrate",
                "migrate-set-capabilities", "query-name", "quit"):
        check(by_name.get(cmd, {}).get("meta-type") == "command",
              "query-qmp-schema lacks command %s" % cmd)
    for ev in ("MIGRATION", "MIGRATION_PASS", "STOP", "RESUME", "SHUTDOWN"):
        check(by_name.get(ev, {}).get("meta-type") == "event",
              "query-qmp-schema lacks event %s" % ev)
    arg = by_name[by_name["migrate-incoming"]["arg-type"]]
    check({"name": "uri", "type": "str"} in arg["members"],
          "migrate-incoming arguments in the schema: %r" % arg)
    # Return types a client can rely on: what query-status answers.
    ret = by_name.get(by_name["query-status"]["ret-type"], {})
    members = {m["name"] for m in ret.get("members", [])}
    check(ret.get("meta-type") == "object" and
          {"running", "status"} <= members,
          "query-status returns %r in the schema" % ret)
    status_type = [m["type"] for m in ret["members"]
                   if m["name"] == "status"][0]
    states = by_name.get(status_type, {}).get("values", [])
    for st in ("running", "paused", "inmigrate", "postmigrate"):
        check(st in states, "RunState in the schema lacks %r: %r" %
              (st, states))
    # Every type a command or event names is in the schema.
    for e in schema:
        for k in ("arg-type", "ret-type", "element-type"):
            if k in e:
                check(e[k] in by_name, "schema: %s names type %r, not "
                      "in the schema" % (e["name"], e[k]))
    err = side.error("x-no-such-command")
    check(err["class"] == "CommandNotFound", "unknown command: %r" % err)
    err = side.error("migrate-set-capabilities", {"capabilities": [
        {"capability": "no-such-capability", "state": False}]})
    check(err["class"] == "GenericError" and err["desc"] ==
          "Parameter 'capability' does not accept value "
          "'no-such-capability'", "unknown capability: %r" % err)


def check_final(kind, info):
    check(info.get("status") == "completed", "%s: status %r" %
          (kind, info))
    for k in ("total-time", "downtime", "setup-time"):
        check(isinstance(info.get(k), int) and info[k] >= 0,
              "%s: final %s: %r" % (kind, k, info))
    ram = info.get("ram", {})
    for k in RAM_FIELDS:
        want = (int, float) if k == "mbps" else int
        check(isinstance(ram.get(k), want) and ram[k] >= 0,
              "%s: final ram.%s: %r" % (kind, k, ram))
    check(ram["remaining"] == 0, "%s: ram.remaining %r once completed" %
          (kind, ram["remaining"]))
    # QEMU's total counts its ROMs too.
    check(MEMORY_MIB << 20 <= ram["total"] < (MEMORY_MIB + 16) << 20,
          "%s: ram.total %r" % (kind, ram["total"]))
    check(ram["normal"] > 0 and ram["normal-bytes"] == ram["normal"] *
          ram.get("page-size", 4096), "%s: normal pages %r" % (kind, ram))
    check(ram["precopy-bytes"] + ram["downtime-bytes"] <=
          ram["transferred"] and ram["precopy-bytes"] > 0 and
          ram["downtime-bytes"] > 0, "%s: precopy/downtime bytes %r" %
          (kind, ram))
    # QEMU updates mbps once per 100 ms period: a migration shorter than
    # one (85 ms here, at times) ends with 0. ferry's is measured.
    check((ram["mbps"] > 0 or kind == "qemu") and
          ram["dirty-sync-count"] >= 1,
          "%s: mbps / dirty-sync-count %r" % (kind, ram))


def migrate(cluster, kind):
    """The libvirt sequence, the same for both VMMs."""
    dst = Side(cluster, kind, "dst", incoming=True)
    src = Side(cluster, kind, "src", incoming=False)
    miglib.wait_until(lambda: "heartbeat" in miglib.read_text(src.serial),
                      "%s guest heartbeat" % kind, miglib.BOOT_WAIT_S)
    for s in (src, dst):
        s.qmp.negotiate()
        s.cmd("migrate-set-capabilities", {"capabilities": CAPS})
        caps = {c["capability"]: c["state"] for c in
                s.cmd("query-migrate-capabilities")}
        check(caps.get("events") is True, "%s: events capability %r" %
              (kind, caps))
        check(not caps.get("multifd"), "%s: multifd %r" % (kind, caps))
    check(dst.cmd("query-status")["status"] == "inmigrate",
          "%s destination not inmigrate" % kind)
    check_vm_commands(src)
    src.cmd("migrate-set-parameters", {"downtime-limit": 300,
                                       "max-bandwidth": 0})
    uri = "tcp:127.0.0.1:%d" % free_port()
    dst.cmd("migrate-incoming", {"uri": uri})
    src.cmd("migrate", {"uri": uri})

    info, seen_active, gone = None, False, False
    end = time.monotonic() + miglib.MIG_WAIT_S
    while time.monotonic() < end:
        try:
            info = src.cmd("query-migrate")
        except (TestFailure, OSError):
            gone = True
            break
        if info.get("status") == "active":
            seen_active = True
            for k in ("transferred", "remaining", "total", "mbps"):
                check(k in info.get("ram", {}), "%s: active query-migrate "
                      "without ram.%s: %r" % (kind, k, info))
            check("expected-downtime" in info or "total-time" in info,
                  "%s: active figures %r" % (kind, info))
        if info.get("status") in miglib.FINAL:
            break
        time.sleep(0.05)
    # Both stay in postmigrate until quit: neither may go on its own.
    check(not gone, "%s source closed QMP before quit" % kind)
    check_final(kind, info)
    # The final figures on the source, then quit it: both keep it paused
    # in postmigrate until then.
    st = src.qmp.cmd("query-status")
    check(st.get("return", {}).get("status") == "postmigrate",
          "%s source status %r" % (kind, st))
    src.qmp.cmd("quit")
    rc = src.proc.wait()
    check(rc == 0, "%s source exit %s" % (kind, rc))

    statuses = [e["data"]["status"] for e in src.events("MIGRATION")]
    check(statuses[:1] == ["setup"] and "completed" in statuses and
          (seen_active or "active" in statuses),
          "%s: source MIGRATION events %r" % (kind, statuses))
    passes = [e["data"]["pass"] for e in src.events("MIGRATION_PASS")]
    # One per dirty sync, the final one included: 1..dirty-sync-count.
    check(passes == list(range(1, len(passes) + 1)) and
          passes[-1] == info["ram"]["dirty-sync-count"],
          "%s: MIGRATION_PASS events %r, dirty-sync-count %s" %
          (kind, passes, info["ram"].get("dirty-sync-count")))
    check(src.events("STOP"), "%s: no STOP event on the source" % kind)

    miglib.wait_until(lambda: dst.qmp.cmd("query-status")["return"]
                      ["status"] == "running", "%s destination running" %
                      kind)
    dinfo = dst.cmd("query-migrate")
    check(dinfo.get("status") == "completed", "%s destination "
          "query-migrate %r" % (kind, dinfo))
    check(dst.events("RESUME"), "%s: no RESUME on the destination" % kind)
    dst.cmd("quit")
    ev = dst.qmp.wait_event("SHUTDOWN")
    check(ev["data"] == {"guest": False, "reason": "host-qmp-quit"},
          "%s: SHUTDOWN %r" % (kind, ev))
    dst.proc.wait()
    print("%s: completed: %d ms, downtime %d ms, %d bytes (%d pre-copy, "
          "%d with the guest stopped), %d passes" %
          (kind, info["total-time"], info["downtime"],
           info["ram"]["transferred"], info["ram"]["precopy-bytes"],
           info["ram"]["downtime-bytes"], len(passes)))
    return info


def ferry_only(cluster):
    """ferry's answers where QEMU's model differs: no power button; true
    for a capability it lacks is refused. A reset answers as QEMU's (its
    effect is tested in test_reset.py)."""
    s = Side(cluster, "ferry", "solo", incoming=False)
    s.qmp.negotiate()
    err = s.error("system_powerdown")
    check(err["class"] == "CommandNotFound", "system_powerdown: %r" % err)
    r = s.qmp.cmd("system_reset")
    check(r == {"return": {}}, "system_reset: %r" % r)
    ev = s.qmp.wait_event("RESET")
    check(ev["data"] == {"guest": False, "reason": "host-qmp-system-reset"},
          "RESET event %r" % ev)
    err = s.error("migrate-set-capabilities", {"capabilities": [
        {"capability": "xbzrle", "state": True}]})
    check(err["class"] == "GenericError" and "xbzrle" in err["desc"],
          "xbzrle on: %r" % err)
    err = s.error("migrate-set-capabilities", {"capabilities": [
        {"capability": "events"}]})
    check(err["desc"] == "Parameter 'capabilities[0].state' is missing",
          "missing state: %r" % err)


def body(cluster):
    ferry_only(cluster)
    migrate(cluster, "ferry")
    if QEMU:
        migrate(cluster, "qemu")
    else:
        print("qemu-system-x86_64 not installed: ferry only")


if __name__ == "__main__":
    miglib.require(miglib.MEMSTRESS)
    miglib.run("qmp-interop", body)
