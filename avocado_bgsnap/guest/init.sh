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
# Kernel modules on demand: "bgsnap.modules=virtio_pci,virtio_balloon" on the
# kernel command line loads those, each after its dependencies (one line per
# module in /lib/modules/bgsnap.deps, "name: deps in load order", written by
# build.py).  Without the parameter nothing is loaded.  A module that cannot
# be loaded is an error line, and the ready marker is then withheld: the
# test asked for a device the guest cannot drive.
ready=1
load_module() {
    deps=$(grep "^$1:" /lib/modules/bgsnap.deps) || {
        echo "bgsnap-init: ERROR: unknown kernel module '$1' in bgsnap.modules" \
             "(this guest has: $(echo $(cut -d: -f1 /lib/modules/bgsnap.deps)))"
        return 1
    }
    for mod in ${deps#*:} $1; do
        [ -f /lib/modules/$mod.ko ] || continue  # built into the kernel
        grep -q "^$mod " /proc/modules && continue
        insmod /lib/modules/$mod.ko || {
            echo "bgsnap-init: ERROR: insmod $mod (for $1) failed"
            return 1
        }
    done
}
modules=
for arg in $(cat /proc/cmdline); do
    case "$arg" in bgsnap.modules=*) modules=${arg#bgsnap.modules=} ;; esac
done
if [ -n "$modules" ] && [ ! -f /lib/modules/bgsnap.deps ]; then
    echo "bgsnap-init: ERROR: bgsnap.modules=$modules asked, but this guest has no" \
         "kernel modules (a user-supplied kernel: build its drivers in)"
    ready=0
elif [ -n "$modules" ]; then
    for mod in $(echo "$modules" | tr ',-' ' _'); do
        load_module $mod || ready=0
    done
    [ $ready = 1 ] && echo "bgsnap-init: loaded kernel modules: $modules"
fi
# The marker is assembled at run time, so the kernel command line and any
# echoed text never contain it literally.
m=GUEST
if [ $ready = 1 ]; then
    echo "BGSNAP-$m-READY"
else
    echo "bgsnap-init: ERROR: not ready (see above); the shell stays up for debugging"
fi
while true; do
    setsid cttyhack sh
done
