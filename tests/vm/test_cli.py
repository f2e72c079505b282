# SPDX-License-Identifier: BSD-3-Clause
"""Bad command lines and bad configurations give a clear message and exit
status 2; the crafted-kernel generator is proven by a positive control."""
import os
import shutil
import struct
import subprocess

import vmlib
from vmlib import check

MB_MAGIC = 0x1BADB002


def mb_elf(paddr, memsz=None, code=None, machine=3, with_header=True):
    """A minimal ELF32 multiboot kernel: one PT_LOAD at paddr."""
    # mov eax, 0; out 0xf4, eax; hlt  -> exit status 0
    code = code if code is not None else bytes.fromhex("b800000000e7f4f4")
    hdr = struct.pack("<III", MB_MAGIC, 0, (-MB_MAGIC) & 0xffffffff) \
        if with_header else b""
    body = hdr + code
    ehsize, phsize = 52, 32
    off = ehsize + phsize
    entry = paddr + len(hdr)
    eh = (b"\x7fELF" + bytes([1, 1, 1]) + bytes(9) +
          struct.pack("<HHIIIIIHHHHHH", 2, machine, 1, entry, ehsize, 0, 0,
                      ehsize, phsize, 1, 40, 0, 0))
    ph = struct.pack("<IIIIIIII", 1, off, paddr, paddr, len(body),
                     memsz or len(body), 7, 4)
    return eh + ph + body


def run_vmm(args, timeout=vmlib.TIMEOUT):
    p = subprocess.run([vmlib.VMM] + args, stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=timeout)
    vmlib.check_sanitizer(p.stderr.decode(), " ".join(args))
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def main(wd, vmms):
    k = vmlib.MBTEST
    sock = wd.join("q.sock")
    good = wd.join("good.elf")
    with open(good, "wb") as f:
        f.write(mb_elf(0x100000))

    # Positive controls: the plain command line and the crafted kernel run.
    rc, _, err = run_vmm(["--kernel", good])
    check(rc == 0, "crafted kernel: rc %s: %s" % (rc, err))
    rc, out, _ = run_vmm(["--help"])
    check(rc == 0 and "Usage: ferry-vmm" in out, "--help")

    def write(name, data):
        path = wd.join(name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    notmb = write("notmb.elf", mb_elf(0x100000, with_header=False))
    raw = write("raw.bin", struct.pack("<III", MB_MAGIC, 0,
                                       (-MB_MAGIC) & 0xffffffff) + bytes(64))
    elf64 = write("m64.elf", mb_elf(0x100000, machine=62))
    overlap = write("overlap.elf", mb_elf(0x8000))
    toobig = write("big.elf", mb_elf(0x100000, memsz=0x7fffffff))
    notsock = write("notsock", b"x")

    cases = [
        ([], "--kernel ELF is required"),
        (["--kernel", k, "--bogus"], "unknown option '--bogus'"),
        (["--kernel"], "needs an argument"),
        (["--kernel", k, "stray"], "unexpected argument 'stray'"),
        (["--kernel", k, "--memory", "lots"], "--memory 'lots'"),
        (["--kernel", k, "--memory", "1K"], "between 2M and 1T"),
        (["--kernel", k, "--cpus", "0"], "--cpus '0'"),
        (["--kernel", k, "--cpus", "9999"], "--cpus '9999'"),
        (["--kernel", k, "--cpus", "two"], "--cpus 'two'"),
        (["--kernel", k, "--qmp", sock], "expected unix:PATH"),
        (["--kernel", k, "--serial", "tcp:1"], "expected stdio or file:PATH"),
        (["--kernel", k, "--device", "virtio-net"],
         "the device types are 'vfio-user' and 'vfio-pci'"),
        (["--kernel", k, "--device", "vfio-pci"],
         "needs host=ADDR or sysfsdev=PATH"),
        (["--kernel", k, "--device", "vfio-pci,host=../x"],
         "host= wants a PCI address"),
        (["--kernel", k, "--device", "vfio-pci,host=01:00.0,iommufd=maybe"],
         "unknown property 'iommufd=maybe'"),
        (["--kernel", k, "--device", "vfio-pci,host=01:00.0,x"],
         "'x' is not NAME=VALUE"),
        # A host device that is not there, and one with no VFIO driver
        # (the host bridge has no IOMMU group on these machines).
        (["--kernel", k, "--device", "vfio-pci,host=00:1f.7,id=gone"],
         "device gone (/sys/bus/pci/devices/0000:00:1f.7)"),
        (["--kernel", k, "--device",
          "vfio-pci,sysfsdev=/sys/bus/pci/devices/0000:00:00.0,id=hb"],
         "device hb"),
        (["--kernel", k, "--device", "vfio-user,socket=/x"],
         "needs socket=PATH and id=NAME"),
        (["--kernel", k, "--device", "vfio-user,socket=/x,id=a,colour=red"],
         "unknown property 'colour=red'"),
        (["--kernel", k, "--device", "vfio-user,socket=/x,id=a",
          "--device", "vfio-user,socket=/y,id=a"], "duplicate id 'a'"),
        (["--kernel", wd.join("missing.elf")], "cannot open kernel"),
        (["--kernel", wd.path], "not a regular file"),
        (["--kernel", notmb], "no multiboot header"),
        (["--kernel", raw], "not an ELF file"),
        (["--kernel", elf64], "not a 32-bit x86 ELF"),
        (["--kernel", overlap], "overlaps the multiboot info area"),
        (["--kernel", toobig, "--memory", "64M"], "does not fit in guest RAM"),
        (["--kernel", k, "--qmp", "unix:" + notsock], "not a socket"),
        (["--kernel", k, "--device",
          "vfio-user,socket=%s,id=dev0" % wd.join("nobody.sock")],
         "device dev0"),
    ]
    for args, want in cases:
        rc, _, err = run_vmm(args)
        check(rc == 2, "%s: exit %s, want 2 (%s)" % (args, rc, err))
        check(want in err, "%s: message %r lacks %r" % (args, err, want))
        check(err.startswith("ferry-vmm: "), "%s: unprefixed error" % args)
    check(os.path.exists(notsock), "a non-socket QMP path was removed")

    # /dev/kvm that is not KVM, in a private mount namespace.
    if shutil.which("unshare"):
        p = subprocess.run(
            ["unshare", "--mount", "sh", "-c",
             "mount --bind /dev/null /dev/kvm && exec \"$0\" --kernel \"$1\"",
             vmlib.VMM, k], capture_output=True, timeout=vmlib.TIMEOUT)
        err = p.stderr.decode()
        if "mount" not in err and "unshare" not in err:
            check(p.returncode == 2, "fake /dev/kvm: rc %s" % p.returncode)
            check("/dev/kvm" in err, "fake /dev/kvm message: %r" % err)


vmlib.run(main)
