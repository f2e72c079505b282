#!/usr/bin/env python3
# SPDX-License-Identifier: BSD-3-Clause
"""The man pages (docs/man/) say what the programs accept.

usage: check_man.py MANDIR PROGRAM...

For each PROGRAM, docs/man/PROGRAM.1 must name every long option its
--help lists (and, for ferryctl, every command), and render with groff
without a warning. Exit 0 pass, 1 fail.
"""
import os
import re
import shutil
import subprocess
import sys


def help_text(prog):
    p = subprocess.run([prog, "--help"], capture_output=True, text=True,
                       timeout=30)
    return p.stdout + p.stderr


def main():
    mandir, progs = sys.argv[1], sys.argv[2:]
    bad = []
    for prog in progs:
        name = os.path.basename(prog)
        page = os.path.join(mandir, name + ".1")
        if not os.path.exists(page):
            bad.append("%s: no man page %s" % (name, page))
            continue
        with open(page) as f:
            man = f.read().replace("\\-", "-")
        text = help_text(prog)
        opts = sorted(set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", text)))
        words = [w for w in opts if w not in man]
        if name == "ferryctl":
            cmds = re.findall(r"^  ([a-z][a-z-]+)", text.split("Options:")[0],
                              re.M)
            words += [c for c in cmds if c not in man]
        if words:
            bad.append("%s: the man page lacks %s" % (name, ", ".join(words)))
        print("%s: %d options checked" % (name, len(opts)))
        if shutil.which("groff"):
            p = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", page],
                               capture_output=True, text=True, timeout=30)
            if p.returncode or p.stderr.strip():
                bad.append("%s: groff: %s" % (name, p.stderr.strip()))
    for b in bad:
        print("FAIL: " + b)
    return 1 if bad else 0


sys.exit(main())
