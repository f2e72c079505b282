# SPDX-License-Identifier: BSD-3-Clause
"""The USDT probes docs/tracing.md lists are in the binaries: readelf -n
shows one stapsdt note per probe site, provider "ferry"."""
import re
import shutil
import subprocess
import sys

# binary -> probes it must carry (docs/tracing.md)
WANT = {
    "ferry-vmm": ["migration_status", "migration_pass_start",
                  "migration_iteration", "migration_switchover_begin",
                  "migration_switchover_end", "migration_section_send",
                  "migration_section_recv", "device_state", "vfu_request",
                  "vfu_reply", "vcpu_exit"],
    "ferry-dev": ["server_msg_in", "server_mig_state", "server_dma"],
}


def probes(path):
    out = subprocess.run(["readelf", "-n", path], capture_output=True,
                         text=True, check=True).stdout
    # Each note: "stapsdt ... NT_STAPSDT", "Provider: ferry", "Name: x".
    return set(re.findall(r"Provider: ferry\s+Name: (\w+)", out))


def main():
    if not shutil.which("readelf"):
        print("SKIP: readelf (binutils) not installed")
        sys.exit(77)
    bad = []
    for path in sys.argv[1:]:
        name = path.rsplit("/", 1)[-1]
        have = probes(path)
        missing = sorted(set(WANT.get(name, [])) - have)
        if missing:
            bad.append("%s lacks %s (has %s)" % (name, missing,
                                                 sorted(have)))
        else:
            print("%s: %d probes: %s" % (name, len(have),
                                         " ".join(sorted(have))))
    if bad:
        print("FAIL: " + "; ".join(bad))
        sys.exit(1)


main()
