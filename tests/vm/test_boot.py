# SPDX-License-Identifier: BSD-3-Clause
"""ferry-vmm boots multiboot kernels: the loader's hand-over (magic,
memory sizes, memory map incl. RAM above 4 GiB, command line), the exit
port, unclaimed I/O reads, several vCPUs, and a guest crash reported as
an error with a register dump."""
import vmlib
from vmlib import Vmm, check


def boot(wd, vmms, append=None, **kw):
    v = Vmm(wd, append=append, qmp=False, **kw)
    vmms.append(v)
    v.wait()
    return v


def main(wd, vmms):
    v = boot(wd, vmms)
    check(v.rc == 0, "default run exited %s" % v.rc)
    check("mbtest: PASS" in v.serial_text(), "no PASS on the console")
    check("ferry-vmm: guest exited with status 0" in v.stderr(),
          "exit line missing")
    # 64 MiB: 640 KiB low + (64 MiB - 1 MiB) above 1 MiB in the map.
    check("RAM 65152 KiB" in v.serial_text(), "memory map wrong for 64M")

    v = boot(wd, vmms, memory="4G", cpus=4)
    check(v.rc == 0, "4G/4 vCPU run exited %s" % v.rc)
    # 3 GiB below the PCI hole (minus the legacy hole) + 1 GiB at 4 GiB.
    check("RAM 4193920 KiB" in v.serial_text(),
          "high RAM missing from the memory map: " + v.serial_text())

    v = boot(wd, vmms, append="mode=exit:7")
    check(v.rc == 7, "exit port: status %s, want 7" % v.rc)
    check("guest exited with status 7" in v.stderr(), "exit line for 7")

    v = boot(wd, vmms, append="mode=probe")
    check(v.rc == 0, "unclaimed I/O probe failed: %s" % v.serial_text())

    # Negative control: a guest that crashes must not look like a pass.
    v = boot(wd, vmms, append="mode=triple")
    check(v.rc == 1, "crashing guest exited %s, want 1" % v.rc)
    check("rip" in v.stderr() and "cr0" in v.stderr(),
          "no register dump: " + v.stderr())


vmlib.run(main)
