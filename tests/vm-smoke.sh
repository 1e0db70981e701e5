#!/bin/bash
# vm-smoke.sh - prove the VM rig with the kernel's own USB/IP tools only.
#
# On the host, run it directly: it boots one VM per smoke, in turn, and
# exits 0 only if both pass (about 25 s each on an idle machine):
#     tests/vm-smoke.sh
# In a VM (this is what the host side runs):
#     tests/vm.sh tests/vm-smoke.sh usbip
#     tests/vm.sh -q '-device qemu-xhci,id=xhci -device usb-audio,...' \
#                 tests/vm-smoke.sh audio
#
#   usbip: a 64 MiB mass-storage gadget on dummy_hcd is exported by the
#          kernel's usbip-host + usbipd, imported over loopback by vhci-hcd
#          (usbip attach), and 16 MiB of random data goes through the
#          imported disk and back.
#   audio: qemu's emulated USB speaker shows up (so vm.sh -q works), and
#          noise played into it with aplay lands in the host's wav file.
set -eu

here=$(cd "$(dirname "$0")" && pwd)

# ---------------------------------------------------------------- host side
if [ -z "${P2PUSB_VM:-}" ]; then
    rc=0
    echo "== smoke 1: usbip-host + vhci-hcd over loopback"
    "$here/vm.sh" -t 180 "$0" usbip || rc=1

    echo "== smoke 2: qemu xHCI + usb-audio via vm.sh -q"
    wav=$(mktemp "${TMPDIR:-/tmp}/p2pusb-smoke.XXXXXX.wav")
    trap 'rm -f "$wav"' EXIT
    "$here/vm.sh" -t 180 -q "-device qemu-xhci,id=xhci
        -device usb-audio,audiodev=snd0,bus=xhci.0
        -audiodev wav,id=snd0,path=$wav" "$0" audio || rc=1
    # The guest played noise: the wav must hold more than its 44-byte
    # header, and not only zeros.
    if [ "$(stat -c %s "$wav")" -gt 1000 ] && tail -c +45 "$wav" | tr -d '\0' | grep -qc .; then
        echo "host: $(stat -c %s "$wav") bytes of non-silent audio in the wav: PASS"
    else
        echo "host: the wav file got no audio ($(stat -c %s "$wav") bytes): FAIL"
        rc=1
    fi
    [ $rc = 0 ] && echo "vm-smoke: ALL PASS" || echo "vm-smoke: FAILED"
    exit $rc
fi

# --------------------------------------------------------------- guest side
. "$here/guest-lib.sh"

smoke_usbip() {
    load_usb_modules 2
    make_image /tmp/disk.img 64
    busid=$(gadget_storage disk /tmp/disk.img) || die "gadget did not enumerate"
    direct=$(wait_for_disk "$busid" 20) || die "no disk on $busid"
    info "gadget on dummy_hcd: busid $busid ($(gadget_id disk)), disk $direct"

    # Export: usbip-host takes the device from usb-storage (sda goes away).
    usbip bind -b "$busid"
    usbipd -D
    wait_for_listen 3240 10 || die "usbipd does not listen"
    usbip list -r 127.0.0.1

    # Import over loopback: vhci-hcd makes it a new device on its own bus.
    usbip attach -r 127.0.0.1 -b "$busid"
    vbusid=$(wait_for_busid "$(gadget_id disk)" vhci_hcd 30) || { usb_dump; die "no vhci device"; }
    disk=$(wait_for_disk "$vbusid" 30) || { usb_dump; die "no disk on $vbusid"; }
    info "imported: busid $vbusid on vhci_hcd, disk $disk"
    lsusb -t

    head -c 16M /dev/urandom >/tmp/data
    info "writing 16 MiB"
    dd if=/tmp/data of="$disk" bs=1M oflag=direct status=none
    info "reading back"
    dd if="$disk" of=/tmp/back bs=1M count=16 iflag=direct status=none
    info "done"
    cmp /tmp/data /tmp/back || die "read-back differs"
    # And the bytes really are in the gadget's backing file.
    cmp -n 16M /tmp/data /tmp/disk.img || die "image file differs"

    usbip port
    usbip detach -p 0
    wait_for "[ -z \"\$(usb_busids $(gadget_id disk) vhci_hcd)\" ]" 20 || die "detach left the device"
    echo "PASS: usbip smoke (16 MiB through usbip-host + vhci-hcd)"
}

smoke_audio() {
    local card d busid=""
    load_usb_modules 1
    # qemu's devices sit on the emulated xHCI; find the one whose product
    # string says audio.
    wait_for "grep -qil audio /sys/bus/usb/devices/*/product" 20 || { usb_dump; die "no USB audio device"; }
    for d in /sys/bus/usb/devices/*; do
        grep -qi audio "$d/product" 2>/dev/null && busid=${d##*/}
    done
    info "USB audio device: busid $busid on $(hcd_of_busid "$busid")"
    lsusb
    lsusb -t
    lsusb | grep -qi audio || die "lsusb (libusb) does not list the audio device"

    # snd-usb-audio makes a sound card; play half a second of noise.
    wait_for "grep -qi usb /proc/asound/cards" 20 || die "no ALSA card for the device"
    card=$(grep -i usb /proc/asound/cards | head -n1 | awk '{print $1}')
    info "ALSA card $card; /dev/snd: $(cd /dev/snd && echo *)"
    head -c 96000 /dev/urandom |
        timeout 20 aplay -q -D "plughw:$card" -f S16_LE -r 48000 -c 2 -t raw ||
        die "aplay failed"
    echo "PASS: audio smoke (usb-audio at $busid via vm.sh -q)"
}

case ${1:-} in
    usbip) smoke_usbip ;;
    audio) smoke_audio ;;
    *) echo "usage: vm.sh $0 usbip|audio" >&2; exit 2 ;;
esac
