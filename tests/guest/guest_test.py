#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Boot the self-checking guests and judge them by what they print.

usage: guest_test.py CASE   (paths come from the environment, see meson.build)

QEMU cases run the images unmodified under qemu-system-x86_64 -kernel
(TCG) and skip (77) without it; VMM cases run them under ferry-vmm on
/dev/kvm (kvm_pvm here) and skip without a usable /dev/kvm or binaries.
Every run is bounded by a timeout; children are killed and temporary
directories removed on every path.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

SKIP = 77
RUN_TIMEOUT = 240       # s, per guest run: generous, TCG on a busy host
SOCKET_TIMEOUT = 20     # s, for ferry-dev to start listening

QEMU = shutil.which("qemu-system-x86_64")
MEMSTRESS = os.environ.get("FERRY_GUEST_MEMSTRESS", "")
DMASTRESS = os.environ.get("FERRY_GUEST_DMASTRESS", "")
FERRY_VMM = os.environ.get("FERRY_VMM", "")
FERRY_DEV = os.environ.get("FERRY_DEV", "")

# QEMU's isa-debug-exit turns value v into exit status (v << 1) | 1.
QEMU_PASS, QEMU_FAIL = 1, 3


class Failed(Exception):
    pass


def skip(reason):
    print("SKIP: " + reason, file=sys.stderr)
    sys.exit(SKIP)


def check(cond, msg, out=None):
    if not cond:
        if out is not None:
            sys.stderr.write("---- guest output ----\n" + out +
                             "---- end ----\n")
        raise Failed(msg)


def run(cmd):
    """Run cmd in its own process group; return (status, stdout)."""
    print("+ " + " ".join(cmd), file=sys.stderr)
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        sys.stderr.write(out.decode(errors="replace"))
        raise Failed("timed out after %d s: %s" % (RUN_TIMEOUT, cmd[0]))
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    sys.stderr.write(err.decode(errors="replace")[-4000:])
    return p.returncode, out.decode(errors="replace")


def qemu(image, append, smp=1):
    if not QEMU:
        skip("qemu-system-x86_64 not installed")
    if not os.path.exists(image):
        raise Failed("guest image missing: " + image)
    return run([QEMU, "-kernel", image, "-append", append,
                "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
                "-serial", "stdio", "-display", "none", "-no-reboot",
                "-m", "256", "-accel", "tcg", "-smp", str(smp)])


def kvm_usable():
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


def need_vmm():
    if not kvm_usable():
        skip("/dev/kvm not usable")
    if not FERRY_VMM or not os.access(FERRY_VMM, os.X_OK):
        skip("ferry-vmm not built")


def vmm(image, append, sockets=()):
    need_vmm()
    cmd = [FERRY_VMM, "--memory", "256M", "--cpus", "1", "--kernel", image,
           "--append", append, "--serial", "stdio"]
    for i, s in enumerate(sockets):
        cmd += ["--device", "vfio-user,socket=%s,id=dma%d" % (s, i)]
    return run(cmd)


def wait_listening(path, proc):
    deadline = time.monotonic() + SOCKET_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Failed("ferry-dev exited early (%d)" % proc.returncode)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return
        except OSError:
            time.sleep(0.05)
        finally:
            s.close()
    raise Failed("ferry-dev did not listen on " + path)


class Devices:
    """n ferry-dev servers in a private temp dir, always cleaned up;
    extra_args go to every one (e.g. ["--irq-mode", "intx"])."""

    def __init__(self, n, extra_args=()):
        self.n = n
        self.extra_args = list(extra_args)
        self.procs = []
        self.dir = None

    def __enter__(self):
        if not FERRY_DEV or not os.access(FERRY_DEV, os.X_OK):
            skip("ferry-dev not built")
        self.dir = tempfile.mkdtemp(prefix="ferry-guest-", dir="/tmp")
        try:
            self.sockets = []
            for i in range(self.n):
                path = os.path.join(self.dir, "d%d.sock" % i)
                p = subprocess.Popen([FERRY_DEV, "--socket", path] +
                                     self.extra_args,
                                     stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL,
                                     start_new_session=True)
                self.procs.append(p)
                wait_listening(path, p)
                self.sockets.append(path)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
        return False


def verdicts(name, out):
    return [l for l in out.splitlines()
            if re.match(r"^%s: (PASS|FAIL)\b" % name, l)]


def counters(line):
    return {k: int(v) for k, v in re.findall(r"\b(\w+)=(\d+)\b", line)}


def expect_pass(name, status, want_status, out):
    check(status == want_status,
          "%s: exit status %d, expected %d" % (name, status, want_status),
          out)
    v = verdicts(name, out)
    check(len(v) == 1, "%s: %d verdict lines, expected 1" % (name, len(v)),
          out)
    check(v[0].startswith(name + ": PASS "), "%s: not PASS: %s" %
          (name, v[0]), out)
    c = counters(v[0])
    check("max_stall_us" in c, "verdict without max_stall_us", out)
    return c


def expect_fail(name, status, want_status, reason, out):
    check(status == want_status,
          "%s: exit status %d, expected %d" % (name, status, want_status),
          out)
    v = verdicts(name, out)
    check(len(v) == 1, "%s: %d verdict lines, expected 1" % (name, len(v)),
          out)
    check(v[0].startswith("%s: FAIL %s" % (name, reason)),
          "%s: expected FAIL %s, got: %s" % (name, reason, v[0]), out)
    check("max_stall_us=" in v[0], "FAIL verdict without max_stall_us", out)
    return counters(v[0])


# ---- cases ------------------------------------------------------------

def case_qemu_memstress():
    status, out = qemu(MEMSTRESS, "seconds=3 pages=2048")
    c = expect_pass("memstress", status, QEMU_PASS, out)
    check(re.search(r"^memstress: start pages=2048 ", out, re.M),
          "no start line with pages=2048", out)
    check(re.search(r"^memstress: heartbeat t=\d+ rewrites=\d+", out, re.M),
          "no heartbeat line", out)
    # Every page written once at least, then verified by the final pass.
    check(c["pages"] == 2048 and c["rewrites"] >= 2048,
          "working set not covered", out)


def case_qemu_memstress_corrupt():
    # Negative control: the checker must notice a page changed behind it.
    status, out = qemu(MEMSTRESS, "seconds=20 pages=512 selftest_corrupt=1")
    expect_fail("memstress", status, QEMU_FAIL, "page_mismatch page=256 ",
                out)
    check(re.search(r"^memstress: page 256 \(addr 0x[0-9a-f]+\) word 100 "
                    r"generation \d+: expected 0x[0-9a-f]{16} found "
                    r"0x[0-9a-f]{16}$", out, re.M),
          "no page report line", out)


def case_qemu_memstress_fault():
    # A CPU exception in the workload is a FAIL verdict, not a hang.
    status, out = qemu(MEMSTRESS, "seconds=20 selftest_fault=1")
    expect_fail("memstress", status, QEMU_FAIL, "exception vector=14 ", out)
    check("cr2=0x10000000000 " in out, "fault address not reported", out)


def case_vmm_memstress_fault():
    status, out = vmm(MEMSTRESS, "seconds=20 selftest_fault=1")
    expect_fail("memstress", status, 1, "exception vector=14 ", out)
    check("cr2=0x10000000000 " in out, "fault address not reported", out)


def case_qemu_memstress_params():
    # Unknown keys and bad values are reported and ignored; an oversized
    # working set is clamped to RAM; the run still passes.
    status, out = qemu(MEMSTRESS, "seconds=1 bogus=1 rate=12x "
                       "pages=100000000 flag")
    c = expect_pass("memstress", status, QEMU_PASS, out)
    check("memstress: unknown parameter 'bogus=1' ignored" in out or
          "memstress: unknown parameter 'bogus' ignored" in out,
          "unknown key not reported", out)
    check("memstress: unknown parameter 'flag' ignored" in out,
          "word without '=' not reported", out)
    check("memstress: bad value '12x' for rate ignored" in out,
          "bad value not reported", out)
    m = re.search(r"pages=100000000 does not fit, using (\d+)", out)
    check(m, "clamp not reported", out)
    check(c["pages"] == int(m.group(1)) and 0 < c["pages"] < 65536,
          "clamped size not used", out)


def check_cpu_lines(name, out, cpus):
    """Every AP's summary line, with work done and IPIs taken."""
    lines = re.findall(r"^%s: cpu (\d+): (.*)$" % name, out, re.M)
    check([int(n) for n, _ in lines] == list(range(1, cpus)),
          "per-CPU lines %r, expected CPUs 1..%d" %
          ([n for n, _ in lines], cpus - 1), out)
    for n, rest in lines:
        c = counters(rest)
        check(c["rewrites"] > 0 and c["ipis"] > 0,
              "cpu %s did no work or took no IPI: %s" % (n, rest), out)
    return lines


def case_qemu_memstress_smp():
    # cpus=4 under -smp 4: three APs started with INIT-SIPI-SIPI, each
    # rewriting its share and taking the BSP's IPIs, all exactly.
    status, out = qemu(MEMSTRESS, "seconds=3 pages=2048 cpus=4", smp=4)
    c = expect_pass("memstress", status, QEMU_PASS, out)
    check(c["cpus"] == 4 and c["pages"] == 2048 and c["rewrites"] >= 2048,
          "not all 4 CPUs over the working set", out)
    check_cpu_lines("memstress", out, 4)


def case_qemu_memstress_smp_missing():
    # More CPUs asked of the guest than the machine has: the AP that
    # does not exist never comes up, and the guest says which.
    status, out = qemu(MEMSTRESS, "seconds=3 cpus=4", smp=2)
    expect_fail("memstress", status, QEMU_FAIL, "ap_start cpu=2:", out)


def case_qemu_memstress_smp_ipi():
    # Negative control of the per-CPU interrupt check: an IPI counted as
    # sent but never sent must be reported lost, on that CPU.
    status, out = qemu(MEMSTRESS, "seconds=20 cpus=2 selftest_ipi=1", smp=2)
    expect_fail("memstress", status, QEMU_FAIL, "ipi_lost cpu=1 sent=2 "
                "taken=1 ", out)


def case_qemu_dmastress():
    status, out = qemu(DMASTRESS, "seconds=3 pages=256")
    c = expect_pass("dmastress", status, QEMU_PASS, out)
    check("dmastress: no ferry-dma device found; running the memory part "
          "only" in out, "no-device notice missing", out)
    check(c["devices"] == 0 and c["jobs"] == 0 and c["rewrites"] >= 256,
          "counters wrong without a device", out)
    check(re.search(r"^dmastress: heartbeat t=\d+ jobs=0 bytes=0 irqs=0 ",
                    out, re.M), "no heartbeat line", out)


def case_qemu_dmastress_devices():
    # devices=N is a requirement: finding a different number is a FAIL.
    status, out = qemu(DMASTRESS, "seconds=1 devices=1")
    expect_fail("dmastress", status, QEMU_FAIL, "device_count found=0 "
                "expected=1", out)


def case_qemu_dmastress_irq():
    # irq= without a device is accepted and ignored (memory part only);
    # a mode that does not exist is a FAIL naming the parameter.
    status, out = qemu(DMASTRESS, "seconds=1 pages=256 irq=intx")
    c = expect_pass("dmastress", status, QEMU_PASS, out)
    check(re.search(r"^dmastress: start .* irq=intx$", out, re.M),
          "start line without irq=intx", out)
    check("dmastress: no ferry-dma device found; running the memory part "
          "only" in out, "no-device notice missing", out)
    check(c["devices"] == 0 and c["jobs"] == 0, "counters wrong", out)
    status, out = qemu(DMASTRESS, "seconds=1 pages=256 irq=bogus")
    expect_fail("dmastress", status, QEMU_FAIL, "irq=bogus: must be auto, "
                "msix, msi or intx ", out)


def case_qemu_dmastress_corrupt():
    status, out = qemu(DMASTRESS, "seconds=20 pages=200 selftest_corrupt=1")
    expect_fail("dmastress", status, QEMU_FAIL, "page_mismatch page=100 ",
                out)


def case_vmm_memstress():
    status, out = vmm(MEMSTRESS, "seconds=2")
    c = expect_pass("memstress", status, 0, out)
    check(c["rewrites"] >= 4096, "working set not covered", out)


def case_vmm_memstress_corrupt():
    status, out = vmm(MEMSTRESS, "seconds=20 pages=512 selftest_corrupt=1")
    expect_fail("memstress", status, 1, "page_mismatch page=256 ", out)


def case_vmm_dmastress():
    with Devices(2) as d:
        status, out = vmm(DMASTRESS, "seconds=3 devices=2 batch=8",
                          d.sockets)
    c = expect_pass("dmastress", status, 0, out)
    check(c["devices"] == 2, "not both devices used", out)
    check(c["jobs"] > 0 and c["bytes"] > 0, "no DMA jobs done", out)
    # One interrupt per batch per device, all delivered.
    check(c["irqs"] > 0 and c["irqs"] * 8 <= c["jobs"] + 16,
          "interrupt count implausible", out)
    check(len(re.findall(r"^dmastress: device \d: ", out, re.M)) == 2,
          "device lines missing", out)
    # irq=auto on ferry-dev's default (MSI-X): vectors 0x40 + 2d, +1.
    for n in range(2):
        check(re.search(r"^dmastress: device %d: .* irq=msix vectors=0x%x,"
                        r"0x%x cpu=0$" % (n, 0x40 + 2 * n, 0x41 + 2 * n),
                        out, re.M), "device %d: no irq=msix line" % n, out)


def ferry_dev_has_irq_mode():
    if not FERRY_DEV or not os.access(FERRY_DEV, os.X_OK):
        skip("ferry-dev not built")
    p = subprocess.run([FERRY_DEV, "--help"], stdin=subprocess.DEVNULL,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=SOCKET_TIMEOUT)
    return b"--irq-mode" in p.stdout


def case_vmm_dmastress_irq():
    # MSI and level INTx end to end: two devices each, irq=auto picks
    # what the device offers; every interrupt counted exactly (the
    # guest's final check against IRQS_RAISED). An explicit mode the
    # device lacks is a FAIL naming it.
    need_vmm()
    if not ferry_dev_has_irq_mode():
        skip("ferry-dev without --irq-mode")
    for mode, what in (("msi", r"vectors=0x%x,0x%x"),
                       ("intx", r"line=(\d+) vector=0x[0-9a-f]+")):
        with Devices(2, ["--irq-mode", mode]) as d:
            status, out = vmm(DMASTRESS, "seconds=3 devices=2 batch=8",
                              d.sockets)
        c = expect_pass("dmastress", status, 0, out)
        check(c["devices"] == 2 and c["jobs"] > 0 and c["irqs"] > 0,
              "%s: no work or no interrupts" % mode, out)
        for n in range(2):
            pat = what % (0x40 + 2 * n, 0x41 + 2 * n) if mode == "msi" \
                else what
            check(re.search(r"^dmastress: device %d: .* irq=%s %s cpu=0$" %
                            (n, mode, pat), out, re.M),
                  "device %d: no irq=%s line" % (n, mode), out)
        if mode == "intx":
            check("spurious" in c, "intx verdict without spurious=", out)
    with Devices(1, ["--irq-mode", "intx"]) as d:
        status, out = vmm(DMASTRESS, "seconds=3 irq=msi", d.sockets)
    expect_fail("dmastress", status, 1, "no_msi dev=0 ", out)
    # An MSI-X device has no interrupt pin: INTx is refused, not waited
    # for.
    with Devices(1) as d:
        status, out = vmm(DMASTRESS, "seconds=3 irq=intx", d.sockets)
    expect_fail("dmastress", status, 1, "no_intx dev=0 pin=0", out)


def case_vmm_dmastress_corrupt():
    with Devices(1) as d:
        status, out = vmm(DMASTRESS, "seconds=20 selftest_corrupt=1",
                          d.sockets)
    expect_fail("dmastress", status, 1, "data_mismatch dev=0 op=COPY ", out)
    check(re.search(r"^dmastress: dev 0 COPY cookie=\d+ len=\d+: dst byte "
                    r"\d+ expected 0x[0-9a-f]{2} found 0x[0-9a-f]{2}$",
                    out, re.M), "no mismatch report line", out)


def qmp_command(sock, f, cmd):
    sock.sendall((json.dumps({"execute": cmd}) + "\n").encode())
    while True:
        line = f.readline()
        check(line, "QMP connection closed")
        msg = json.loads(line)
        if "event" in msg:
            continue
        check("return" in msg, "QMP %s failed: %s" % (cmd, msg))
        return


def case_vmm_memstress_stall():
    # The guest measures its own pause: stop the VM for STOP_S through
    # QMP; the TSC keeps running, so the guest must report a stall at
    # least that long (a lower bound enforced by the test itself).
    need_vmm()
    stop_s = 1.5
    wd = tempfile.mkdtemp(prefix="ferry-guest-", dir="/tmp")
    qmp_path = os.path.join(wd, "qmp.sock")
    serial = os.path.join(wd, "serial.txt")
    cmd = [FERRY_VMM, "--memory", "256M", "--kernel", MEMSTRESS,
           "--append", "seconds=6", "--qmp", "unix:" + qmp_path,
           "--serial", "file:" + serial]
    print("+ " + " ".join(cmd), file=sys.stderr)
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        text = ""
        # The first heartbeat proves the sampling loop runs (the start
        # line comes before the initial fill, which is not sampled).
        while "memstress: heartbeat" not in text:
            check(p.poll() is None and time.monotonic() < deadline,
                  "guest did not start", text)
            time.sleep(0.05)
            if os.path.exists(serial):
                with open(serial, errors="replace") as f:
                    text = f.read()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(SOCKET_TIMEOUT)
        s.connect(qmp_path)
        with s, s.makefile("r") as f:
            check("QMP" in json.loads(f.readline()), "no QMP greeting")
            qmp_command(s, f, "qmp_capabilities")
            qmp_command(s, f, "stop")
            time.sleep(stop_s)
            qmp_command(s, f, "cont")
        status = p.wait(timeout=RUN_TIMEOUT)
        with open(serial, errors="replace") as f:
            out = f.read()
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        shutil.rmtree(wd, ignore_errors=True)
    c = expect_pass("memstress", status, 0, out)
    check(c["max_stall_us"] >= stop_s * 1e6 * 0.95,
          "max_stall_us=%d below the %.1f s pause" % (c["max_stall_us"],
                                                      stop_s), out)


CASES = {name[len("case_"):].replace("_", "-"): fn
         for name, fn in globals().items() if name.startswith("case_")}


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in CASES:
        print("usage: guest_test.py {%s}" % ",".join(sorted(CASES)),
              file=sys.stderr)
        return 2
    try:
        CASES[sys.argv[1]]()
    except Failed as e:
        print("FAIL: " + str(e), file=sys.stderr)
        return 1
    print("ok " + sys.argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
