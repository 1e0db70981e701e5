#!/bin/bash
# vm.sh - run one script inside a throw-away Linux VM that has a real USB stack.
#
# The build machines' kernel has no USB and cannot load modules, so tests
# that need vhci_hcd, usbip-host, dummy_hcd gadgets or class drivers boot
# Debian's stock kernel under qemu instead.  The VM has no disk image: the
# host's / is shared read-only over 9p with a tmpfs overlay on top, so every
# host binary (and the freshly built p2pusb) is there, and writes vanish.
#
# Usage: tests/vm.sh [-K KERNEL] [-t TIMEOUT_SECONDS] [-q 'EXTRA QEMU ARGS']
#                    [-o OUTDIR] [-k] SCRIPT [ARGS...]
#        tests/vm.sh --install-deps     (apt-get the packages it needs)
#
#   SCRIPT   runs under bash in the guest, as root, cwd = its git repo (or
#            its own dir), stdin = /dev/null.  Its stdout/stderr come out on
#            our stdout; vm.sh exits with its exit code.
#   -K VER   the guest kernel: a full version from /boot/vmlinuz-VER (like
#            6.12.117+deb12-amd64), or its start up to a dot, dash or plus
#            (6.12, 6.1, 6.1.0-57): the newest such vmlinuz whose modules
#            are installed.  So -K 6.1 is Debian 12's 6.1 series, never
#            6.12.  Default: Debian 12's stock kernel, the one the package
#            linux-image-amd64 depends on (if that names no usable kernel:
#            the newest 6.1.*, else the newest of all, with a note).
#            linux-image-6.12-amd64 gives 6.12 (-K 6.12), whose vhci_hcd
#            times things differently.
#   -t N     kill the VM after N seconds (default 300) and fail.
#   -q ARGS  extra qemu arguments, split on whitespace (e.g. emulated USB
#            devices: '-device qemu-xhci,id=xhci -device usb-kbd,bus=xhci.0').
#   -o DIR   host dir shared read-write as /out in the guest (env P2PUSB_OUT);
#            kept after the run.  Without -o a temp dir is used and removed.
#            The kernel log of the run is always saved as DIR/kernel.log.
#   -k       also copy the kernel log to stderr after the run.
#
# Exit codes: SCRIPT's own, or 124 on timeout, 125 when the VM died without
# reporting one (kernel panic, oops: see the kernel log tail printed), 2 on
# bad usage or missing packages.
#
# Environment: P2PUSB_KERNEL=VER is -K VER (-K wins); P2PUSB_VM_MEM (MiB,
# 1024); P2PUSB_VM_BOOT_S (seconds a boot may take before it counts as
# hung, 120).
set -eu

PACKAGES="qemu-system-x86 linux-image-amd64 linux-image-6.12-amd64
          busybox-static kmod cpio xz-utils zstd usbip usbutils
          libusb-1.0-0-dev alsa-utils"
MARKER=P2PUSB-EXIT

die() { echo "vm.sh: $*" >&2; exit 2; }

if [ "${1:-}" = --install-deps ]; then
    # shellcheck disable=SC2086  # a list of names
    apt-get update -q || echo "vm.sh: apt-get update had errors; installing anyway"
    DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends $PACKAGES
    exit
fi

timeout_s=300
qemu_extra=""
outdir=""
show_klog=0
kernel_arg=${P2PUSB_KERNEL:-}
while getopts "K:t:q:o:kh" opt; do
    case $opt in
        K) kernel_arg=$OPTARG ;;
        t) timeout_s=$OPTARG ;;
        q) qemu_extra=$OPTARG ;;
        o) outdir=$OPTARG ;;
        k) show_klog=1 ;;
        *) sed -n '/^# Usage/,/^set -eu/s/^# \{0,1\}//p' "$0" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -ge 1 ] || die "usage: vm.sh [-K KERNEL] [-t SECS] [-q 'QEMU ARGS']" \
    "[-o OUTDIR] [-k] SCRIPT [ARGS...]"
case $timeout_s in ''|*[!0-9]*) die "-t wants whole seconds, not '$timeout_s'" ;; esac
case ${P2PUSB_VM_BOOT_S:-120} in ''|*[!0-9]*) die "P2PUSB_VM_BOOT_S wants whole seconds" ;; esac

script=$(realpath -e -- "$1" 2>/dev/null) || die "no such script: $1"
shift

for tool in qemu-system-x86_64 cpio gzip timeout; do
    command -v $tool >/dev/null || die "$tool missing; run: $0 --install-deps"
done
# The initramfs has no libc, so its busybox must be the static one.
if [ ! -x /bin/busybox ] || ldd /bin/busybox >/dev/null 2>&1; then
    die "/bin/busybox is missing or not static (busybox-static); run: $0 --install-deps"
fi

# --- pick the guest kernel: a vmlinuz whose modules are installed ----------
usable() { [ -r "/boot/vmlinuz-$1" ] && [ -f "/lib/modules/$1/modules.dep" ]; }
kernels() {  # every usable version, oldest first
    local k
    for k in $(printf '%s\n' /boot/vmlinuz-* | sed 's|^/boot/vmlinuz-||' | sort -V); do
        ! usable "$k" || echo "$k"
    done
}
# newest_kernel PREFIX: the newest usable version that is PREFIX itself or
# PREFIX followed by anything but a digit (6.1 takes 6.1.0-57, not 6.12.x).
newest_kernel() {
    local k found=""
    for k in $(kernels); do
        case $k in "$1"|"$1"[!0-9]*) found=$k ;; esac
    done
    [ -n "$found" ] && echo "$found"
}
# stock_kernel: Debian 12's default, the image linux-image-amd64 depends on
# (like "linux-image-6.1.0-57-amd64 (= 6.1.192-3)").
stock_kernel() {
    local dep
    dep=$(dpkg-query -W -f='${Depends}' linux-image-amd64 2>/dev/null) ||
        return 1
    dep=${dep%%[ ,|]*}; dep=${dep#linux-image-}; dep=${dep%-unsigned}
    [ -n "$dep" ] && usable "$dep" && echo "$dep"
}
if [ -n "$kernel_arg" ]; then
    kver=$(newest_kernel "$kernel_arg") ||
        die "no kernel '$kernel_arg' in /boot with its /lib/modules;" \
            "usable: $(kernels | tr '\n' ' ')(6.12: $0 --install-deps)"
elif ! kver=$(stock_kernel); then
    kver=$(newest_kernel 6.1) || kver=$(kernels | tail -n1)
    [ -z "$kver" ] ||
        echo "vm.sh: note: linux-image-amd64 names no usable kernel;" \
             "using $kver" >&2
fi
if [ -z "$kver" ] || ! usable "$kver"; then
    die "no usable /boot/vmlinuz-* with /lib/modules; run: $0 --install-deps"
fi
moddir=/lib/modules/$kver

# --- the initramfs: busybox, 9p/overlay modules and /init ------------------
# It only has to mount the host's / and chroot into it, so it is tiny and is
# cached per kernel version (in its name and its key, with that kernel's
# modules.dep and vmlinuz); the key also covers this file, so editing /init
# below rebuilds it.
cache=${TMPDIR:-/tmp}/p2pusb-vm
mkdir -p "$cache"
key=$( (echo "$kver"; cat "$0" "$moddir/modules.dep"
        stat -c %Y "/boot/vmlinuz-$kver") | md5sum | cut -c1-12)
initrd=$cache/initrd-$kver-$key.cpio.gz

# Modules the initramfs needs, in the order given; their dependencies are
# pulled in from modules.dep and loaded first.
BOOT_MODULES="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev
              virtio_pci netfs fscache 9pnet 9pnet_virtio 9p overlay"

write_init() {
    # Runs as PID 1 under busybox sh.  Kept free of bashisms on purpose.
    cat <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /ro /rw /newroot
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# ttyS0 is the kernel's console (a log file on the host); ttyS1 carries
# only the script's output to the host's stdout.
exec </dev/null >/dev/ttyS1 2>&1
stty -F /dev/ttyS1 -onlcr 2>/dev/null   # no CR in front of every LF

# Power off at once; if PID 1 merely exited, the kernel would panic.
# (/proc moves into /newroot on the way, hence two places to look.)
poweroff_now() {
    sync
    stty -F /dev/ttyS1 -onlcr 2>/dev/null   # TCSADRAIN: lets the UART send all
    for p in /newroot/proc /proc; do
        [ -e $p/sysrq-trigger ] && echo o >$p/sysrq-trigger
    done
    sleep 30
}
fail() { echo "vm init: $*"; echo "P2PUSB-EXIT=125"; poweroff_now; }
# Progress notes go to the kernel log, with its timestamps.
note() { for k in /newroot/dev/kmsg /dev/kmsg; do [ -e $k ] && { echo "vm init: $*" >$k; return; }; done; }

for m in $(cat /modules.order); do
    insmod /lib/modules/$m.ko 2>/dev/null || echo "vm init: insmod $m failed (builtin?)" >/dev/kmsg
done

note "modules loaded"
run=$(sed -n 's/.*p2pusb\.run=\([^ ]*\).*/\1/p' /proc/cmdline)
# cache=loose: the host's / does not change under a run, and uncached 9p
# makes every exec of bash or a library cost hundreds of round trips.
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /ro || fail "cannot mount host /"
mount -t tmpfs -o mode=755 tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/ro,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \
    || fail "cannot mount overlay"
for d in proc sys dev; do mount --move /$d /newroot/$d; done
mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp
mount -t tmpfs -o mode=755 tmpfs /newroot/run
mkdir -p /newroot/dev/pts /newroot/dev/shm /newroot/out /newroot/host /newroot/run/p2pusb
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs tmpfs /newroot/dev/shm
mount -t debugfs debugfs /newroot/sys/kernel/debug 2>/dev/null   # usbmon lives here
ln -sf /proc/self/fd /newroot/dev/fd      # bash process substitution
# The untouched host / stays reachable at /host: the guest's fresh /tmp
# hides the host's, and a repo checked out there must still be visible.
mount --bind /ro /newroot/host
note "root mounted"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 out /newroot/out || fail "cannot mount /out"
cp "/ro$run/cmd.sh" /newroot/run/p2pusb/cmd.sh || fail "no command file $run/cmd.sh"

chroot /newroot /bin/ip link set lo up
note "starting the script"
chroot /newroot /usr/bin/env -i \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root TERM=dumb LANG=C.UTF-8 P2PUSB_OUT=/out P2PUSB_VM=1 \
    /bin/bash /run/p2pusb/cmd.sh
rc=$?
note "the script exited with $rc"
chroot /newroot /bin/dmesg >/newroot/out/dmesg.txt 2>&1
echo "P2PUSB-EXIT=$rc"
poweroff_now
EOF
}

unpack_module() {  # FILE: the module, uncompressed, on stdout
    case $1 in
        *.ko.xz)
            if command -v xz >/dev/null; then xz -dc "$1"
            else /bin/busybox unxz -c "$1"; fi ;;
        *.ko.zst) zstd -qdc "$1" ;;
        *.ko.gz)  gzip -dc "$1" ;;
        *)        cat "$1" ;;
    esac
}

build_initrd() {
    local tmp name path
    tmp=$(mktemp -d "$cache/build.XXXXXX")
    mkdir -p "$tmp/bin" "$tmp/lib/modules"
    cp /bin/busybox "$tmp/bin/busybox"
    write_init >"$tmp/init"
    chmod 755 "$tmp/init"

    # name (with - and _ equal, as modprobe treats them) -> path in modules.dep
    declare -A path_of deps_of seen
    local line file rest
    while IFS= read -r line; do
        file=${line%%:*}; rest=${line#*:}
        name=${file##*/}; name=${name%%.ko*}; name=${name//-/_}
        path_of[$name]=$file
        deps_of[$name]=$rest
    done <"$moddir/modules.dep"

    local order=()
    visit() {  # depth-first: dependencies go into $order before the module
        local n=${1//-/_} d
        [ -z "${seen[$n]:-}" ] || return 0
        seen[$n]=1
        if [ -z "${path_of[$n]:-}" ]; then
            # builtin modules need nothing; others are simply absent here
            # (6.12 has no fscache module: it is part of netfs there)
            grep -q "/$n.ko" "$moddir/modules.builtin" 2>/dev/null \
                || echo "vm.sh: note: no module $n in $kver; skipped" >&2
            return 0
        fi
        for d in ${deps_of[$n]}; do
            d=${d##*/}; visit "${d%%.ko*}"
        done
        order+=("$n")
    }
    for name in $BOOT_MODULES; do visit "$name"; done

    # busybox insmod wants plain .ko files (6.12's are .ko.xz), so they are
    # unpacked here, on the host: xz, else busybox's own unxz.
    for name in "${order[@]}"; do
        path=$moddir/${path_of[$name]}
        unpack_module "$path" >"$tmp/lib/modules/$name.ko" || {
            rm -rf "$tmp"
            die "cannot unpack $path (xz-utils, zstd installed?)"
        }
    done
    printf '%s\n' "${order[@]}" >"$tmp/modules.order"

    (cd "$tmp" && find . | cpio -o -H newc --quiet | gzip -1) >"$tmp.cpio.gz"
    mv -f "$tmp.cpio.gz" "$initrd"   # atomic: parallel runs never see half a file
    rm -rf "$tmp"
}
if [ ! -s "$initrd" ]; then
    rm -f "$cache/initrd-$kver-"*.cpio.gz   # stale versions of /init
    build_initrd
fi

# --- the kernel image ------------------------------------------------------
# Under TCG, unpacking the compressed bzImage costs ~6 s of every boot.
# A kernel built with CONFIG_PVH can instead be started as the plain ELF
# vmlinux inside it, so unpack that once and cache it (about 70 MB).
# 6.1's payload is xz, 6.12's zstd; the first magic number that unpacks to
# a whole ELF file is the one.
kimage=/boot/vmlinuz-$kver
vmlinux=$cache/vmlinux-$kver
whole_elf() {  # FILE: an ELF file as long as its section header table says
    local shoff shent shnum
    [ "$(head -c4 "$1" | od -An -c | tr -d ' ')" = '177ELF' ] || return 1
    shoff=$(od -An -t u8 -j 40 -N 8 "$1" | tr -d ' ')
    read -r shent shnum < <(od -An -t u2 -j 58 -N 4 "$1")
    [ "$(stat -c %s "$1")" -ge $((shoff + shent * shnum)) ]
}
[ "$vmlinux" -nt "$kimage" ] || rm -f "$vmlinux"   # a reinstalled kernel
if [ ! -s "$vmlinux" ] && grep -qx CONFIG_PVH=y "/boot/config-$kver" 2>/dev/null; then
    if grep -qx CONFIG_KERNEL_ZSTD=y "/boot/config-$kver"; then
        magic=$'\x28\xb5\x2f\xfd' unpack="zstd -qdc"
    else
        magic=$'\xfd7zXZ\x00' unpack="xz -dc --single-stream"
    fi
    if command -v "${unpack%% *}" >/dev/null; then
        for off in $(LC_ALL=C grep -abo -F "$magic" "$kimage" | head -n4 |
                     cut -d: -f1); do
            # zstd complains about the bytes after its frame: ignored
            tail -c +$((off + 1)) "$kimage" |
                $unpack >"$vmlinux.$$" 2>/dev/null || true
            if whole_elf "$vmlinux.$$"; then
                mv -f "$vmlinux.$$" "$vmlinux"
                break
            fi
        done
        rm -f "$vmlinux.$$"
    fi
fi
[ ! -s "$vmlinux" ] || kimage=$vmlinux

# --- per-run directory: the command file and the /out share ----------------
run=$(mktemp -d "${TMPDIR:-/tmp}/p2pusb-vm-run.XXXXXX")
if [ -n "$outdir" ]; then
    mkdir -p "$outdir"
    outdir=$(realpath "$outdir")
else
    outdir=$run/out
    mkdir -p "$outdir"
fi
watcher=""
trap 'rm -rf "$run"; [ -z "$watcher" ] || kill "$watcher" 2>/dev/null' EXIT
trap 'exit 130' INT TERM

# The guest sees the host's / at the same paths, except /tmp and /run, which
# are fresh tmpfs there; anything under them is reached through /host.
guest_path() {
    case $1 in /tmp|/tmp/*|/run|/run/*) echo "/host$1" ;; *) echo "$1" ;; esac
}
repo=$(git -C "$(dirname "$script")" rev-parse --show-toplevel 2>/dev/null) \
    || repo=$(dirname "$script")
# Arguments travel in a file, quoted by bash itself, so no argument is ever
# re-split or mangled by the kernel command line.
{
    printf 'cd %q || exit 125\n' "$(guest_path "$repo")"
    printf 'exec bash %q' "$(guest_path "$script")"
    [ $# -eq 0 ] || printf ' %q' "$@"
    printf '\n'
} >"$run/cmd.sh"

# --- boot ------------------------------------------------------------------
console=$run/console.log
klog=$outdir/kernel.log
: >"$klog"
# -q is split on any whitespace (newlines too), without globbing.
extra=()
read -r -d '' -a extra <<<"$qemu_extra" || true
# no_timer_check: on a loaded host TCG can miss the kernel's early timer
# check, which then panics ("IO-APIC + timer doesn't work").
boot() {
    : >"$klog"
    rm -f "$run/qemu.pid" "$run/boot-hung"
    start=$(date +%s)
    watch_boot &
    watcher=$!
    set +e
    timeout --kill-after=5 "$timeout_s" qemu-system-x86_64 \
        -accel tcg -cpu max -m "${P2PUSB_VM_MEM:-1024}" -smp 2 \
        -display none -vga none -nic none -no-reboot -monitor none \
        -pidfile "$run/qemu.pid" \
        -kernel "$kimage" -initrd "$initrd" \
        -append "console=ttyS0 loglevel=7 oops=panic panic=-1 no_timer_check p2pusb.run=$run" \
        -serial "file:$klog" -serial stdio \
        -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
        -virtfs "local,path=$outdir,mount_tag=out,security_model=none,multidevs=remap" \
        "${extra[@]}" </dev/null | tee "$console" | grep -av "^$MARKER="
    qrc=${PIPESTATUS[0]}
    kill "$watcher" 2>/dev/null
    wait "$watcher" 2>/dev/null
    watcher=""
    set -e
    elapsed=$(( $(date +%s) - start ))
}
# TCG very rarely wedges a guest in early boot (seen: in inet_init, and
# bringing up the second vCPU), the kernel log stopping for good.  A boot
# takes seconds even on a loaded host, so one that has not reached the
# script in $boot_limit_s is killed and counted as hung, not as a failure
# of the script.
boot_limit_s=${P2PUSB_VM_BOOT_S:-120}
watch_boot() {
    local i
    for ((i = 0; i < boot_limit_s; i++)); do
        sleep 1
        grep -aq "vm init: starting the script" "$klog" && return
    done
    : >"$run/boot-hung"
    kill "$(cat "$run/qemu.pid" 2>/dev/null)" 2>/dev/null
}
booted() { grep -aq "^$MARKER=" "$console" || grep -aq "vm init" "$klog"; }

boot
# A VM that died or hung before its init ran never started the script:
# boot again, once.
if [ -e "$run/boot-hung" ]; then
    echo "vm.sh: the VM hung while booting (no init after ${boot_limit_s}s); booting again" >&2
    boot
elif ! booted && [ "$qrc" != 124 ] && [ "$qrc" != 137 ]; then
    echo "vm.sh: the VM died while booting; booting again" >&2
    boot
fi
sed -i 's/\r$//' "$klog"     # the serial line ends lines with CR LF
[ $show_klog = 0 ] || cat "$klog" >&2
rc=$(grep -a "^$MARKER=[0-9]*\$" "$console" | tail -n1 | cut -d= -f2)
if [ -n "$rc" ]; then
    exit "$rc"
fi
if [ -e "$run/boot-hung" ]; then
    echo "vm.sh: the VM hung twice while booting ($script)" >&2
    code=124
elif [ "$qrc" = 124 ] || [ "$qrc" = 137 ]; then
    echo "vm.sh: TIMEOUT: VM killed after ${timeout_s}s ($script)" >&2
    code=124
else
    echo "vm.sh: VM ended after ${elapsed}s without an exit code (qemu rc $qrc): kernel panic or oops?" >&2
    code=125
fi
echo "--- last lines of the kernel log (all of it: -o DIR keeps DIR/kernel.log):" >&2
tail -n 40 "$klog" >&2
exit $code
