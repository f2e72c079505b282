#!/bin/sh
# make demo: live-migrate a running VM that owns a busy vfio-user DMA
# device from one ferry-vmm to another, then show what happened.
#
#   ferry-dev A <-vfio-user- ferry-vmm (source, dmastress) ==tcp==> ferry-vmm (destination) -vfio-user-> ferry-dev B
#
# Leaves no process, socket or temp file behind.
set -u
B=${1:-build}
B=$(cd "$B" && pwd)
SECONDS_GUEST=${DEMO_SECONDS:-8}
DIR=$(mktemp -d /tmp/ferry-demo.XXXXXX)
PIDS=""

cleanup() {
	for p in $PIDS; do kill "$p" 2>/dev/null; done
	for p in $PIDS; do wait "$p" 2>/dev/null; done
	rm -rf "$DIR"
}
trap cleanup EXIT INT TERM

die() { echo "demo: $*" >&2; exit 1; }
wait_sock() {
	i=0
	while [ ! -S "$1" ]; do
		i=$((i + 1))
		[ $i -gt 100 ] && die "$1 did not appear"
		sleep 0.05
	done
}
free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

[ -r /dev/kvm ] || die "/dev/kvm is not usable here: ferry needs KVM"
for f in ferry-dev ferry-vmm ferryctl guest/dmastress.elf; do
	[ -e "$B/$f" ] || die "$B/$f missing: run make first"
done
PORT=$(free_port)

echo "== 1. two vfio-user device servers (ferry-dma, 16 MiB device memory)"
"$B/ferry-dev" --socket "$DIR/dev-a.sock" --device-memory 16M >"$DIR/dev-a.log" 2>&1 &
PIDS="$PIDS $!"
"$B/ferry-dev" --socket "$DIR/dev-b.sock" --device-memory 16M >"$DIR/dev-b.log" 2>&1 &
PIDS="$PIDS $!"
wait_sock "$DIR/dev-a.sock"; wait_sock "$DIR/dev-b.sock"

echo "== 2. source VM: 512 MiB, dmastress driving the device for ${SECONDS_GUEST} s"
"$B/ferry-vmm" --memory 512M --kernel "$B/guest/dmastress.elf" \
	--append "seconds=$SECONDS_GUEST pages=8192" \
	--device "vfio-user,socket=$DIR/dev-a.sock,id=dma0" \
	--qmp "unix:$DIR/src.qmp" --serial "file:$DIR/src.serial" \
	>"$DIR/src.log" 2>&1 &
SRC=$!; PIDS="$PIDS $SRC"
echo "== 3. destination VM waiting on tcp:127.0.0.1:$PORT"
"$B/ferry-vmm" --memory 512M --incoming "tcp:127.0.0.1:$PORT" \
	--device "vfio-user,socket=$DIR/dev-b.sock,id=dma0" \
	--qmp "unix:$DIR/dst.qmp" --serial "file:$DIR/dst.serial" \
	>"$DIR/dst.log" 2>&1 &
DST=$!; PIDS="$PIDS $DST"
wait_sock "$DIR/src.qmp"; wait_sock "$DIR/dst.qmp"
sleep 2
echo "   guest on the source says:"
grep heartbeat "$DIR/src.serial" | tail -1 | sed 's/^/     /'

echo "== 4. live migration while the device is busy (switchover-ack on)"
"$B/ferryctl" --qmp "$DIR/src.qmp" --switchover-ack migrate "tcp:127.0.0.1:$PORT"
MIG=$?

echo "== 5. the guest finishes on the destination"
wait "$SRC"; SRC_RC=$?
wait "$DST"; DST_RC=$?
echo "   source ferry-vmm exited $SRC_RC, destination exited $DST_RC (guest verdict)"
echo "   last lines the guest printed on the source:"
tail -1 "$DIR/src.serial" | sed 's/^/     /'
echo "   lines the guest printed on the destination:"
sed 's/^/     /' "$DIR/dst.serial" | tail -3
if [ $MIG -eq 0 ] && [ $DST_RC -eq 0 ] && grep -q "PASS" "$DIR/dst.serial"; then
	echo "== demo OK: the VM and its DMA device moved live; the guest found no lost memory, DMA result or interrupt"
	exit 0
fi
echo "== demo FAILED; logs:"
tail -5 "$DIR"/*.log
exit 1
