#!/bin/bash
# Run a test program against real Linux kernel VFIO: Debian's Linux 6.12
# booted under QEMU TCG with an emulated Intel IOMMU, two mtty mdevs and
# QEMU's edu PCI device bound to vfio-pci. See --help.
set -euo pipefail
export LC_ALL=C
export PATH="$PATH:/usr/sbin:/sbin"

KSERIES=6.12   # Debian meta package linux-image-$KSERIES-amd64 (bookworm security)
RECIPE=1       # bump when the way modules are built or picked changes
LEGACY_MODS="vfio vfio_iommu_type1 mdev vfio-pci-core vfio-pci mtty"
IOMMUFD_MODS="iommufd $LEGACY_MODS"

usage() {
	cat <<EOF
usage: $0 --config legacy|iommufd --test-bin PATH [--cache DIR]
          [--timeout SECS] [--verbose]
       $0 --prepare-kernel [--cache DIR]

Boots Debian's Linux $KSERIES kernel under qemu-system-x86_64 -accel tcg
(q35, intel-iommu, edu) with a busybox initramfs whose /init loads the
VFIO modules, creates two mtty mdevs, binds edu to vfio-pci and runs

  /bin/kvfio-test --iommufd off|on --mdev /sys/bus/mdev/devices/<UUID_A> \\
      --mdev /sys/bus/mdev/devices/<UUID_B> --pci /sys/bus/pci/devices/<BDF>

PATH (a host binary, with the shared libraries ldd lists) is copied in.

  --config legacy    Debian's vfio, vfio_iommu_type1, mdev, vfio-pci(-core)
                     modules (group/container/type1) + mtty built out of tree
  --config iommufd   the same modules rebuilt from linux-source-$KSERIES with
                     CONFIG_IOMMUFD=m and CONFIG_VFIO_DEVICE_CDEV=y, plus
                     iommufd: /dev/iommu and /dev/vfio/devices/vfioN exist
  --test-bin PATH    the test program (required)
  --prepare-kernel   only download and unpack the kernel (and busybox) into
                     the cache, print the directory (boot/vmlinuz-*,
                     lib/modules/*, bin/busybox) and exit: the nested-KVM
                     harness (tests/nested/run.sh) boots the same kernel
  --cache DIR        downloads, unpacked kernel, built modules
                     (default \${FERRY_KVFIO_CACHE:-\$HOME/.cache/ferry-kvfio})
  --timeout SECS     bound on the QEMU run (default 300)
  --verbose          show build output and the kernel's boot messages

Exit status: the test program's (0 pass, 77 skip, anything else 1); 1 if the
guest printed no KVFIO-EXIT line (timeout, panic) or any setup step failed;
77 only when the kernel packages cannot be obtained (no mirror reachable).
The kernel ABI comes from 'apt-cache depends linux-image-$KSERIES-amd64';
FERRY_KVFIO_KABI=<abi> (e.g. 6.12.117+deb12-amd64) overrides it.
EOF
}

CONFIG='' TEST_BIN='' TIMEOUT=300 VERBOSE=0 PREPARE=0
CACHE=${FERRY_KVFIO_CACHE:-${HOME:-/nonexistent}/.cache/ferry-kvfio}
while [ $# -gt 0 ]; do
	case $1 in
	--config) CONFIG=${2:-}; shift 2 || break ;;
	--config=*) CONFIG=${1#*=}; shift ;;
	--test-bin) TEST_BIN=${2:-}; shift 2 || break ;;
	--test-bin=*) TEST_BIN=${1#*=}; shift ;;
	--cache) CACHE=${2:-}; shift 2 || break ;;
	--cache=*) CACHE=${1#*=}; shift ;;
	--timeout) TIMEOUT=${2:-}; shift 2 || break ;;
	--timeout=*) TIMEOUT=${1#*=}; shift ;;
	--verbose|-v) VERBOSE=1; shift ;;
	--prepare-kernel) PREPARE=1; shift ;;
	--help|-h) usage; exit 0 ;;
	*) echo "kvfio: unknown argument '$1' (see --help)" >&2; exit 1 ;;
	esac
done

say() { echo "kvfio: $*" >&2; }
die() { say "FAIL: $*"; exit 1; }
skip() { say "SKIP: $*"; exit 77; }

if [ "$PREPARE" = 0 ]; then
	case $CONFIG in
	legacy) IOMMUFD=off; WANT=$LEGACY_MODS ;;
	iommufd) IOMMUFD=on; WANT=$IOMMUFD_MODS ;;
	*) die "--config legacy|iommufd is required${CONFIG:+, not '$CONFIG'} (see --help)" ;;
	esac
	[ -n "$TEST_BIN" ] || die "--test-bin PATH is required (see --help)"
	[ -f "$TEST_BIN" ] && [ -x "$TEST_BIN" ] || die "test binary '$TEST_BIN' is not an executable file"
	TEST_BIN=$(readlink -f "$TEST_BIN")
fi
[[ $TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "--timeout wants a positive number of seconds"
[ -n "$CACHE" ] || die "--cache wants a directory"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
INIT_SH=$HERE/init.sh
[ -r "$INIT_SH" ] || die "$INIT_SH missing"

need=""
for t in qemu-system-x86_64 cpio xz modinfo strip make gcc dpkg-deb tar ldd flock timeout; do
	command -v "$t" >/dev/null 2>&1 || need="$need $t"
done
[ -z "$need" ] || die "missing host tools:$need (run scripts/install-deps.sh)"

T0=$SECONDS
TMP=$(mktemp -d "${TMPDIR:-/tmp}/ferry-kvfio.XXXXXX")
cleanup() { rm -rf "$TMP"; }
# timeout(1) runs QEMU in a process group of its own: signals meant for us
# (meson's killpg, ^C) are forwarded to it by hand.
on_signal() {
	local pid
	pid=$(cat "$TMP/qemu.pid" 2>/dev/null) || pid=""
	[ -z "$pid" ] || kill -TERM "$pid" 2>/dev/null || true
	exit "$1"
}
trap cleanup EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM
trap 'on_signal 129' HUP

# Build steps: output into a log unless --verbose; on failure show its tail.
STEPLOG=$TMP/step.log
step() { # step WHAT CMD...
	local what=$1
	shift
	if [ "$VERBOSE" = 1 ]; then
		"$@" >&2 || die "$what failed"
	else
		"$@" >"$STEPLOG" 2>&1 || {
			tail -n 40 "$STEPLOG" >&2
			die "$what failed"
		}
	fi
}

mkdir -p "$CACHE" || die "cannot create cache directory $CACHE"
CACHE=$(cd "$CACHE" && pwd)

# ---- kernel ABI ---------------------------------------------------------
KABI=${FERRY_KVFIO_KABI:-}
if [ -z "$KABI" ] && command -v apt-cache >/dev/null 2>&1; then
	KABI=$(timeout 60 apt-cache depends "linux-image-$KSERIES-amd64" 2>/dev/null |
		awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { sub(/^linux-image-/, "", $2); print $2; exit }') || KABI=""
fi
if [ -z "$KABI" ] && [ -r "$CACHE/last-kabi" ]; then
	KABI=$(cat "$CACHE/last-kabi")
	say "apt does not know linux-image-$KSERIES-amd64; using the cached kernel $KABI"
fi
[ -n "$KABI" ] || skip "cannot resolve linux-image-$KSERIES-amd64 (apt-get update? Debian bookworm-security in sources.list?)"
[[ $KABI =~ ^[0-9]+\.[0-9]+\.[0-9]+[-+.a-z0-9]*-amd64$ ]] || die "unexpected kernel ABI name '$KABI'"
KBASE=${KABI%-amd64}          # 6.12.117+deb12: names the -common headers and kbuild
KD=$CACHE/$KABI               # everything unpacked/built for this kernel
ROOT=$KD/root                 # dpkg-deb -x of image, headers, kbuild, busybox
KHDR=$ROOT/usr/src/linux-headers-$KABI
SRC=$KD/src/linux-source-$KSERIES

# One preparer at a time (meson runs both configs in parallel); the lock is
# released before QEMU starts.
exec 9>"$CACHE/lock"
if ! flock -n 9; then
	say "waiting for the cache lock ($CACHE/lock)"
	flock -w 1800 9 || die "cache lock $CACHE/lock still held after 1800 s"
fi

# ---- downloads ----------------------------------------------------------
DEBS=$CACHE/debs
deb_of() { # newest cached .deb of package $1 (empty if none)
	local f
	f=$(ls -v "$DEBS/$1"_*.deb 2>/dev/null | tail -n 1) || true
	echo "$f"
}
fetch() { # fetch PKG[=VER]...: apt-get download into $DEBS
	local d=$TMP/dl
	rm -rf "$d"
	mkdir -p "$d" "$DEBS"
	say "downloading $*"
	local rc=0
	(cd "$d" && timeout 1200 apt-get download -q "$@") >"$TMP/dl.log" 2>&1 || rc=$?
	if [ "$rc" != 0 ]; then
		cat "$TMP/dl.log" >&2
		# Unreachable mirror or unknown package: the kernel cannot be had
		# here (skip); anything else (disk full, ...) is a failure.
		if [ "$rc" = 124 ] || grep -q -E "Failed to fetch|Could not resolve|Temporary failure resolving|Could not connect|Unable to connect|Connection timed out|Network is unreachable|No route to host|Unable to locate package|Couldn't find any package|Can't select version" "$TMP/dl.log"; then
			return 1
		fi
		die "apt-get download $* failed"
	fi
	mv -f "$d"/*.deb "$DEBS"/
}

if [ ! -e "$ROOT/.ready" ]; then
	IMG=linux-image-$KABI-unsigned
	if [ -z "$(deb_of "$IMG")" ]; then
		fetch "$IMG" || skip "cannot download $IMG (no Debian mirror reachable?)"
	fi
	missing=()
	for p in "linux-headers-$KABI" "linux-headers-$KBASE-common" "linux-kbuild-$KBASE" busybox-static; do
		[ -n "$(deb_of "$p")" ] || missing+=("$p")
	done
	[ ${#missing[@]} = 0 ] || fetch "${missing[@]}" || skip "cannot download ${missing[*]} (no Debian mirror reachable?)"

	say "unpacking $KABI"
	rm -rf "$ROOT" "$ROOT.tmp"
	mkdir -p "$ROOT.tmp"
	for p in "$IMG" "linux-headers-$KABI" "linux-headers-$KBASE-common" "linux-kbuild-$KBASE" busybox-static; do
		step "unpack $p" nice dpkg-deb -x "$(deb_of "$p")" "$ROOT.tmp"
	done
	[ -f "$ROOT.tmp/boot/vmlinuz-$KABI" ] && [ -x "$ROOT.tmp/bin/busybox" ] || die "unexpected package contents in $ROOT.tmp"
	rm -rf "$ROOT.tmp/usr/share/doc" "$ROOT.tmp/usr/share/man"
	mv "$ROOT.tmp" "$ROOT"
	touch "$ROOT/.ready"
fi
echo "$KABI" >"$CACHE/last-kabi"
if [ "$PREPARE" = 1 ]; then
	echo "$ROOT"
	exit 0
fi

# ---- the source files the module builds need -----------------------------
SRC_MEMBERS=(drivers/vfio drivers/iommu/iommufd drivers/iommu/iommu-priv.h
	samples/vfio-mdev lib/interval_tree.c)
if [ ! -e "$KD/src/.ready" ]; then
	# linux-source has no ABI in its name: take the image's version.
	IMGDEB=$(deb_of "linux-image-$KABI-unsigned")
	VER=""
	[ -n "$IMGDEB" ] && VER=$(dpkg-deb -f "$IMGDEB" Version)
	[ -n "$VER" ] || VER=$(timeout 60 apt-cache show --no-all-versions "linux-image-$KABI-unsigned" 2>/dev/null |
		awk '$1 == "Version:" { print $2; exit }') || true
	[ -n "$VER" ] || skip "cannot tell the version of linux-image-$KABI-unsigned"
	SDEB=$DEBS/linux-source-${KSERIES}_${VER}_all.deb
	if [ ! -f "$SDEB" ]; then
		fetch "linux-source-$KSERIES=$VER" || skip "cannot download linux-source-$KSERIES=$VER (no Debian mirror reachable?)"
	fi
	[ -f "$SDEB" ] || die "linux-source-$KSERIES=$VER not found in $DEBS after download"
	say "extracting ${SRC_MEMBERS[*]} from linux-source-$KSERIES"
	rm -rf "$KD/src" "$KD/src.tmp"
	mkdir -p "$KD/src.tmp"
	# dpkg-deb --fsys-tarfile | tar x of the one tarball, then the members.
	step "unpack linux-source" sh -c 'nice dpkg-deb --fsys-tarfile "$1" | tar -x -C "$2" --wildcards "./usr/src/linux-source-*.tar.xz"' _ "$SDEB" "$KD/src.tmp"
	TARBALL=$(ls "$KD/src.tmp"/usr/src/linux-source-*.tar.xz)
	step "extract kernel sources" nice tar -xJf "$TARBALL" -C "$KD/src.tmp" \
		"${SRC_MEMBERS[@]/#/linux-source-$KSERIES/}"
	rm -rf "$KD/src.tmp/usr"
	mv "$KD/src.tmp" "$KD/src"
	touch "$KD/src/.ready"
fi

# ---- modules for the config --------------------------------------------
MODDIR=$KD/r$RECIPE-$CONFIG   # NAME.ko (decompressed, stripped) + order
kmake() { # kmake KDIR M: out-of-tree module build, no BTF (needs pahole)
	# The headers' Makefile includes the -common one by its absolute path.
	echo "include $ROOT/usr/src/linux-headers-$KBASE-common/Makefile" >"$1/Makefile"
	step "module build ($CONFIG)" timeout 1800 nice make -C "$1" M="$2" -j"$(nproc)" \
		CONFIG_DEBUG_INFO_BTF_MODULES= modules
}

if [ ! -e "$MODDIR/.ready" ]; then
	say "building modules for $CONFIG"
	B=$KD/build-$CONFIG
	rm -rf "$B" "$MODDIR" "$MODDIR.tmp"
	mkdir -p "$B"
	if [ "$CONFIG" = legacy ]; then
		KDIR=$KHDR
		mkdir -p "$B/mtty"
		cp "$SRC/samples/vfio-mdev/mtty.c" "$B/mtty/"
		echo 'obj-m := mtty.o' >"$B/mtty/Kbuild"
		kmake "$KDIR" "$B/mtty"
	else
		# A copy of the headers tree configured with IOMMUFD=m and
		# VFIO_DEVICE_CDEV=y (a sibling, so its relative links still hold).
		KDIR=$ROOT/usr/src/linux-headers-$KABI-kvfio-iommufd
		rm -rf "$KDIR"
		cp -a "$KHDR" "$KDIR"
		grep -q '^# CONFIG_IOMMUFD is not set$' "$KDIR/.config" || die "$KHDR/.config: expected IOMMUFD unset"
		sed -i -e 's/^# CONFIG_IOMMUFD is not set$/CONFIG_IOMMUFD=m/' \
			-e '/^# CONFIG_VFIO_DEVICE_CDEV is not set$/d' "$KDIR/.config"
		echo 'CONFIG_VFIO_DEVICE_CDEV=y' >>"$KDIR/.config"
		printf 'CONFIG_IOMMUFD=m\nCONFIG_VFIO_DEVICE_CDEV=y\n' >>"$KDIR/include/config/auto.conf"
		printf '#define CONFIG_IOMMUFD_MODULE 1\n#define CONFIG_VFIO_DEVICE_CDEV 1\n' \
			>>"$KDIR/include/generated/autoconf.h"
		# Our vfio/mdev/vfio-pci-core replace Debian's (struct vfio_device
		# changes layout): drop Debian's exports so CRCs come from our build.
		awk -F'\t' '$3 !~ /^drivers\/vfio\// && $3 !~ /^drivers\/iommu\/iommufd/' \
			"$KHDR/Module.symvers" >"$KDIR/Module.symvers"
		cp -a "$SRC/drivers/vfio" "$B/vfio"
		mkdir -p "$B/iommu" "$B/mtty"
		cp -a "$SRC/drivers/iommu/iommufd" "$B/iommu/iommufd"
		cp "$SRC/drivers/iommu/iommu-priv.h" "$B/iommu/"
		cp "$SRC/samples/vfio-mdev/mtty.c" "$B/mtty/"
		echo 'obj-m := mtty.o' >"$B/mtty/Kbuild"
		# The built-in kernel lacks CONFIG_INTERVAL_TREE_SPAN_ITER: compile
		# interval_tree_span_iter_* (unexported) into iommufd.ko.
		{
			printf '// SPDX-License-Identifier: GPL-2.0-only\n'
			printf '/* interval_tree_span_iter_* from lib/interval_tree.c (generated by ferry tests/kvfio/run.sh) */\n'
			printf '#include <linux/interval_tree.h>\n#include <linux/interval_tree_generic.h>\n#include <linux/compiler.h>\n'
			awk '/^#ifdef CONFIG_INTERVAL_TREE_SPAN_ITER/ { on = 1; next }
			     on && /^#endif/ { on = 0 }
			     on && !/^EXPORT_SYMBOL/' "$SRC/lib/interval_tree.c"
		} >"$B/iommu/iommufd/kvfio_span_iter.c"
		grep -q interval_tree_span_iter_first "$B/iommu/iommufd/kvfio_span_iter.c" || die "span iterator not found in lib/interval_tree.c"
		echo 'iommufd-y += kvfio_span_iter.o' >>"$B/iommu/iommufd/Makefile"
		echo 'obj-m += vfio/ iommu/iommufd/ mtty/' >"$B/Kbuild"
		kmake "$KDIR" "$B"
	fi

	# Pick each module from our build first, else Debian's; add what
	# modinfo -F depends asks for; order dependencies first.
	mkdir -p "$MODDIR.tmp"
	IMGMODS=$ROOT/lib/modules/$KABI/kernel
	find_mod() { # path of module $1 ('-' and '_' are the same)
		local a=${1//_/-} b=${1//-/_} f
		f=$(find "$B" "$IMGMODS" \( -name "$a.ko" -o -name "$b.ko" -o -name "$a.ko.xz" -o -name "$b.ko.xz" \) -print -quit)
		[ -n "$f" ] || die "module $1 not found (build $B, image $IMGMODS)"
		echo "$f"
	}
	ORDER=()
	declare -A SEEN=()
	visit() {
		local m=$1 f d deps
		[ -z "${SEEN[$m]:-}" ] || return 0
		SEEN[$m]=1
		f=$(find_mod "$m")
		deps=$(modinfo -F depends "$f")
		for d in ${deps//,/ }; do
			visit "$d"
		done
		local n
		n=$(basename "$f")
		n=${n%.xz}
		n=${n%.ko}
		case $f in
		*.xz) xz -dc "$f" >"$MODDIR.tmp/$n.ko" ;;
		*) cp "$f" "$MODDIR.tmp/$n.ko" ;;
		esac
		strip --strip-debug "$MODDIR.tmp/$n.ko"
		ORDER+=("$n")
	}
	for m in $WANT; do
		visit "$m"
	done
	# Sanity: every module matches the kernel.
	for n in "${ORDER[@]}"; do
		vm=$(modinfo -F vermagic "$MODDIR.tmp/$n.ko")
		[ "${vm%% *}" = "$KABI" ] || die "$n.ko has vermagic '$vm', not $KABI"
	done
	echo "${ORDER[*]}" >"$MODDIR.tmp/order"
	rm -rf "$B"
	mv "$MODDIR.tmp" "$MODDIR"
	touch "$MODDIR/.ready"
fi
VMLINUZ=$ROOT/boot/vmlinuz-$KABI
read -r -a MODS <"$MODDIR/order"
# Everything the run reads from the cache is immutable once .ready exists.
flock -u 9
exec 9>&-

# ---- ferry's spelling of the newer uAPI against the kernel's own --------
# lib/kvfio_uapi.h defines what Debian 12's 6.1 headers lack; compile
# uapi_check.c (static asserts) against this kernel's vfio.h/iommufd.h.
UAPI=$ROOT/usr/src/linux-headers-$KBASE-common/include/uapi/linux
mkdir -p "$TMP/uapi/linux"
cp "$UAPI/vfio.h" "$UAPI/iommufd.h" "$TMP/uapi/linux/" || die "no uapi headers in $UAPI"
gcc -fsyntax-only -D__user= -I"$TMP/uapi" -I"$HERE/../../lib" "$HERE/uapi_check.c" ||
	die "lib/kvfio_uapi.h disagrees with Linux $KABI's uapi headers"

# ---- initramfs -----------------------------------------------------------
R=$TMP/initramfs
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,etc,tmp,lib/modules/kvfio}
cp "$ROOT/bin/busybox" "$R/bin/busybox"
ln -s busybox "$R/bin/sh"
cp "$INIT_SH" "$R/init"
chmod 755 "$R/init"
for n in "${MODS[@]}"; do
	cp "$MODDIR/$n.ko" "$R/lib/modules/kvfio/"
done
cp "$TEST_BIN" "$R/bin/kvfio-test"
# Shared libraries at the paths ldd shows (the loader included); their
# directories become LD_LIBRARY_PATH (RUNPATHs like $ORIGIN do not survive
# the move to /bin).
LIBDIRS=""
if LDD=$(ldd "$TEST_BIN" 2>&1); then
	! printf '%s\n' "$LDD" | grep -q 'not found' || { printf '%s\n' "$LDD" >&2; die "ldd: $TEST_BIN needs libraries not found"; }
	while read -r lib; do
		[ -n "$lib" ] || continue
		lib=$(realpath -s "$lib")
		mkdir -p "$R$(dirname "$lib")"
		cp -L "$lib" "$R$lib"
		case ":$LIBDIRS:" in *":$(dirname "$lib"):"*) ;; *) LIBDIRS=${LIBDIRS:+$LIBDIRS:}$(dirname "$lib") ;; esac
	done < <(printf '%s\n' "$LDD" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
elif ! printf '%s\n' "$LDD" | grep -q 'not a dynamic executable'; then
	printf '%s\n' "$LDD" >&2
	die "ldd $TEST_BIN failed"
fi
cat >"$R/etc/kvfio.env" <<EOF
KVFIO_IOMMUFD=$IOMMUFD
KVFIO_MODULES="${MODS[*]}"
KVFIO_LIBPATH="$LIBDIRS"
EOF
(cd "$R" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) >"$TMP/initrd.cpio" ||
	die "cpio failed"

# ---- boot ----------------------------------------------------------------
APPEND="console=ttyS0 panic=-1 intel_iommu=on"
[ "$VERBOSE" = 1 ] || APPEND="$APPEND quiet"
LOG=$TMP/console.log
# qboot (QEMU's minimal firmware) boots -kernel as fast as SeaBIOS and
# prints nothing; SeaBIOS is the fallback.
BIOS=()
for d in /usr/share/qemu /usr/share/qemu-firmware /usr/local/share/qemu; do
	if [ -r "$d/qboot.rom" ]; then
		BIOS=(-bios "$d/qboot.rom")
		break
	fi
done
say "$CONFIG: kernel $KABI, modules: ${MODS[*]}; booting (prepared in $((SECONDS - T0)) s, timeout ${TIMEOUT} s)"
T1=$SECONDS
# In the background so that a signal's trap runs at once (bash defers traps
# while a foreground command runs).
(
	timeout -k 5 "$TIMEOUT" qemu-system-x86_64 -accel tcg -m 1024 -smp 1 \
		-nographic -nodefaults -serial stdio -no-reboot \
		-machine q35,kernel-irqchip=split -device intel-iommu,intremap=on \
		-device edu "${BIOS[@]}" \
		-kernel "$VMLINUZ" -initrd "$TMP/initrd.cpio" -append "$APPEND" \
		</dev/null 2>"$TMP/qemu.err" &
	echo $! >"$TMP/qemu.pid"
	qrc=0
	wait $! || qrc=$?
	echo "$qrc" >"$TMP/qemu.rc"
) | sed -u -e 's/\r//g' -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' -e 's/\x1b[c78]//g' | tee "$LOG" &
wait $! || true
qrc=$(cat "$TMP/qemu.rc" 2>/dev/null) || qrc="?"
rc=$(sed -n 's/^.*KVFIO-EXIT \([0-9][0-9]*\).*$/\1/p' "$LOG" | tail -n 1)
if [ -z "$rc" ]; then
	if [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
		why="timed out after $TIMEOUT s"
	else
		why="QEMU exited with status $qrc"
	fi
	{
		echo "kvfio: no KVFIO-EXIT line from the guest ($why); last 40 console lines:"
		tail -n 40 "$LOG"
		[ ! -s "$TMP/qemu.err" ] || { echo "kvfio: QEMU stderr:"; tail -n 20 "$TMP/qemu.err"; }
	} >&2
	exit 1
fi
say "$CONFIG: guest exit $rc (boot+test $((SECONDS - T1)) s, total $((SECONDS - T0)) s)"
case $rc in
0) exit 0 ;;
77) exit 77 ;;
*) exit 1 ;;
esac
