#!/bin/sh
# Install the Debian 12 packages ferry needs to build, test, fuzz and run
# its demo, if any is missing. Safe to run repeatedly: it only calls apt
# when something is absent. Needs root (or sudo) for the install itself.
set -eu

PKGS="build-essential meson ninja-build pkg-config python3 libjson-c-dev
libcmocka-dev systemtap-sdt-dev clang llvm libclang-rt-14-dev binutils
qemu-system-x86 cpio kmod xz-utils libelf1 gnuplot-nox"

missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" ||
		missing="$missing $p"
done
[ -z "$missing" ] && exit 0

echo "ferry: installing missing Debian packages:$missing"
SUDO=""
if [ "$(id -u)" != 0 ]; then
	command -v sudo >/dev/null 2>&1 || {
		echo "ferry: need root to install:$missing" >&2
		exit 1
	}
	SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing
