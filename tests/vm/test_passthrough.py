#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""Passthrough end to end: ferry-vmm runs the dmastress guest against one
or more ferry-dev device servers (real KVM).

usage: test_passthrough.py FERRY_DEV FERRY_VMM DMASTRESS_ELF CASE
CASE: one | two | four-large | server-death | unreachable

four-large: four devices with 128 MiB of device memory each (a 128 MiB
BAR2 and a 4 MiB BAR0 per device) must all fit the 1 GiB PCI window, which
they do only if each device's BARs are placed largest first.

Exit 0 pass, 1 fail, 77 skip (no usable /dev/kvm or guest image).
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

SKIP = 77
SOCKET_WAIT_S = 10      # a device server creating its socket
RUN_TIMEOUT_S = 300     # a whole guest run (kvm_pvm is slow at boot)
EXIT_WAIT_S = 30        # ferry-vmm leaving after quit/SIGTERM
DEATH_NOTICE_S = 30     # the disconnect error showing up
GUEST_SECONDS = 5       # dmastress run length
GUEST_TIMEOUT_S = 10    # dmastress: no progress this long is a FAIL

VERDICT_RE = re.compile(r'\b(PASS|FAIL)\b(.*)$')


def fail(msg):
    print(f'FAIL: {msg}', file=sys.stderr)
    sys.exit(1)


def skip(msg):
    print(f'SKIP: {msg}', file=sys.stderr)
    sys.exit(SKIP)


class Run:
    """Owns every child and the temp dir; cleans up on all paths."""

    def __init__(self, ferry_dev, ferry_vmm, kernel):
        self.ferry_dev = ferry_dev
        self.ferry_vmm = ferry_vmm
        self.kernel = kernel
        self.dir = tempfile.mkdtemp(prefix='ferry-pt-', dir='/tmp')
        self.devs = []
        self.vmm = None

    def close(self):
        procs = ([self.vmm] if self.vmm else []) + self.devs
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            try:
                p.wait(timeout=EXIT_WAIT_S)
            except subprocess.TimeoutExpired:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def start_device(self, name, extra=()):
        sock = os.path.join(self.dir, f'{name}.sock')
        log = open(os.path.join(self.dir, f'{name}.log'), 'w')
        p = subprocess.Popen([self.ferry_dev, '--socket', sock,
                              '--name', name] + list(extra),
                             stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.devs.append(p)
        deadline = time.monotonic() + SOCKET_WAIT_S
        while not os.path.exists(sock):
            if p.poll() is not None:
                fail(f'ferry-dev {name} exited with {p.returncode}: '
                     f'{self.device_log(name)}')
            if time.monotonic() > deadline:
                fail(f'ferry-dev {name}: no socket after {SOCKET_WAIT_S}s')
            time.sleep(0.05)
        return p, sock

    def device_log(self, name):
        try:
            with open(os.path.join(self.dir, f'{name}.log')) as f:
                return f.read()
        except OSError:
            return ''

    def start_vmm(self, devices, append=None):
        args = [self.ferry_vmm, '--kernel', self.kernel, '--memory', '128M',
                '--qmp', 'unix:' + os.path.join(self.dir, 'qmp.sock')]
        if append:
            args += ['--append', append]
        for dev_id, sock in devices:
            args += ['--device', f'vfio-user,socket={sock},id={dev_id}']
        self.out = open(os.path.join(self.dir, 'vmm.out'), 'w+')
        self.err = open(os.path.join(self.dir, 'vmm.err'), 'w+')
        self.vmm = subprocess.Popen(args, stdout=self.out, stderr=self.err)
        return self.vmm

    def vmm_output(self):
        self.out.flush()
        self.err.flush()
        with open(self.out.name) as o, open(self.err.name) as e:
            return o.read(), e.read()


def check_sanitizers(err):
    for marker in ('AddressSanitizer', 'LeakSanitizer', 'runtime error:'):
        if marker in err:
            fail(f'sanitizer report from ferry-vmm\n{err}')


def verdict(stdout):
    found = None
    for line in stdout.splitlines():
        m = VERDICT_RE.search(line)
        if m:
            found = (m.group(1), dict(re.findall(r'(\w+)=(-?\d+)',
                                                 m.group(2))), line)
    return found


def expect_pass(run, nr_devs, dev_args=()):
    devices = []
    for i in range(nr_devs):
        _, sock = run.start_device(f'fdma{i}', dev_args)
        devices.append((f'fdma{i}', sock))
    vmm = run.start_vmm(devices, f'seconds={GUEST_SECONDS} '
                        f'devices={nr_devs} timeout={GUEST_TIMEOUT_S}')
    try:
        rc = vmm.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        out, err = run.vmm_output()
        fail(f'guest did not finish in {RUN_TIMEOUT_S}s\n{out}\n{err}')
    out, err = run.vmm_output()
    check_sanitizers(err)
    v = verdict(out)
    if rc != 0 or not v or v[0] != 'PASS':
        fail(f'ferry-vmm exit {rc}, verdict {v and v[2]!r}\n'
             f'--- stdout\n{out}\n--- stderr\n{err}')
    counters = v[1]
    for key in ('jobs', 'irqs'):
        if int(counters.get(key, 0)) <= 0:
            fail(f'verdict line lacks {key}>0: {v[2]!r}')
    for i, p in enumerate(run.devs):
        if p.poll() is not None:
            fail(f'ferry-dev fdma{i} died: {run.device_log(f"fdma{i}")}')
    print(f'ok: {nr_devs} device(s): {v[2]}')


def expect_server_death(run):
    dev, sock = run.start_device('fdma0')
    # Long enough that the guest is mid-run when the server dies; its
    # own progress timeout then makes it report FAIL and leave.
    vmm = run.start_vmm([('fdma0', sock)],
                        f'seconds={RUN_TIMEOUT_S} devices=1 '
                        f'timeout={GUEST_TIMEOUT_S}')
    # Let the guest get going: wait until DMA jobs are completing.
    deadline = time.monotonic() + RUN_TIMEOUT_S
    busy = re.compile(r'heartbeat .*jobs=[1-9]')
    while not busy.search(run.vmm_output()[0]):
        if vmm.poll() is not None:
            out, err = run.vmm_output()
            fail(f'ferry-vmm exited early ({vmm.returncode})\n{out}\n{err}')
        if time.monotonic() > deadline:
            fail('guest never got DMA jobs going')
        time.sleep(0.05)
    dev.kill()
    dev.wait(timeout=EXIT_WAIT_S)

    want = re.compile(r'device fdma0: vfio-user server .*disconnected')
    deadline = time.monotonic() + DEATH_NOTICE_S
    while not want.search(run.vmm_output()[1]):
        if time.monotonic() > deadline:
            out, err = run.vmm_output()
            fail(f'no disconnect error within {DEATH_NOTICE_S}s\n{err}')
        time.sleep(0.05)

    # The guest may fail on its own (all-ones reads) or keep going: either
    # way ferry-vmm must still obey a quit and must not die of a signal.
    how = 'on its own'
    try:
        vmm.wait(timeout=GUEST_TIMEOUT_S + EXIT_WAIT_S)
    except subprocess.TimeoutExpired:
        how = 'after SIGTERM'
        vmm.send_signal(signal.SIGTERM)
    try:
        rc = vmm.wait(timeout=EXIT_WAIT_S)
    except subprocess.TimeoutExpired:
        fail(f'ferry-vmm hung after the device died '
             f'(no exit {EXIT_WAIT_S}s after SIGTERM)')
    if rc < 0:
        fail(f'ferry-vmm died of signal {-rc}')
    out, err = run.vmm_output()
    check_sanitizers(err)
    v = verdict(out)
    print(f'ok: server death noticed, ferry-vmm exit {rc} {how}, '
          f'guest: {v and v[2]!r}')


def expect_unreachable(run):
    sock = os.path.join(run.dir, 'nobody.sock')
    vmm = run.start_vmm([('fdma0', sock)])
    try:
        rc = vmm.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        fail('ferry-vmm hung on an unreachable device socket')
    out, err = run.vmm_output()
    check_sanitizers(err)
    if rc != 2:
        fail(f'exit {rc}, expected 2\n{err}')
    if 'fdma0' not in err or 'cannot connect' not in err or sock not in err:
        fail(f'unclear error message: {err!r}')
    print(f'ok: {err.strip()}')


def main():
    if len(sys.argv) != 5:
        print(__doc__, file=sys.stderr)
        return 1
    ferry_dev, ferry_vmm, kernel, case = sys.argv[1:]
    if not os.access('/dev/kvm', os.R_OK | os.W_OK):
        skip('/dev/kvm is not available')
    if not os.path.exists(kernel):
        skip(f'guest image {kernel} was not built')
    # meson's timeout sends SIGTERM: leave through the cleanup below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    run = Run(ferry_dev, ferry_vmm, kernel)
    try:
        if case == 'one':
            expect_pass(run, 1)
        elif case == 'two':
            expect_pass(run, 2)
        elif case == 'four-large':
            expect_pass(run, 4, ['--device-memory', '128M'])
        elif case == 'server-death':
            expect_server_death(run)
        elif case == 'unreachable':
            expect_unreachable(run)
        else:
            fail(f'unknown case {case}')
    finally:
        run.close()
    return 0


if __name__ == '__main__':
    sys.exit(main())
