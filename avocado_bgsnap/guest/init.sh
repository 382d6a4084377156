#!/bin/busybox sh
# /init of the embedded avocado-bgsnap guest (busybox initramfs, no disk).
# It prepares a quiet, stable memory environment for the workload and
# keeps a root shell on the serial console (ttyS0) forever.
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /run /tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
# Kernel messages would interleave with the host's serial session.
dmesg -n 1
# Keep the workload's pages on the guest-physical frames they got at fill
# time: no THP collapse, no compaction of mlocked pages, no NUMA moves.
echo never > /sys/kernel/mm/transparent_hugepage/enabled 2>/dev/null
echo 0 > /proc/sys/vm/compact_unevictable_allowed 2>/dev/null
echo 0 > /proc/sys/kernel/numa_balancing 2>/dev/null
hostname bgsnap-guest
export PATH=/bin:/sbin
export PS1='bgsnap-guest# '
# The marker is assembled at run time, so the kernel command line and any
# echoed text never contain it literally.
m=GUEST; echo "BGSNAP-$m-READY"
while true; do
    setsid cttyhack sh
done
