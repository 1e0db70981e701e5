# guest-lib.sh - helpers for scripts that tests/vm.sh runs inside the VM.
#
# Source it from a guest script:   . "$(dirname "$0")/guest-lib.sh"
#
# The VM runs no udev, so nothing loads drivers or names devices for us:
# these functions load the modules, build USB devices out of configfs
# gadgets on dummy_hcd, and find the resulting busids and /dev nodes by
# reading sysfs.  Every wait is bounded; a helper that gives up prints why
# on stderr and returns non-zero, so `set -e` scripts stop right there.
# Busids depend on module load order (dummy_hcd's buses come first when
# load_usb_modules runs before anything else): never hard-code them.
#
# Functions (details above each one):
#   info MSG...                 progress line on stderr, with uptime
#   die MSG...                  print "FAIL: MSG" and exit 1
#   wait_for 'CMD' SECS         poll CMD (a shell string) until it succeeds
#   load_usb_modules [N]        USB host/gadget/usbip/class drivers, N UDCs
#   make_image FILE MIB         sparse disk image for a storage gadget
#   gadget_storage NAME IMG     mass-storage gadget; echoes its host busid
#   gadget_acm NAME             CDC-ACM serial gadget; echoes its busid
#   gadget_tty NAME             /dev/ttyGSn, the gadget end of an ACM gadget
#   gadget_busid NAME           busid on the host side of a live gadget
#   gadget_id NAME              its VID:PID, e.g. 1d6b:a000
#   gadget_remove NAME          unplug (waits for the host side) and delete
#   usb_busids VID:PID [HCD]    busids of matching devices (on HCD's buses)
#   hcd_of_busid BUSID          driver of the controller: dummy_hcd, ...
#   wait_for_busid VID:PID HCD SECS   first matching busid, once it appears
#   find_disk_for_busid BUSID   /dev/sdX of a usb-storage device
#   wait_for_disk BUSID SECS    same, waiting for the disk to show up
#   find_tty_for_busid BUSID    /dev/ttyACMn of a cdc-acm device
#   wait_for_listen PORT SECS   until something listens on TCP PORT
#   usb_dump                    lsusb -t, usbip port, kernel log tail
#   imported_busid GADGET       busid of the gadget's twin on vhci's bus
#   wait_gone GADGET            until that twin has left
#   vhci_port_of BUSID          the vhci port a device is attached to

# Some scripts run with -u; make sure our own globals exist.
: "${P2PUSB_OUT:=/tmp}"
GADGET_VID=0x1d6b              # Linux Foundation, as the kernel's gadgets use
GADGET_PID_BASE=0xa000         # each gadget gets the next free idProduct
CONFIGFS=/sys/kernel/config/usb_gadget

# A note on speed: under qemu's TCG every fork+exec costs tens of ms, so the
# helpers that run in polling loops read sysfs with bash builtins only.

info() {
    local up _
    read -r up _ </proc/uptime
    echo "[$up] $*" >&2
}

die() { echo "FAIL: $*"; exit 1; }

# wait_for 'CMD' SECS: run the shell string CMD every 0.1 s until it exits
# 0, for at most SECS seconds.  Returns 1 (with a message) on timeout.
wait_for() {
    local cmd=$1 secs=$2 end
    end=$(( ${EPOCHREALTIME/./} / 1000 + secs * 1000 ))     # in ms
    until eval "$cmd" >/dev/null 2>&1; do
        if [ $(( ${EPOCHREALTIME/./} / 1000 )) -ge "$end" ]; then
            echo "wait_for: gave up after ${secs}s on: $cmd" >&2
            return 1
        fi
        sleep 0.1
    done
}

# load_usb_modules [N]: everything the tests use, as far as this kernel has
# it.  N (default 4) is the number of dummy_hcd UDC/host pairs, i.e. how
# many gadgets can be plugged in at once; each pair is a separate USB bus.
# The xHCI driver, snd-usb-audio and usbhid only when qemu gave the VM an
# xHCI controller (vm.sh -q '-device qemu-xhci ...'): they are slow to load
# and dummy_hcd cannot carry isochronous audio anyway.  Also mounts
# configfs.  Missing modules are reported, not fatal.
load_usb_modules() {
    local n=${1:-4} m c mods
    mods="libcomposite usb_f_mass_storage usb_f_acm usb_storage sd_mod cdc_acm
          vhci_hcd usbip_host usbmon"
    for c in /sys/bus/pci/devices/*/class; do
        read -r m <"$c"
        [ "$m" != 0x0c0330 ] || { mods="$mods xhci_pci snd_usb_audio usbhid"; break; }
    done
    # One modprobe for all: each exec costs time under TCG.
    modprobe dummy_hcd num="$n" || echo "load_usb_modules: no dummy_hcd" >&2
    # shellcheck disable=SC2086  # a list of names
    modprobe -a -q $mods || true
    for m in $mods; do
        [ -d "/sys/module/$m" ] || echo "load_usb_modules: no module $m" >&2
    done
    mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config
}

# make_image FILE MIB: a sparse file of MIB MiB (reads as zeros).
make_image() {
    rm -f "$1"
    truncate -s "$2M" "$1"
}

# usb_busids VID:PID [HCD]: print the busids (like 2-1) of all devices with
# that VID:PID (hex, with or without 0x), one per line; with HCD, only those
# on a controller driven by HCD (dummy_hcd, vhci_hcd, xhci_hcd, ...).
usb_busids() {
    local want=${1//0x/} hcd=${2:-} d vid pid
    for d in /sys/bus/usb/devices/*; do
        [ -r "$d/idVendor" ] || continue        # interfaces have no IDs
        read -r vid <"$d/idVendor" || continue  # (gone while we looked)
        read -r pid <"$d/idProduct" || continue
        [ "$vid:$pid" = "$want" ] || continue
        case ${d##*/} in usb*) continue ;; esac       # root hubs
        [ -z "$hcd" ] || [ "$(hcd_of_busid "${d##*/}")" = "$hcd" ] || continue
        echo "${d##*/}"
    done
}

# hcd_of_busid BUSID: name of the driver of the host controller the device
# hangs off.  The controller is the parent of the bus's root hub (usbN).
hcd_of_busid() {
    local p
    p=$(cd -P "/sys/bus/usb/devices/$1" && pwd) || return 1
    while [ -n "$p" ] && [[ ${p##*/} != usb[0-9]* ]]; do p=${p%/*}; done
    p=$(cd -P "${p%/*}/driver" && pwd) || return 1
    echo "${p##*/}"
}

# wait_for_busid VID:PID HCD SECS: echo the first busid that usb_busids
# finds, waiting up to SECS seconds for it to appear and be configured
# (the kernel has picked a configuration, so interfaces exist).
wait_for_busid() {
    local id=$1 hcd=$2 secs=$3 b
    wait_for "[ -n \"\$(usb_busids $id $hcd)\" ]" "$secs" || return 1
    b=$(usb_busids "$id" "$hcd" | head -n1)
    wait_for "_usb_configured $b" "$secs" || return 1
    echo "$b"
}

_usb_configured() { local v=""; read -r v <"/sys/bus/usb/devices/$1/bConfigurationValue"; [ -n "$v" ]; }

# --- configfs gadgets on dummy_hcd ---------------------------------------
# A gadget is a USB device implemented by the kernel itself; bound to a
# dummy_hcd UDC it is plugged into that dummy_hcd's host bus, where the
# host side of the same kernel enumerates it like real hardware.

# An idProduct no other gadget uses, so busids can be told apart by VID:PID.
_gadget_free_pid() {
    local pid=$((GADGET_PID_BASE)) f v used=" "
    for f in "$CONFIGFS"/*/idProduct; do
        [ -e "$f" ] && read -r v <"$f" && used+="$((v)) "
    done
    while [[ $used == *" $pid "* ]]; do pid=$((pid + 1)); done
    printf '0x%04x\n' $pid
}

# A UDC that no gadget is bound to yet.
_gadget_free_udc() {
    local u f v busy=" "
    for f in "$CONFIGFS"/*/UDC; do
        [ -e "$f" ] && read -r v <"$f" && busy+="$v "
    done
    for u in /sys/class/udc/*; do
        u=${u##*/}
        [ "$u" = "*" ] || [[ $busy == *" $u "* ]] || { echo "$u"; return 0; }
    done
    echo "gadget: all UDCs are in use (load_usb_modules N for more)" >&2
    return 1
}

# _gadget_create NAME FUNC: gadget skeleton with one configuration holding
# functions/FUNC (which the caller has to set up before _gadget_plug).
_gadget_create() {
    local name=$1 func=$2 g=$CONFIGFS/$1
    [ ! -e "$g" ] || { echo "gadget: $name exists" >&2; return 1; }
    local pid
    pid=$(_gadget_free_pid)     # before our own idProduct (0x0000) exists
    # One mkdir for all: configfs fills each new dir with its attributes.
    mkdir "$g" "$g/strings/0x409" "$g/configs/c.1" \
          "$g/configs/c.1/strings/0x409" "$g/functions/$func" || return 1
    echo $GADGET_VID >"$g/idVendor"
    echo "$pid" >"$g/idProduct"
    echo 0x0200 >"$g/bcdUSB"
    echo "p2pusb tests" >"$g/strings/0x409/manufacturer"
    echo "$name" >"$g/strings/0x409/product"
    echo "P2PUSB-$name" >"$g/strings/0x409/serialnumber"
    echo "$name" >"$g/configs/c.1/strings/0x409/configuration"
    echo 100 >"$g/configs/c.1/MaxPower"
}

# _gadget_plug NAME: link the function(s) into the configuration, bind to a
# free UDC and wait for the host side to enumerate it; echoes the busid.
_gadget_plug() {
    local g=$CONFIGFS/$1 udc
    ln -s "$g"/functions/* "$g/configs/c.1/" || return 1
    udc=$(_gadget_free_udc) || return 1
    echo "$udc" >"$g/UDC" || return 1
    wait_for_busid "$(gadget_id "$1")" dummy_hcd 20 \
        || { echo "gadget: $1 on $udc never showed up on the host side" >&2; return 1; }
}

# gadget_id NAME: its VID:PID as sysfs spells it (1d6b:a000).
gadget_id() {
    local vid pid
    read -r vid <"$CONFIGFS/$1/idVendor" && read -r pid <"$CONFIGFS/$1/idProduct" || return 1
    printf '%04x:%04x\n' "$vid" "$pid"
}

# gadget_busid NAME: the busid (like 2-1) of the gadget on the dummy host.
gadget_busid() { usb_busids "$(gadget_id "$1")" dummy_hcd | head -n1; }

# gadget_storage NAME IMGFILE: a USB disk backed by IMGFILE (bulk-only
# mass storage).  Echoes the busid once enumerated.  usb-storage binds it,
# so a /dev/sdX appears too (see wait_for_disk).
gadget_storage() {
    local g=$CONFIGFS/$1
    _gadget_create "$1" mass_storage.0 || return 1
    echo 0 >"$g/functions/mass_storage.0/lun.0/removable"
    echo "$2" >"$g/functions/mass_storage.0/lun.0/file" || return 1
    _gadget_plug "$1"
}

# gadget_acm NAME: a USB serial port (CDC-ACM: bulk in/out + interrupt).
# Echoes the busid; the gadget end is gadget_tty NAME, the host end (once
# cdc-acm binds) find_tty_for_busid BUSID.
gadget_acm() {
    _gadget_create "$1" acm.0 || return 1
    _gadget_plug "$1"
}

# gadget_tty NAME: the gadget-side tty of an ACM gadget.
gadget_tty() {
    local n
    read -r n <"$CONFIGFS/$1/functions/acm.0/port_num" && echo "/dev/ttyGS$n"
}

# gadget_remove NAME: unplug (the host side sees a disconnect), wait until
# the host side has let go of the device, and delete the gadget in the
# reverse order configfs insists on.  No-op if there is no such gadget.
gadget_remove() {
    local g=$CONFIGFS/$1 f udc="" id
    [ -d "$g" ] || return 0
    id=$(gadget_id "$1")
    read -r udc <"$g/UDC" || true
    [ -z "$udc" ] || echo "" >"$g/UDC"
    wait_for "[ -z \"\$(usb_busids $id dummy_hcd)\" ]" 10 || true
    for f in "$g"/configs/c.1/*; do [ ! -L "$f" ] || rm "$f"; done
    rmdir "$g/configs/c.1/strings/0x409" "$g/configs/c.1" "$g"/functions/* \
          "$g/strings/0x409" "$g"
}

# --- finding /dev nodes ---------------------------------------------------

# find_disk_for_busid BUSID: /dev/sdX of the usb-storage disk on BUSID, or
# return 1 if there is none (yet).  sysfs: BUSID/BUSID:1.0/hostN/target*/
# N:0:0:0/block/sdX; devtmpfs makes the /dev node without udev.
find_disk_for_busid() {
    local b
    for b in /sys/bus/usb/devices/"$1"/"$1":*/host*/target*/*/block/*; do
        [ -e "$b" ] && [ -b "/dev/${b##*/}" ] && { echo "/dev/${b##*/}"; return 0; }
    done
    return 1
}

# wait_for_disk BUSID SECS: find_disk_for_busid, waiting for the SCSI scan
# and for the disk's size to be known (it reads 0 until the first
# READ CAPACITY has completed).
wait_for_disk() {
    local d
    wait_for "find_disk_for_busid $1" "$2" || return 1
    d=$(find_disk_for_busid "$1")
    wait_for "_disk_has_size ${d#/dev/}" "$2" || return 1
    echo "$d"
}

_disk_has_size() { local n; read -r n <"/sys/class/block/$1/size" && [ "$n" -gt 0 ]; }

# find_tty_for_busid BUSID: /dev/ttyACMn of the cdc-acm device on BUSID.
find_tty_for_busid() {
    local t
    for t in /sys/bus/usb/devices/"$1"/"$1":*/tty/*; do
        [ -e "$t" ] && { echo "/dev/${t##*/}"; return 0; }
    done
    return 1
}

# wait_for_listen PORT SECS: until a TCP socket listens on PORT (IPv4 or
# v6), read from /proc so that no probe connection disturbs the server.
wait_for_listen() {
    local hex
    hex=$(printf '%04X' "$1")
    wait_for "grep -q ':$hex [0-9A-F:]* 0A ' /proc/net/tcp /proc/net/tcp6" "$2"
}

# usb_dump: state worth seeing when something went wrong.
usb_dump() {
    echo "--- lsusb -t"; lsusb -t 2>&1 || true
    echo "--- usbip port"; usbip port 2>&1 || true
    echo "--- /proc/partitions"; cat /proc/partitions
    echo "--- dmesg | tail -n 40"; dmesg | tail -n 40
}

# --- helpers for the fault scenarios ---------------------------------------
#   gadget_loopback NAME        vendor-specific bulk loopback gadget (usbfs)
#   usbfs_node BUSID            /dev/bus/usb/BBB/DDD of a device
#   vhci_port_free PORT         true when vhci port PORT is free again
#   driver_of INTERFACE         kernel driver bound to e.g. 1-1:1.0, or "none"
#   ms_now                      milliseconds since the epoch, without a fork
#   proc_fds PID / proc_kb PID FIELD  open descriptors / VmRSS, VmHWM... (kB)

# gadget_loopback NAME: a vendor-specific device (f_loopback) that sends
# back on its bulk IN endpoint what its bulk OUT endpoint received.  No
# kernel driver binds it, so a test drives it through usbfs (usbfs-poke).
# Echoes its busid.
gadget_loopback() {
    modprobe -q usb_f_ss_lb 2>/dev/null || true   # no udev to load it for us
    _gadget_create "$1" Loopback.0 || return 1
    _gadget_plug "$1"
}

# usbfs_node BUSID: the usbfs node of a device, which devtmpfs creates.
usbfs_node() {
    local b d
    read -r b <"/sys/bus/usb/devices/$1/busnum" &&
        read -r d <"/sys/bus/usb/devices/$1/devnum" &&
        printf '/dev/bus/usb/%03d/%03d\n' "$b" "$d"
}

# imported_busid GADGET: the busid of the gadget's twin on vhci's bus.
imported_busid() {
    wait_for_busid "$(gadget_id "$1")" vhci_hcd 30
}

# wait_gone GADGET: until its twin on vhci's bus has left.
wait_gone() {
    wait_for "[ -z \"\$(usb_busids $(gadget_id "$1") vhci_hcd)\" ]" 20
}

# vhci_port_of BUSID: the vhci port that holds local busid BUSID.
vhci_port_of() {
    awk -v b="$1" '$7 == b { print $2 + 0 }' \
        /sys/devices/platform/vhci_hcd.0/status*
}

# vhci_port_free PORT: vhci_hcd's status files show PORT free (state 4,
# VDEV_ST_NULL) again.
vhci_port_free() {
    local hub port sta rest f
    for f in /sys/devices/platform/vhci_hcd.0/status*; do
        while read -r hub port sta rest; do
            [ "$port" = port ] && continue
            [ $((10#$port)) -eq "$1" ] && [ $((10#$sta)) -eq 4 ] && return 0
        done <"$f"
    done
    return 1
}

# driver_of INTERFACE: name of the driver bound to an interface (1-1:1.0).
driver_of() {
    local l
    l=$(readlink "/sys/bus/usb/devices/$1/driver" 2>/dev/null) || { echo none; return; }
    echo "${l##*/}"
}

ms_now() { echo $(( ${EPOCHREALTIME/./} / 1000 )); }

proc_fds() { local f n=0; for f in /proc/"$1"/fd/*; do n=$((n + 1)); done; echo $n; }

# proc_kb PID FIELD: a /proc/PID/status figure in kB (VmRSS, VmHWM).  One
# read of the whole file: bash's read builtin reads a line, seeks back and
# reads again, and each read makes the kernel write the file anew, so a
# figure that grows a digit meanwhile shifts the lines under it (vm 13,
# reading a flooded server, failed that way now and then).
proc_kb() {
    awk -v f="$2:" '$1 == f { print $2; ok = 1 } END { exit !ok }' \
        "/proc/$1/status"
}
