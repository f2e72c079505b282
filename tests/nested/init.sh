#!/bin/sh
# /init of tests/nested/run.sh's guest: load KVM, run the one command,
# report its exit status as "NESTED-EXIT N" and power off.
/bin/busybox --install -s /bin
export PATH=/bin
finish() {
	echo "NESTED-EXIT $1"
	sync
	poweroff -f
	sleep 10
}
setup_fail() {
	echo "nested-guest: $*"
	dmesg | tail -n 20
	finish "${2:-1}"
}
mount -t proc proc /proc || setup_fail "mount /proc"
mount -t sysfs sysfs /sys || setup_fail "mount /sys"
mount -t devtmpfs devtmpfs /dev || setup_fail "mount /dev"
# /tmp stays the initramfs's own (RAM already): files copied under it
# must not be hidden by a mount.
ip link set lo up || setup_fail "loopback up"
for m in irqbypass ccp kvm kvm-amd; do
	params=
	[ "$m" != kvm-amd ] || params=$(cat /etc/nested.kvm-amd)
	# No SVM in the emulated CPU: no KVM here, nothing to test (skip).
	# shellcheck disable=SC2086 # a word list
	insmod "/lib/modules/nested/$m.ko" $params ||
		setup_fail "insmod $m failed: no nested KVM with this QEMU" 77
done
[ -c /dev/kvm ] || mknod /dev/kvm c 10 232 || setup_fail "no /dev/kvm" 77
. /etc/nested.env
echo "nested-guest: KVM up after $(cut -d' ' -f1 /proc/uptime) s; running $(cat /etc/nested.cmd)"
eval "$(cat /etc/nested.cmd)" </dev/null 2>&1
finish $?
