# SPDX-License-Identifier: BSD-3-Clause
"""QMP protocol: greeting, mandatory negotiation, QEMU-style errors for
unknown commands, bad JSON, bad members and argument types, id echo,
events to every negotiated client; the socket keeps working after each
error."""
import json
import socket

import vmlib
from vmlib import Qmp, Vmm, check


def err_of(r, cls, desc_part):
    check("error" in r, "expected an error, got %r" % r)
    check(r["error"]["class"] == cls, "class %r, want %r" %
          (r["error"]["class"], cls))
    check(desc_part in r["error"]["desc"], "desc %r lacks %r" %
          (r["error"]["desc"], desc_part))


def main(wd, vmms):
    v = Vmm(wd, append="mode=spin")
    vmms.append(v)
    v.wait_qmp()
    q = Qmp(v.qmp_path)
    g = q.greeting
    check("QMP" in g and g["QMP"]["capabilities"] == [] and
          "qemu" in g["QMP"]["version"], "greeting %r" % g)

    # Before negotiation only qmp_capabilities is accepted.
    err_of(q.cmd("query-status"), "CommandNotFound",
           "Expecting capabilities negotiation")
    err_of(q.cmd("qmp_capabilities", {"enable": "oob"}), "GenericError",
           "Invalid parameter type for 'enable', expected: array")
    err_of(q.cmd("qmp_capabilities", {"enable": ["oob"]}), "GenericError",
           "Capability 'oob' not available")
    q.negotiate()
    err_of(q.cmd("qmp_capabilities"), "CommandNotFound",
           "negotiation is already complete")

    err_of(q.cmd("no-such-command"), "CommandNotFound",
           "The command no-such-command has not been found")
    err_of(q.cmd("stop", {"force": True}), "GenericError",
           "Parameter 'force' is unexpected")
    q.send_raw('{"execute": 42}\n')
    err_of(q.reply(), "GenericError", "'execute' must be a string")
    q.send_raw('{"arguments": {}}\n')
    err_of(q.reply(), "GenericError", "lacks member 'execute'")
    q.send_raw('{"execute": "stop", "arguments": [1]}\n')
    err_of(q.reply(), "GenericError", "'arguments' must be an object")
    q.send_raw('{"execute": "stop", "colour": 1}\n')
    err_of(q.reply(), "GenericError", "member 'colour' is unexpected")
    q.send_raw('[1, 2]\n')
    err_of(q.reply(), "GenericError", "must be a JSON object")
    q.send_raw('{"execute": "query-status"]\n')
    err_of(q.reply(), "GenericError", "JSON parse error")
    q.send_raw(b'{"execute": "' + b"x" * (70 * 1024))
    err_of(q.reply(), "GenericError", "message too long")
    q.send_raw('"\n')  # ends the oversized string; resync at newline

    # Still usable after all that, with id echoed (any JSON type).
    r = q.cmd("query-status", id={"seq": 7})
    check(r.get("id") == {"seq": 7}, "id not echoed: %r" % r)
    check(r["return"]["status"] == "running" and r["return"]["running"],
          "status %r" % r)
    # Two messages in one write, no newline between them.
    q.send_raw('{"execute":"query-version","id":1}{"execute":"query-kvm",'
               '"id":2}')
    r1, r2 = q.reply(), q.reply()
    check(r1["id"] == 1 and r1["return"]["package"].startswith("ferry"),
          "query-version %r" % r1)
    check(r2["id"] == 2 and r2["return"]["enabled"], "query-kvm %r" % r2)
    names = {c["name"] for c in q.cmd("query-commands")["return"]}
    for n in ("qmp_capabilities", "query-status", "stop", "cont", "quit",
              "query-pci", "query-version", "query-commands"):
        check(n in names, "query-commands lacks " + n)
    pci = q.cmd("query-pci")["return"]
    check(pci[0]["bus"] == 0 and pci[0]["devices"][0]["id"] ==
          {"vendor": 0x8086, "device": 0x29c0}, "query-pci %r" % pci)

    # Events go to every negotiated client, not to a fresh one.
    q2 = Qmp(v.qmp_path)
    q2.negotiate()
    q3 = Qmp(v.qmp_path)  # never negotiates
    check(q.cmd("stop") == {"return": {}}, "stop")
    for c in (q, q2):
        e = c.wait_event("STOP")
        check("seconds" in e["timestamp"] and
              "microseconds" in e["timestamp"], "timestamp %r" % e)
    check(q.cmd("cont") == {"return": {}}, "cont")
    q2.wait_event("RESUME")
    err_of(q3.cmd("query-status"), "CommandNotFound", "Expecting")
    check(not q3.events, "un-negotiated client got events %r" % q3.events)

    # A client that vanishes mid-message does not disturb the others.
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(v.qmp_path)
    s.sendall(b'{"execute": "qmp_capabilities"')
    s.close()
    check(q2.cmd("query-status")["return"]["running"], "after vanish")

    check(q.cmd("quit") == {"return": {}}, "quit")
    e = q.wait_event("SHUTDOWN")
    check(e["data"] == {"guest": False, "reason": "host-qmp-quit"},
          "SHUTDOWN data %r" % e)
    check(v.wait() == 0, "exit status after quit %s" % v.rc)
    for c in (q, q2, q3):
        c.close()
    json.dumps(e)


vmlib.run(main)
