#!/bin/bash
# Run a test that needs /dev/kvm: directly where /dev/kvm is usable, else
# inside Debian's Linux 6.12 booted under QEMU TCG with an emulated AMD
# CPU (-cpu max has SVM and NPT), whose kvm_amd gives the test a real
# KVM -- nested, every instruction emulated by TCG. See --help.
set -euo pipefail
export LC_ALL=C
export PATH="$PATH:/usr/sbin:/sbin"

# kvm_amd needs kvm and ccp, kvm needs irqbypass (modinfo -F depends).
MODS="irqbypass ccp kvm kvm-amd"
PY=/usr/bin/python3

usage() {
	cat <<EOF
usage: $0 [--force] [--cpu MODEL] [--smp N] [--mem SIZE] [--timeout SECS]
          [--cache DIR] [--verbose] -- PROGRAM [ARG...]

Where /dev/kvm can be opened (and without --force), exec PROGRAM ARG...
Where it cannot: skip (77), unless FERRY_NESTED=1 is set in the
environment or --force is given; then boot Debian's Linux 6.12 (the kernel tests/kvfio/run.sh
caches) under qemu-system-x86_64 -accel tcg -cpu max -smp N, load
kvm_amd, and run PROGRAM there, with:
  - every host file named by an argument or by a FERRY_*, FERRYCTL environment
    variable copied in at the same path, with the shared libraries ldd
    lists, and the other *.py files beside a Python PROGRAM;
  - a PROGRAM ending in .py run by Debian's $PY (copied in with its
    standard library);
  - the FERRY_*, FERRYCTL, PYTHON*, ASAN_OPTIONS and UBSAN_OPTIONS variables.

  --force          boot the nested guest (even where /dev/kvm works)
  --cpu MODEL      QEMU's CPU model, one with SVM (default max)
  --smp N          vCPUs of the TCG machine (default 2)
  --mem SIZE       its RAM (default 3G)
  --timeout SECS   bound on the QEMU run (default 1500)
  --cache DIR      as tests/kvfio/run.sh's --cache

Exit status: PROGRAM's (77 = skip); 77 when the kernel cannot be had or
the emulated CPU gives no KVM; 1 if the guest never reported an exit.
Guest times are TCG times: a nested run checks correctness, not speed.
EOF
}

FORCE=0 CPU=max SMP=2 MEM=3G TIMEOUT=1500 VERBOSE=0 CACHE_ARGS=()
while [ $# -gt 0 ]; do
	case $1 in
	--force) FORCE=1; shift ;;
	--cpu) CPU=${2:-}; shift 2 || break ;;
	--smp) SMP=${2:-}; shift 2 || break ;;
	--mem) MEM=${2:-}; shift 2 || break ;;
	--timeout) TIMEOUT=${2:-}; shift 2 || break ;;
	--cache) CACHE_ARGS=(--cache "${2:-}"); shift 2 || break ;;
	--verbose|-v) VERBOSE=1; shift ;;
	--help|-h) usage; exit 0 ;;
	--) shift; break ;;
	*) echo "nested: unknown argument '$1' (see --help)" >&2; exit 1 ;;
	esac
done
[ $# -gt 0 ] || { echo "nested: no PROGRAM (see --help)" >&2; exit 1; }

say() { echo "nested: $*" >&2; }
die() { say "FAIL: $*"; exit 1; }
skip() { say "SKIP: $*"; exit 77; }

prog_cmd=("$@")
case $1 in *.py) prog_cmd=(python3 "$@") ;; esac

if [ "$FORCE" = 0 ]; then
	if python3 -c 'import os; os.close(os.open("/dev/kvm", os.O_RDWR))' 2>/dev/null; then
		exec "${prog_cmd[@]}"
	fi
	[ "${FERRY_NESTED:-0}" = 1 ] ||
		skip "/dev/kvm unusable; FERRY_NESTED=1 runs this in a nested KVM under QEMU TCG"
fi
[[ $SMP =~ ^[1-9][0-9]*$ ]] || die "--smp wants a positive number"
[[ $TIMEOUT =~ ^[1-9][0-9]*$ ]] || die "--timeout wants a positive number of seconds"
for t in qemu-system-x86_64 cpio xz strip ldd timeout; do
	command -v "$t" >/dev/null 2>&1 || die "missing host tool $t (run scripts/install-deps.sh)"
done
[ -x "$PY" ] || die "$PY missing (Debian's python3)"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
rc=0
ROOT=$(bash "$HERE/../kvfio/run.sh" --prepare-kernel "${CACHE_ARGS[@]}") || rc=$?
[ "$rc" = 0 ] || { [ "$rc" = 77 ] && skip "no kernel to boot"; die "kernel preparation failed"; }
VMLINUZ=$(ls "$ROOT"/boot/vmlinuz-* | head -n 1)
KMODS=$(ls -d "$ROOT"/lib/modules/*/kernel | head -n 1)

T0=$SECONDS
TMP=$(mktemp -d "${TMPDIR:-/tmp}/ferry-nested.XXXXXX")
cleanup() { rm -rf "$TMP"; }
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

R=$TMP/root
mkdir -p "$R"/{bin,proc,sys,dev,etc,tmp,lib/modules/nested}
cp "$ROOT/bin/busybox" "$R/bin/busybox"
ln -s busybox "$R/bin/sh"
cp "$HERE/init.sh" "$R/init"
chmod 755 "$R/init"
for m in $MODS; do
	f=$(find "$KMODS" -name "$m.ko.xz" -print -quit)
	[ -n "$f" ] || die "$m.ko.xz not in $KMODS"
	xz -dc "$f" >"$R/lib/modules/nested/$m.ko"
	strip --strip-debug "$R/lib/modules/nested/$m.ko"
done

# copy_in PATH: the file at the same path, and for an ELF its libraries.
copy_in() {
	local p=$1 lib
	[ -e "$R$p" ] && return 0
	mkdir -p "$R$(dirname "$p")"
	cp -L "$p" "$R$p"
	if head -c 4 "$p" | grep -q ELF; then
		while read -r lib; do
			[ -e "$R$lib" ] || { mkdir -p "$R$(dirname "$lib")"; cp -L "$lib" "$R$lib"; }
		done < <(ldd "$p" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
	fi
}

if [[ $1 == *.py ]]; then
	copy_in "$PY"
	# The standard library, less what no test imports.
	PYLIB=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
	PYDYN=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["platstdlib"])')/lib-dynload
	mkdir -p "$R$PYLIB"
	tar -C "$PYLIB" --exclude=./test --exclude=./idlelib --exclude=./tkinter \
		--exclude=./ensurepip --exclude=./lib2to3 --exclude=./pydoc_data \
		--exclude='./config-*' --exclude=./site-packages \
		--exclude=./dist-packages --exclude=./lib-dynload -cf - . |
		tar -C "$R$PYLIB" -xf -
	for so in "$PYDYN"/*.so; do copy_in "$so"; done
	for f in "$(dirname "$(readlink -f "$1")")"/*.py; do copy_in "$(readlink -f "$f")"; done
	prog_cmd=("$PY" "$(readlink -f "$1")" "${@:2}")
fi

# Arguments and FERRY_* values that are host files travel too.
args=()
for a in "${prog_cmd[@]}"; do
	if [ -f "$a" ]; then
		a=$(readlink -f "$a")
		copy_in "$a"
	fi
	args+=("$a")
done
ENVF=$R/etc/nested.env
: >"$ENVF"
while IFS='=' read -r k v; do
	case $k in FERRY_*|FERRYCTL|PYTHON*|ASAN_OPTIONS|UBSAN_OPTIONS) ;; *) continue ;; esac
	[ -f "$v" ] && copy_in "$(readlink -f "$v")"
	printf 'export %s=%q\n' "$k" "$v" >>"$ENVF"
done < <(env)
printf 'cd %q\n' "$PWD" >>"$ENVF"
echo "${FERRY_NESTED_KVM_AMD:-}" >"$R/etc/nested.kvm-amd"
mkdir -p "$R$PWD"
printf '%q ' "${args[@]}" >"$R/etc/nested.cmd"

(cd "$R" && find . -mindepth 1 | sort | cpio -o -H newc --quiet -R 0:0) >"$TMP/initrd.cpio"
say "initramfs $(($(stat -c %s "$TMP/initrd.cpio") >> 20)) MiB; booting under TCG (-cpu $CPU -smp $SMP -m $MEM): ${args[*]}"

APPEND="console=ttyS0 panic=-1 quiet"
[ "$VERBOSE" = 0 ] || APPEND="console=ttyS0 panic=-1"
BIOS=()
[ -r /usr/share/qemu/qboot.rom ] && BIOS=(-bios /usr/share/qemu/qboot.rom)
set +e
timeout -k 10 "$TIMEOUT" qemu-system-x86_64 -accel tcg,thread=single -cpu "$CPU" \
	-smp "$SMP" -m "$MEM" -nographic -nodefaults -serial stdio -no-reboot \
	"${BIOS[@]}" -kernel "$VMLINUZ" -initrd "$TMP/initrd.cpio" \
	-append "$APPEND" -pidfile "$TMP/qemu.pid" </dev/null 2>"$TMP/qemu.err" |
	sed -u 's/\r$//' | tee "$TMP/console.log"
qrc=${PIPESTATUS[0]}
set -e
[ ! -s "$TMP/qemu.err" ] || { say "QEMU's stderr:"; cat "$TMP/qemu.err" >&2; }
rc=$(sed -n 's/^NESTED-EXIT \([0-9][0-9]*\)$/\1/p' "$TMP/console.log" | tail -n 1)
[ -n "$rc" ] || die "no NESTED-EXIT line after $((SECONDS - T0)) s (QEMU status $qrc: timeout or panic)"
say "exit status $rc after $((SECONDS - T0)) s"
exit "$rc"
