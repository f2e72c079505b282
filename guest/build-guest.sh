#!/bin/sh
# SPDX-License-Identifier: BSD-3-Clause
#
# Build one freestanding guest image, outside the project's compile flags
# (no sanitizers, no PIE): compile, link at 1 MiB with link.ld, then
# convert to ELF32 because multiboot loaders (QEMU -kernel) refuse ELF64.
#
# usage: build-guest.sh CC OBJCOPY OUT.elf LINKER_SCRIPT INCDIR... -- SRC...
set -eu

cc=$1 objcopy=$2 out=$3 ldscript=$4
shift 4
incs=
while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do
	incs="$incs -I$1"
	shift
done
[ "$#" -gt 0 ] && shift

cflags="-std=gnu11 -m64 -O2 -g -ffreestanding -fno-pic -fno-pie -nostdlib
	-mno-red-zone -fno-stack-protector -mgeneral-regs-only
	-fno-asynchronous-unwind-tables -fno-tree-loop-distribute-patterns
	-fcf-protection=none -mcmodel=small
	-Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes
	-Wno-unused-parameter"

objdir=$out.objs
rm -rf "$objdir"
mkdir -p "$objdir"
objs=
for src in "$@"; do
	obj=$objdir/$(basename "$src" | tr . _).o
	# shellcheck disable=SC2086
	$cc $cflags $incs -c "$src" -o "$obj"
	objs="$objs $obj"
done
# shellcheck disable=SC2086
$cc -m64 -nostdlib -static -no-pie -Wl,--build-id=none \
	-Wl,-z,max-page-size=0x1000 -Wl,-z,noexecstack -Wl,--no-warn-rwx-segments \
	-T "$ldscript" -o "$out.elf64" $objs
$objcopy -O elf32-i386 "$out.elf64" "$out"
