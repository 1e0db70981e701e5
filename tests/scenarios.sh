#!/bin/bash
# scenarios.sh NAME - one end-to-end scenario, run inside the VM by vm.sh.
#
# Server and client share the VM's kernel: the device is a dummy_hcd gadget
# (or one of qemu's emulated xHCI devices), exported over 127.0.0.1 and
# imported through vhci_hcd, where its ordinary class driver takes it.
# Each scenario prints what it measured and ends with PASS or FAIL.
set -eu
cd "$(dirname "$0")/.."
. tests/guest-lib.sh

P2PUSB=${2:-./p2pusb}	# tests/p2pusb-asan: the sanitizer build
PORT=3240
LOG=$P2PUSB_OUT
DATA_MIB=16

# ---- shared steps ----

on_exit() {
	local rc=$?
	stop_server || rc=1
	if [ $rc -ne 0 ]; then
		echo "--- server log"; cat "$LOG"/serve*.log 2>/dev/null || true
		usb_dump
		echo "FAIL"
		exit 1
	fi
	echo PASS
}
trap on_exit EXIT
SERVER_PID=

# stop_server: SIGTERM must end every session and exit 0 within seconds,
# and a sanitizer build must have found nothing (leaks are checked at exit).
stop_server() {
	[ -n "$SERVER_PID" ] || return 0
	kill -TERM "$SERVER_PID" 2>/dev/null || true
	local rc=0
	timeout 15 tail --pid="$SERVER_PID" -f /dev/null || { echo "server did not stop"; return 1; }
	wait "$SERVER_PID" || rc=$?
	SERVER_PID=
	[ $rc -eq 0 ] || { echo "server exited with $rc"; return 1; }
	! grep -E "Sanitizer|runtime error" "$LOG/serve.log" ||
		{ echo "sanitizer report in the server log"; return 1; }
}

# start_server [BUSID...]: p2pusb serve in the background, logging to $LOG.
start_server() {
	$P2PUSB -v serve -p $PORT "$@" 2>"$LOG/serve.log" &
	SERVER_PID=$!
	wait_for_listen $PORT 10
}

# imported_busid GADGET: the busid of the gadget's twin on vhci's bus.
imported_busid() {
	wait_for_busid "$(gadget_id "$1")" vhci_hcd 30
}

# disk_check DISK IMAGE: write DATA_MIB MiB of random data through DISK
# (bypassing the page cache both ways), read it back, and check that it
# also landed in IMAGE, the file behind the gadget: the bytes really
# crossed the wire and reached the device.
disk_check() {
	local disk=$1 image=$2 tag=${3:-$$}
	head -c $((DATA_MIB << 20)) /dev/urandom >/tmp/data.$tag
	dd if=/tmp/data.$tag of="$disk" bs=1M oflag=direct status=none
	dd if="$disk" of=/tmp/back.$tag bs=1M count=$DATA_MIB iflag=direct \
		status=none
	cmp /tmp/data.$tag /tmp/back.$tag || die "$disk read back differs"
	sync
	cmp -n $((DATA_MIB << 20)) /tmp/data.$tag "$image" ||
		die "$image on the device side differs"
	echo "$disk: ${DATA_MIB} MiB written, read back and found on the device"
	rm -f /tmp/data.$tag /tmp/back.$tag
}

# storage_gadget NAME: a 64 MiB disk gadget; sets BUSID and IMAGE.
storage_gadget() {
	IMAGE=/tmp/$1.img
	make_image "$IMAGE" 64
	BUSID=$(gadget_storage "$1" "$IMAGE")
}

# vhci_port_of BUSID: the vhci port that holds local busid BUSID.
vhci_port_of() {
	awk -v b="$1" '$7 == b { print $2 + 0 }' \
		/sys/devices/platform/vhci_hcd.0/status*
}

wait_gone() {
	wait_for "[ -z \"\$(usb_busids $(gadget_id "$1") vhci_hcd)\" ]" 20
}

# ---- the scenarios ----

# 1. p2pusb serve <-> the kernel's usbip attach.
kernel_client() {
	storage_gadget g1
	start_server "$BUSID"
	usbip list -r 127.0.0.1 | tee /tmp/list
	grep -q "$BUSID" /tmp/list || die "usbip list -r does not show $BUSID"
	usbip attach -r 127.0.0.1 -b "$BUSID"
	local vb disk
	vb=$(imported_busid g1)
	disk=$(wait_for_disk "$vb" 30)
	disk_check "$disk" "$IMAGE"
	usbip port | tee /tmp/port
	grep -q "127.0.0.1" /tmp/port || die "usbip port does not show it"
	usbip detach -p "$(vhci_port_of "$vb")"
	wait_gone g1
}

# 2. the kernel's usbipd + usbip-host <-> p2pusb attach.
kernel_server() {
	storage_gadget g1
	usbip bind -b "$BUSID"
	usbipd -D
	wait_for_listen $PORT 10
	local port vb disk
	port=$($P2PUSB attach 127.0.0.1 "$BUSID")
	echo "p2pusb attach: port $port"
	vb=$(imported_busid g1)
	disk=$(wait_for_disk "$vb" 30)
	disk_check "$disk" "$IMAGE"
	$P2PUSB port | tee /tmp/port
	grep -q "^port $port: .*127.0.0.1 3240 $BUSID" /tmp/port ||
		die "p2pusb port does not show port $port"
	$P2PUSB detach "$port"
	wait_gone g1
	$P2PUSB port | grep -q "no imported devices" || die "port still in use"
	pkill usbipd || true
}

# 3. p2pusb <-> p2pusb.
p2pusb_both() {
	storage_gadget g1
	start_server "$BUSID"
	$P2PUSB list 127.0.0.1 | tee /tmp/list
	grep -q "^$BUSID " /tmp/list || die "p2pusb list does not show $BUSID"
	local port vb disk
	port=$($P2PUSB attach 127.0.0.1 "$BUSID")
	vb=$(imported_busid g1)
	disk=$(wait_for_disk "$vb" 30)
	disk_check "$disk" "$IMAGE"
	# p2pusb's record is the kernel tools' own: usbip port reads it.
	usbip port | grep -q "usbip://127.0.0.1:3240/$BUSID" ||
		die "usbip port does not understand p2pusb's record"
	$P2PUSB detach "$port"
	wait_gone g1
}

# 4. CDC-ACM serial: bulk both ways plus the interrupt endpoint.
serial() {
	local busid port vb tty gs
	busid=$(gadget_acm s1)
	gs=$(gadget_tty s1)
	start_server "$busid"
	port=$($P2PUSB attach 127.0.0.1 "$busid")
	vb=$(imported_busid s1)
	wait_for "find_tty_for_busid $vb" 20
	tty=$(find_tty_for_busid "$vb")
	stty -F "$tty" raw -echo
	stty -F "$gs" raw -echo
	head -c 1M /dev/urandom >/tmp/out
	head -c 1M /dev/urandom >/tmp/in
	# Both directions at once: each reader stops after exactly 1 MiB.
	timeout 120 head -c 1M "$gs" >/tmp/got_out &
	local r1=$!
	timeout 120 head -c 1M "$tty" >/tmp/got_in &
	local r2=$!
	sleep 0.5
	cat /tmp/out >"$tty" &
	cat /tmp/in >"$gs" &
	wait $r1 || die "gadget side read timed out"
	wait $r2 || die "host side read timed out"
	cmp /tmp/out /tmp/got_out || die "host to gadget stream differs"
	cmp /tmp/in /tmp/got_in || die "gadget to host stream differs"
	echo "$tty <-> $gs: 1 MiB each way, byte-identical"
	$P2PUSB detach "$port"
	wait_gone s1
}

# 5. Isochronous OUT: a tone into qemu's emulated USB speaker.  What reaches
# the speaker lands in $P2PUSB_OUT/speaker.wav, checked on the host.
audio() {
	local busid port vb card
	busid=$(wait_for_busid 46f4:0002 xhci_hcd 20)
	start_server "$busid"
	port=$($P2PUSB attach 127.0.0.1 "$busid")
	vb=$(wait_for_busid 46f4:0002 vhci_hcd 30)
	wait_for "ls /sys/bus/usb/devices/$vb:1.0/sound/ | grep -q card" 20
	card=$(ls "/sys/bus/usb/devices/$vb:1.0/sound/" | grep card)
	card=${card#card}
	echo "imported speaker is ALSA card $card"
	aplay -q -D "plughw:$card,0" "$P2PUSB_OUT/tone.wav"
	$P2PUSB detach "$port"
}

# 6. Two devices from one server to two clients at once.
two_devices() {
	local b1 b2 i1 i2 p1 p2 v1 v2 d1 d2
	i1=/tmp/g1.img; i2=/tmp/g2.img
	make_image $i1 64; make_image $i2 64
	b1=$(gadget_storage g1 $i1)
	b2=$(gadget_storage g2 $i2)
	start_server
	p1=$($P2PUSB attach 127.0.0.1 "$b1")
	p2=$($P2PUSB attach 127.0.0.1 "$b2")
	v1=$(imported_busid g1); v2=$(imported_busid g2)
	d1=$(wait_for_disk "$v1" 30); d2=$(wait_for_disk "$v2" 30)
	disk_check "$d1" $i1 a &
	local c1=$!
	disk_check "$d2" $i2 b &
	local c2=$!
	wait $c1 || die "first device's data check failed"
	wait $c2 || die "second device's data check failed"
	$P2PUSB detach "$p1"
	$P2PUSB detach "$p2"
	wait_gone g1; wait_gone g2
}

# 7. After detach the device is back with usb-storage and imports again.
give_back() {
	local port vb disk drv
	storage_gadget g1
	start_server "$BUSID"
	port=$($P2PUSB attach 127.0.0.1 "$BUSID")
	vb=$(imported_busid g1)
	wait_for_disk "$vb" 30 >/dev/null
	drv=/sys/bus/usb/devices/$BUSID:1.0/driver
	[ "$(basename "$(readlink $drv)")" = usbfs ] ||
		die "server-side device is not held by p2pusb (usbfs)"
	$P2PUSB detach "$port"
	wait_gone g1
	wait_for "[ \"\$(basename \$(readlink $drv))\" = usb-storage ]" 10 ||
		die "device not given back to usb-storage"
	echo "$BUSID is bound to $(basename "$(readlink $drv)") again"
	port=$($P2PUSB attach 127.0.0.1 "$BUSID")
	vb=$(imported_busid g1)
	disk=$(wait_for_disk "$vb" 30)
	dd if="$disk" of=/dev/null bs=1M count=4 iflag=direct status=none
	echo "imported again at once on port $port and read from $disk"
	$P2PUSB detach "$port"
	wait_gone g1
}

# ---- either side dials, USB over pipes and ssh, re-attach, traces ----

# wait_port FILE [SECS]: the vhci port a backgrounded attach printed.
wait_port() {
	wait_for "[ -s $1 ]" "${2:-30}" || return 1
	head -n1 "$1"
}

# The device side dials out (it is behind NAT); the client waits for it.
dial_in() {
	local port vb disk
	storage_gadget g1
	$P2PUSB attach --listen 127.0.0.1:3241 "$BUSID" >/tmp/port &
	local attach=$!
	wait_for_listen 3241 10
	$P2PUSB -v serve --connect 127.0.0.1:3241 "$BUSID" 2>"$LOG/serve.log" &
	SERVER_PID=$!
	wait $attach || die "attach --listen failed"
	port=$(cat /tmp/port)
	vb=$(imported_busid g1)
	disk=$(wait_for_disk "$vb" 30)
	disk_check "$disk" "$IMAGE"
	$P2PUSB detach "$port"
	wait_gone g1
	grep -q "again in" "$LOG/serve.log" ||
		wait_for "grep -q 'again in' $LOG/serve.log" 10 ||
		die "serve --connect did not redial after the session"
}

# --via with a plain command standing in for ssh.
via_pipe() {
	local port vb disk
	storage_gadget g1
	$P2PUSB -vv attach --via "$P2PUSB -v serve --stdio $BUSID" "$BUSID" \
		>/tmp/port 2>"$LOG/relay.log" &
	local relay=$!
	port=$(wait_port /tmp/port)
	vb=$(imported_busid g1)
	disk=$(wait_for_disk "$vb" 30)
	disk_check "$disk" "$IMAGE"
	$P2PUSB detach "$port"
	wait_gone g1
	timeout 20 tail --pid=$relay -f /dev/null || die "relay did not end"
	wait $relay || die "relay exited with an error"
	grep -q "CMD_SUBMIT ep 0 in control GET_DESCRIPTOR(DEVICE) len 18" \
		"$LOG/relay.log" || die "relay trace lacks GET_DESCRIPTOR"
	echo "relay traced $(grep -c CMD_SUBMIT "$LOG/relay.log") URBs"
	wait_for "[ \"\$(basename \$(readlink /sys/bus/usb/devices/$BUSID:1.0/driver))\" = usb-storage ]" 10 ||
		die "device not given back after the --via session"
}

# --via through a real OpenSSH server on loopback, with a throwaway key.
via_ssh() {
	local port vb disk d=/tmp/ssh
	storage_gadget g1
	mkdir -p $d /run/sshd && chmod 700 $d
	ssh-keygen -q -t ed25519 -N "" -f $d/host
	ssh-keygen -q -t ed25519 -N "" -f $d/user
	cp $d/user.pub $d/authorized_keys
	cat >$d/sshd_config <<-EOF
		Port 2222
		ListenAddress 127.0.0.1
		HostKey $d/host
		AuthorizedKeysFile $d/authorized_keys
		PermitRootLogin yes
		UsePAM no
		StrictModes no
		PidFile $d/sshd.pid
	EOF
	/usr/sbin/sshd -f $d/sshd_config -E $LOG/sshd.log
	wait_for_listen 2222 10
	local ssh="ssh -i $d/user -p 2222 -o StrictHostKeyChecking=no
		-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR root@127.0.0.1"
	$P2PUSB attach --via "$(echo $ssh) $PWD/$P2PUSB serve --stdio $BUSID" \
		"$BUSID" >/tmp/port 2>"$LOG/relay.log" &
	local relay=$!
	# Key exchange under qemu's CPU emulation takes its time.
	port=$(wait_port /tmp/port 120)
	vb=$(imported_busid g1)
	disk=$(wait_for_disk "$vb" 30)
	disk_check "$disk" "$IMAGE"
	$P2PUSB detach "$port"
	wait_gone g1
	timeout 20 tail --pid=$relay -f /dev/null || die "relay did not end"
	kill "$(cat $d/sshd.pid)"
	echo "the disk crossed OpenSSH intact"
}

# --persist: the server restarts mid-session; the device comes back.
persist() {
	local vb disk
	storage_gadget g1
	start_server "$BUSID"
	$P2PUSB attach --persist 127.0.0.1 "$BUSID" >/tmp/ports \
		2>"$LOG/persist.log" &
	local keeper=$!
	wait_port /tmp/ports >/dev/null
	vb=$(imported_busid g1)
	wait_for_disk "$vb" 30 >/dev/null
	stop_server
	wait_gone g1
	echo "server stopped: the device left the client"
	mv "$LOG/serve.log" "$LOG/serve-1.log"
	start_server "$BUSID"
	wait_for "[ \$(wc -l </tmp/ports) -ge 2 ]" 60 ||
		die "no re-import after the server came back"
	vb=$(imported_busid g1)
	disk=$(wait_for_disk "$vb" 30)
	disk_check "$disk" "$IMAGE"
	grep "importing again" "$LOG/persist.log" | head -n 2
	kill -TERM $keeper
	timeout 20 tail --pid=$keeper -f /dev/null || die "--persist did not stop"
	wait_gone g1
	echo "--persist stopped and detached"
}

# -vv: the server's trace of a known session holds the expected lines.
trace() {
	local port vb
	storage_gadget g1
	$P2PUSB -vv serve -p $PORT "$BUSID" 2>"$LOG/serve.log" &
	SERVER_PID=$!
	wait_for_listen $PORT 10
	port=$($P2PUSB attach 127.0.0.1 "$BUSID")
	vb=$(imported_busid g1)
	wait_for_disk "$vb" 30 >/dev/null
	$P2PUSB detach "$port"
	wait_gone g1
	local want
	for want in "CMD_SUBMIT ep 0 in control GET_DESCRIPTOR(DEVICE) len 18" \
		"CMD_SUBMIT ep 0 in control GET_DESCRIPTOR(CONFIGURATION) len 9" \
		"CMD_SUBMIT ep 0 out control SET_CONFIGURATION 1" \
		"CMD_SUBMIT ep 1 in bulk" "CMD_SUBMIT ep 2 out bulk len 31" \
		"< RET_SUBMIT ok actual 18"; do
		grep -qF "$want" "$LOG/serve.log" || die "trace lacks: $want"
	done
	grep -F "GET_DESCRIPTOR(CONFIGURATION)" "$LOG/serve.log" | head -n 2
}

scenario=${1:?usage: scenarios.sh NAME [P2PUSB-BINARY]}
load_usb_modules 4 2>/dev/null
"$scenario"
