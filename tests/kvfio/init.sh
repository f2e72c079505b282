#!/bin/sh
# /init of the kvfio guest (copied into the initramfs by tests/kvfio/run.sh).
#
# Loads the VFIO modules, creates two mtty mdevs, binds QEMU's edu device to
# vfio-pci, runs /bin/kvfio-test against them and reports its exit status as
# "KVFIO-EXIT <rc>" on the console, then powers the VM off.
# Setup failures print "KVFIO-SETUP-FAIL <what>" and "KVFIO-EXIT 1".
# run.sh writes /etc/kvfio.env: KVFIO_IOMMUFD (on|off), KVFIO_MODULES (load
# order), KVFIO_LIBPATH (LD_LIBRARY_PATH for the test binary).

/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

UUID_A=8e4f4c2a-6d0b-4f0e-9c61-3a1d0e6f0a01
UUID_B=8e4f4c2a-6d0b-4f0e-9c61-3a1d0e6f0a02
MTTY_TYPE=/sys/class/mdev_bus/mtty/mdev_supported_types/mtty-2

finish() {
	echo "KVFIO-EXIT $1"
	# Console writes are buffered in the tty layer: give the UART time to
	# drain before the power goes.
	sync
	sleep 1
	poweroff -f
	sleep 10 # poweroff -f does not return; never let /init exit (panic)
}

fail() {
	echo "KVFIO-SETUP-FAIL $*"
	finish 1
}

mount -t proc proc /proc || fail "mount /proc"
mount -t sysfs sysfs /sys || fail "mount /sys"
mount -t devtmpfs devtmpfs /dev || fail "mount /dev"

[ -r /etc/kvfio.env ] || fail "/etc/kvfio.env missing"
# shellcheck source=/dev/null
. /etc/kvfio.env

for m in $KVFIO_MODULES; do
	insmod "/lib/modules/kvfio/$m.ko" || fail "insmod $m"
done

[ -c /dev/vfio/vfio ] || fail "/dev/vfio/vfio missing"
if [ "$KVFIO_IOMMUFD" = on ]; then
	[ -c /dev/iommu ] || fail "/dev/iommu missing"
fi

[ -d "$MTTY_TYPE" ] || fail "mdev type $MTTY_TYPE missing"
for u in $UUID_A $UUID_B; do
	echo "$u" >"$MTTY_TYPE/create" || fail "create mdev $u"
	[ -d "/sys/bus/mdev/devices/$u" ] || fail "mdev $u not on /sys/bus/mdev"
done

EDU=
for d in /sys/bus/pci/devices/*; do
	if [ "$(cat "$d/vendor")" = 0x1234 ] && [ "$(cat "$d/device")" = 0x11e8 ]; then
		EDU=${d##*/}
		break
	fi
done
[ -n "$EDU" ] || fail "edu PCI device (1234:11e8) not found"
PCI=/sys/bus/pci/devices/$EDU
[ -e "$PCI/iommu_group" ] || fail "edu $EDU has no IOMMU group (intel-iommu off?)"
if [ -e "$PCI/driver" ]; then
	echo "$EDU" >"$PCI/driver/unbind" || fail "unbind edu $EDU"
fi
echo vfio-pci >"$PCI/driver_override" || fail "driver_override edu $EDU"
echo "$EDU" >/sys/bus/pci/drivers_probe || fail "drivers_probe edu $EDU"
drv=$(readlink "$PCI/driver")
[ "${drv##*/}" = vfio-pci ] || fail "edu $EDU not bound to vfio-pci (driver: ${drv:-none})"
grp=$(readlink "$PCI/iommu_group")
[ -c "/dev/vfio/${grp##*/}" ] || fail "/dev/vfio/${grp##*/} (edu group) missing"
if [ "$KVFIO_IOMMUFD" = on ]; then
	ls "$PCI"/vfio-dev/vfio* >/dev/null 2>&1 || fail "edu $EDU has no vfio-dev cdev"
fi

LD_LIBRARY_PATH=$KVFIO_LIBPATH /bin/kvfio-test --iommufd "$KVFIO_IOMMUFD" \
	--mdev "/sys/bus/mdev/devices/$UUID_A" \
	--mdev "/sys/bus/mdev/devices/$UUID_B" \
	--pci "$PCI"
finish $?
