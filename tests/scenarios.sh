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
		usb_dump_bounded
		# Last, where test.sh's 60-line tail of a failure shows it.
		echo "--- server log (last 30 lines)"
		tail -n 30 "$LOG"/serve*.log 2>/dev/null || true
		echo "FAIL"
		exit 1
	fi
	echo PASS
}

# usb_dump_bounded: usb_dump, unless the USB core is wedged (lsusb can then
# hang for good, as can a process stuck in usbfs): 20 s at most.
usb_dump_bounded() {
	local p i
	usb_dump >/tmp/usb_dump.out 2>&1 &
	p=$!
	for i in $(seq 100); do
		kill -0 $p 2>/dev/null || break
		sleep 0.2
	done
	cat /tmp/usb_dump.out
	if kill -0 $p 2>/dev/null; then
		echo "--- usb_dump hangs (after 20 s; the USB core is wedged?)"
		echo "--- dmesg | tail -n 40"; dmesg | tail -n 40
	fi
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
# SERVE_OPTS: more serve options (the *_busy_poll scenarios).
SERVE_OPTS=${SERVE_OPTS:-}
start_server() {
	# shellcheck disable=SC2086  # options, split on purpose
	$P2PUSB -v serve -p $PORT $SERVE_OPTS "$@" 2>"$LOG/serve.log" &
	SERVER_PID=$!
	wait_for_listen $PORT 10
}

# imported_disk GADGET: the /dev/sdX of a storage gadget's twin on vhci.
imported_disk() {
	local vb
	vb=$(imported_busid "$1") && wait_for_disk "$vb" 30
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
	usbipd -D -P/tmp/usbipd.pid
	wait_for_listen $PORT 10
	local port disk
	port=$($P2PUSB attach 127.0.0.1 "$BUSID")
	echo "p2pusb attach: port $port"
	disk=$(imported_disk g1)
	disk_check "$disk" "$IMAGE"
	$P2PUSB port | tee /tmp/port
	grep -q "^port $port: .*127.0.0.1 3240 $BUSID" /tmp/port ||
		die "p2pusb port does not show port $port"
	$P2PUSB detach "$port"
	wait_gone g1
	$P2PUSB port | grep -q "no imported devices" || die "port still in use"
	kill "$(cat /tmp/usbipd.pid)" || true
}

# 3. p2pusb <-> p2pusb.
p2pusb_both() {
	storage_gadget g1
	start_server "$BUSID"
	$P2PUSB list 127.0.0.1 | tee /tmp/list
	grep -q "^$BUSID " /tmp/list || die "p2pusb list does not show $BUSID"
	local port disk
	port=$($P2PUSB attach 127.0.0.1 "$BUSID")
	disk=$(imported_disk g1)
	disk_check "$disk" "$IMAGE"
	# p2pusb's record is the kernel tools' own: usbip port reads it.
	usbip port | grep -q "usbip://127.0.0.1:3240/$BUSID" ||
		die "usbip port does not understand p2pusb's record"
	$P2PUSB detach "$port"
	wait_gone g1
}

# 4. CDC-ACM serial: bulk both ways plus the interrupt endpoint.
serial() {
	start_server
	acm_import s1
	serial_check "$TTY" "$GS" 1024
	$P2PUSB detach "$(vhci_port_of "$ACM_VB")"
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
	local port disk drv
	storage_gadget g1
	start_server "$BUSID"
	port=$($P2PUSB attach 127.0.0.1 "$BUSID")
	imported_disk g1 >/dev/null
	drv=/sys/bus/usb/devices/$BUSID:1.0/driver
	[ "$(basename "$(readlink $drv)")" = usbfs ] ||
		die "server-side device is not held by p2pusb (usbfs)"
	$P2PUSB detach "$port"
	wait_gone g1
	wait_for "[ \"\$(basename \$(readlink $drv))\" = usb-storage ]" 10 ||
		die "device not given back to usb-storage"
	echo "$BUSID is bound to $(basename "$(readlink $drv)") again"
	port=$($P2PUSB attach 127.0.0.1 "$BUSID")
	disk=$(imported_disk g1)
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
	local port disk
	storage_gadget g1
	$P2PUSB attach --listen 127.0.0.1:3241 "$BUSID" >/tmp/port &
	local attach=$!
	wait_for_listen 3241 10
	$P2PUSB -v serve --connect 127.0.0.1:3241 "$BUSID" 2>"$LOG/serve.log" &
	SERVER_PID=$!
	wait $attach || die "attach --listen failed"
	port=$(cat /tmp/port)
	disk=$(imported_disk g1)
	disk_check "$disk" "$IMAGE"
	$P2PUSB detach "$port"
	wait_gone g1
	grep -q "again in" "$LOG/serve.log" ||
		wait_for "grep -q 'again in' $LOG/serve.log" 10 ||
		die "serve --connect did not redial after the session"
}

# --via with a plain command standing in for ssh.
via_pipe() {
	local port disk
	storage_gadget g1
	# shellcheck disable=SC2086  # options, split on purpose
	$P2PUSB -vv attach ${VIA_OPTS:-} \
		--via "$P2PUSB -v serve $SERVE_OPTS --stdio $BUSID" "$BUSID" \
		>/tmp/port 2>"$LOG/relay.log" &
	local relay=$!
	port=$(wait_port /tmp/port)
	disk=$(imported_disk g1)
	disk_check "$disk" "$IMAGE"
	$P2PUSB detach "$port"
	wait_gone g1
	timeout 20 tail --pid=$relay -f /dev/null || die "relay did not end"
	wait $relay || die "relay exited with an error"
	grep -q "CMD_SUBMIT ep 0 in control GET_DESCRIPTOR(DEVICE) len 18" \
		"$LOG/relay.log" || die "relay trace lacks GET_DESCRIPTOR"
	echo "relay traced $(grep -c CMD_SUBMIT "$LOG/relay.log") URBs"
	given_back "$BUSID" usb-storage 10 ||
		die "device not given back after the --via session"
}

# --via through a real OpenSSH server on loopback, with a throwaway key.
via_ssh() {
	local port disk d=/tmp/ssh
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
	disk=$(imported_disk g1)
	disk_check "$disk" "$IMAGE"
	$P2PUSB detach "$port"
	wait_gone g1
	timeout 20 tail --pid=$relay -f /dev/null || die "relay did not end"
	kill "$(cat $d/sshd.pid)"
	echo "the disk crossed OpenSSH intact"
}

# --persist: the server restarts mid-session; the device comes back.
persist() {
	local disk
	storage_gadget g1
	start_server "$BUSID"
	$P2PUSB attach --persist 127.0.0.1 "$BUSID" >/tmp/ports \
		2>"$LOG/persist.log" &
	local keeper=$!
	wait_port /tmp/ports >/dev/null
	imported_disk g1 >/dev/null
	stop_server
	wait_gone g1
	echo "server stopped: the device left the client"
	mv "$LOG/serve.log" "$LOG/serve-1.log"
	start_server "$BUSID"
	wait_for "[ \$(wc -l </tmp/ports) -ge 2 ]" 60 ||
		die "no re-import after the server came back"
	disk=$(imported_disk g1)
	disk_check "$disk" "$IMAGE"
	grep "importing again" "$LOG/persist.log" | head -n 2
	kill -TERM $keeper
	timeout 20 tail --pid=$keeper -f /dev/null || die "--persist did not stop"
	wait_gone g1
	echo "--persist stopped and detached"
	# A busid the server does not offer: no retrying, one line, exit 1.
	local rc=0
	timeout 30 $P2PUSB attach --persist 127.0.0.1 9-9 >/dev/null \
		2>"$LOG/persist-9-9.log" || rc=$?
	cat "$LOG/persist-9-9.log"
	[ "$rc" -eq 1 ] || die "--persist for an unknown busid exited $rc"
	[ "$(wc -l <"$LOG/persist-9-9.log")" -eq 1 ] &&
		grep -q "busid 9-9 not offered" "$LOG/persist-9-9.log" ||
		die "--persist for an unknown busid: not one clear line"
}

# -vv: the server's trace of a known session holds the expected lines.
trace() {
	local port
	storage_gadget g1
	$P2PUSB -vv serve -p $PORT "$BUSID" 2>"$LOG/serve.log" &
	SERVER_PID=$!
	wait_for_listen $PORT 10
	port=$($P2PUSB attach 127.0.0.1 "$BUSID")
	imported_disk g1 >/dev/null
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

# ---- fault scenarios (issue #3): the peer, the device or the path fails ----

# watch_events SECS NAME='CMD'...: poll every CMD (a shell string) about
# every 0.1 s until each has succeeded once or SECS have passed since $T0
# (ms, set by the caller at the fault); WHEN[NAME] is then the ms from $T0
# to its first success, or unset.  Polled together, so events are timed
# independently of the order in which they happen.
declare -A WHEN
watch_events() {
	local secs=$1 arg name left
	shift
	WHEN=()
	while :; do
		left=0
		for arg in "$@"; do
			name=${arg%%=*}
			[ -z "${WHEN[$name]:-}" ] || continue
			if eval "${arg#*=}" >/dev/null 2>&1; then
				WHEN[$name]=$(($(ms_now) - T0))
			else
				left=1
			fi
		done
		[ $left = 1 ] || return 0
		[ $(($(ms_now) - T0)) -lt $((secs * 1000)) ] || return 1
		sleep 0.1
	done
}

# secs MS: 1234 -> 1.23
secs() { printf '%d.%02d' $(($1 / 1000)) $(($1 % 1000 / 10)); }

# when NAME: the time of an event, or "never" (for messages).
when() { [ -n "${WHEN[$1]:-}" ] && echo "$(secs "${WHEN[$1]}") s" || echo never; }

# ended_count BUSID: how many sessions for BUSID the server has ended.
ended_count() { grep -c "session for $1 ended" "$LOG/serve.log" || true; }

# no_protocol_errors: no line in the server log about a malformed request
# (those end the session with the reason as given by protocol_error()).
no_protocol_errors() {
	! grep -E "out of range|unknown (command|request)|devid [0-9a-f]+, expected|bad endpoint|not terminated|expected 1\.11" \
		"$LOG/serve.log"
}

# given_back BUSID DRIVER SECS: the server-side device is bound to DRIVER.
given_back() {
	wait_for "[ \"\$(driver_of $1:1.0)\" = $2 ]" "$3"
}

# usbfs-poke, the loopback driver for unlink/halt storms: the host builds it
# (test.sh); built here when missing or stale.
poke_bin() {
	if [ -x tests/usbfs-poke ] && [ tests/usbfs-poke -nt tests/usbfs-poke.c ]; then
		echo tests/usbfs-poke
	else
		[ -x /tmp/usbfs-poke ] || gcc -std=gnu11 -O2 -Wall -Wextra \
			-o /tmp/usbfs-poke tests/usbfs-poke.c || return 1
		echo /tmp/usbfs-poke
	fi
}

# loopback_import NAME: a loopback gadget, imported; sets LB_BUSID (server
# side), LB_VB (vhci side) and POKE (the command line to drive it).
loopback_import() {
	local bin ep out="" in=""
	bin=$(poke_bin) || die "cannot build usbfs-poke"
	LB_BUSID=$(gadget_loopback "$1")
	$P2PUSB attach 127.0.0.1 "$LB_BUSID" >/dev/null
	LB_VB=$(imported_busid "$1")
	for ep in /sys/bus/usb/devices/"$LB_VB":1.0/ep_*; do
		ep=${ep##*ep_}
		[ $((0x$ep & 0x80)) -ne 0 ] && in=$ep || out=$ep
	done
	[ -n "$in" ] && [ -n "$out" ] || die "loopback gadget without bulk endpoints"
	POKE="$bin $(usbfs_node "$LB_VB") 0 $out $in"
}

# unlink_counts: what vhci_hcd logged about the RET_UNLINKs it received.
unlink_counts() {
	dmesg >/tmp/dmesg.txt
	echo "vhci got $(grep -c 'vhci_hcd: unlink->seqnum' /tmp/dmesg.txt) RET_UNLINKs for URBs cancelled in flight and $(grep -c 'was already given back' /tmp/dmesg.txt) for URBs already completed"
}

# serial_check TTY GS KIB: KIB KiB each way at once through an ACM link,
# byte-identical (a desynchronised stream would lose, repeat or reorder).
serial_check() {
	local tty=$1 gs=$2 kib=$3 r1 r2
	head -c "${kib}K" /dev/urandom >/tmp/s_out
	head -c "${kib}K" /dev/urandom >/tmp/s_in
	timeout 120 head -c "${kib}K" "$gs" >/tmp/s_got_out &
	r1=$!
	timeout 120 head -c "${kib}K" "$tty" >/tmp/s_got_in &
	r2=$!
	sleep 0.5
	cat /tmp/s_out >"$tty" &
	cat /tmp/s_in >"$gs" &
	wait $r1 || die "serial: gadget side read timed out"
	wait $r2 || die "serial: host side read timed out"
	cmp /tmp/s_out /tmp/s_got_out || die "serial: host to gadget stream differs"
	cmp /tmp/s_in /tmp/s_got_in || die "serial: gadget to host stream differs"
	echo "$tty <-> $gs: $kib KiB each way, byte-identical"
}

# serial_drain TTY GS: read away whatever an earlier storm left queued.
serial_drain() {
	local a b
	timeout 2 cat "$1" >/dev/null 2>&1 &
	a=$!
	timeout 2 cat "$2" >/dev/null 2>&1 &
	b=$!
	wait $a $b || true
}

# acm_import NAME: an ACM gadget, imported; sets ACM_BUSID, ACM_VB, TTY, GS.
acm_import() {
	ACM_BUSID=$(gadget_acm "$1")
	GS=$(gadget_tty "$1")
	acm_attach "$1"
}

# acm_attach NAME: import ACM_BUSID again; sets ACM_VB and TTY.
acm_attach() {
	$P2PUSB attach 127.0.0.1 "$ACM_BUSID" >/dev/null
	ACM_VB=$(imported_busid "$1")
	wait_for "find_tty_for_busid $ACM_VB" 20
	TTY=$(find_tty_for_busid "$ACM_VB")
	stty -F "$TTY" raw -echo clocal
	stty -F "$GS" raw -echo clocal
}

# F1. The client vanishes mid-copy: its socket is destroyed (ss -K, a RST
# on the wire), first under p2pusb attach with a writer, then under the
# kernel's usbip attach with a reader.  The server ends the session,
# cancels what is in flight, gives the device back to usb-storage, and the
# device can be imported again at once.
fault_client_gone() {
	local round vb disk port pid n killed rc drv t_imp
	modprobe -q -a tcp_diag inet_diag || true
	storage_gadget g1
	start_server "$BUSID"
	for round in "p2pusb attach" "usbip attach"; do
		if [ "$round" = "p2pusb attach" ]; then
			$P2PUSB attach 127.0.0.1 "$BUSID" >/dev/null
		else
			usbip attach -r 127.0.0.1 -b "$BUSID"
		fi
		vb=$(imported_busid g1)
		disk=$(wait_for_disk "$vb" 30)
		port=$(vhci_port_of "$vb")
		if [ "$round" = "p2pusb attach" ]; then
			timeout 60 dd if=/dev/zero of="$disk" bs=1M count=64 \
				oflag=direct status=none 2>/tmp/dd.err &
		else
			timeout 60 dd if="$disk" of=/dev/null bs=1M count=64 \
				iflag=direct status=none 2>/tmp/dd.err &
		fi
		pid=$!
		sleep 2
		kill -0 $pid 2>/dev/null || die "$round: the copy ended before the fault"
		n=$(ended_count "$BUSID")
		T0=$(ms_now)
		# Only the client's socket has destination port $PORT.
		killed=$(ss -K -t -n dst 127.0.0.1 dport = :$PORT | grep -c ESTAB || true)
		if [ "$killed" -eq 0 ]; then
			echo "ss -K destroyed nothing (no SOCK_DESTROY?): detaching instead"
			usbip detach -p "$port"
		fi
		watch_events 30 \
			ended="[ \$(ended_count $BUSID) -gt $n ]" \
			port="vhci_port_free $port" \
			copy="! kill -0 $pid" \
			back="[ \"\$(driver_of $BUSID:1.0)\" = usb-storage ]" || true
		rc=0; wait $pid || rc=$?
		echo "measured: $round, client socket destroyed mid-copy: server ended the session after $(when ended), device back with usb-storage after $(when back), vhci port free after $(when port), copy failed (exit $rc: $(head -c 60 /tmp/dd.err)) after $(when copy)"
		grep "session for $BUSID ended" "$LOG/serve.log" | tail -n1
		[ -n "${WHEN[ended]:-}" ] || die "$round: the server did not end the session"
		[ -n "${WHEN[port]:-}" ] || die "$round: the vhci port was not freed"
		[ -n "${WHEN[back]:-}" ] || die "$round: the device did not go back to usb-storage (driver: $(driver_of $BUSID:1.0))"
		[ -n "${WHEN[copy]:-}" ] && [ $rc -ne 0 ] && [ $rc -ne 124 ] ||
			die "$round: the copy did not fail promptly (exit $rc)"
		# Imported again: at most 2 s from the device being given back.
		T0=$(ms_now)
		until $P2PUSB attach 127.0.0.1 "$BUSID" >/dev/null 2>/tmp/attach.err; do
			[ $(($(ms_now) - T0)) -lt 2000 ] ||
				die "$round: not importable again within 2 s: $(cat /tmp/attach.err)"
			sleep 0.1
		done
		t_imp=$(($(ms_now) - T0))
		vb=$(imported_busid g1)
		disk=$(wait_for_disk "$vb" 30)
		dd if="$disk" of=/dev/null bs=1M count=2 iflag=direct status=none ||
			die "$round: cannot read the re-imported disk"
		echo "measured: $round: imported again $(secs $t_imp) s after the give-back, and read"
		$P2PUSB detach "$(vhci_port_of "$vb")"
		wait_gone g1
		given_back "$BUSID" usb-storage 10 || die "not given back after detach"
	done
	no_protocol_errors
}

# F2. The server is SIGKILLed mid-copy: the kernel closes its socket, so
# the client's vhci port is freed and the reader gets an I/O error, all
# within bounds.  A new server then imports the device (left without a
# driver: usbfs does not rebind what p2pusb detached) and gives it back.
fault_server_killed() {
	local vb disk port pid rc
	storage_gadget g1
	start_server "$BUSID"
	port=$($P2PUSB attach 127.0.0.1 "$BUSID")
	vb=$(imported_busid g1)
	disk=$(wait_for_disk "$vb" 30)
	timeout 60 dd if="$disk" of=/dev/null bs=1M count=64 iflag=direct \
		status=none 2>/tmp/dd.err &
	pid=$!
	sleep 2
	kill -0 $pid 2>/dev/null || die "the copy ended before the fault"
	T0=$(ms_now)
	kill -KILL "$SERVER_PID"
	watch_events 30 \
		port="vhci_port_free $port" \
		copy="! kill -0 $pid" \
		gone="[ -z \"\$(usb_busids $(gadget_id g1) vhci_hcd)\" ]" || true
	wait "$SERVER_PID" 2>/dev/null || true
	SERVER_PID=
	rc=0; wait $pid || rc=$?
	echo "measured: server SIGKILLed mid-copy: vhci port free after $(when port), imported device gone after $(when gone), reader ended after $(when copy) with exit $rc ($(head -c 60 /tmp/dd.err))"
	[ -n "${WHEN[port]:-}" ] || die "vhci port $port still in use"
	[ -n "${WHEN[gone]:-}" ] || die "the imported device is still there"
	[ -n "${WHEN[copy]:-}" ] && [ $rc -ne 0 ] && [ $rc -ne 124 ] ||
		die "the reader did not fail promptly (exit $rc)"
	grep -qi "error" /tmp/dd.err || die "the reader saw no I/O error"
	$P2PUSB port | tee /tmp/port
	grep -q "no imported devices" /tmp/port || die "p2pusb port still lists a device"
	echo "server side after the kill: $BUSID:1.0 bound to $(driver_of "$BUSID:1.0")"
	# A new server takes over.  The killed one left the device
	# mid-command, and the client's port reset stays inside vhci_hcd.
	start_server "$BUSID"
	port=$($P2PUSB attach 127.0.0.1 "$BUSID")
	vb=$(imported_busid g1)
	disk=$(wait_for_disk "$vb" 30) || {
		dmesg | grep -E "reset high-speed|unlink" | tail -n 5
		die "the new server's import never became a disk: the device still runs the killed session's command (not reset at import?)"
	}
	DATA_MIB=4 disk_check "$disk" "$IMAGE"
	$P2PUSB detach "$port"
	wait_gone g1
	given_back "$BUSID" usb-storage 10 ||
		die "not given back to usb-storage by the new server"
	echo "a new server imported it again and gave it back to usb-storage"
}

# F3. The device is unplugged on the server (its gadget leaves the UDC),
# first mid-copy, then while the session is idle.  The session ends, the
# imported device disappears on the client, and once plugged in again the
# same running server offers and imports it.
fault_unplug() {
	local g=$CONFIGFS/g1 udc vb disk port pid n rc round
	storage_gadget g1
	read -r udc <"$g/UDC"
	start_server "$BUSID"
	for round in mid-copy idle; do
		port=$($P2PUSB attach 127.0.0.1 "$BUSID")
		vb=$(imported_busid g1)
		disk=$(wait_for_disk "$vb" 30)
		pid=
		if [ $round = mid-copy ]; then
			timeout 60 dd if="$disk" of=/dev/null bs=1M count=64 \
				iflag=direct status=none 2>/tmp/dd.err &
			pid=$!
			sleep 2
			kill -0 $pid 2>/dev/null || die "the copy ended before the fault"
		else
			sleep 2
		fi
		n=$(ended_count "$BUSID")
		T0=$(ms_now)
		echo "" >"$g/UDC"
		watch_events 30 \
			ended="[ \$(ended_count $BUSID) -gt $n ]" \
			port="vhci_port_free $port" \
			gone="[ -z \"\$(usb_busids $(gadget_id g1) vhci_hcd)\" ]" \
			copy="[ -z \"$pid\" ] || ! kill -0 $pid" || true
		rc=0; [ -z "$pid" ] || wait $pid || rc=$?
		echo "measured: unplugged $round: server ended the session after $(when ended), vhci port free after $(when port), imported device gone after $(when gone)$([ -z "$pid" ] || echo ", reader ended after $(when copy) with exit $rc")"
		grep "session for $BUSID ended" "$LOG/serve.log" | tail -n1
		[ -n "${WHEN[ended]:-}" ] || die "$round: the server did not end the session"
		grep "session for $BUSID ended" "$LOG/serve.log" | tail -n1 |
			grep -q "unplugged" || die "$round: the server does not say the device was unplugged"
		[ -n "${WHEN[port]:-}" ] && [ -n "${WHEN[gone]:-}" ] ||
			die "$round: the client kept the device"
		[ -z "$pid" ] || { [ -n "${WHEN[copy]:-}" ] && [ $rc -ne 0 ] && [ $rc -ne 124 ]; } ||
			die "$round: the reader did not fail promptly (exit $rc)"
		# Plugged in again: the same server offers it.
		echo "$udc" >"$g/UDC"
		BUSID=$(wait_for_busid "$(gadget_id g1)" dummy_hcd 20) || die "not re-enumerated"
		wait_for "$P2PUSB list 127.0.0.1 | grep -q '^$BUSID '" 10 ||
			die "the running server does not offer the re-plugged $BUSID"
	done
	port=$($P2PUSB attach 127.0.0.1 "$BUSID")
	disk=$(imported_disk g1)
	DATA_MIB=4 disk_check "$disk" "$IMAGE"
	$P2PUSB detach "$port"
	wait_gone g1
	no_protocol_errors
}

# F4. The network path dies silently: the client lives in a network
# namespace behind a veth pair, and netem drops every packet both ways.
# One import is busy (a reader), one idle; TCP_USER_TIMEOUT and keepalive
# (30 s + 3 x 5 s, also on the socket vhci holds) must end all four ends
# within 90 s.
fault_netpath() {
	local b1 b2 v1 v2 p1 p2 d1 pid n1 n2 rc
	modprobe -q -a veth sch_netem || die "no veth/netem"
	ip netns add cli
	ip link add p2p0 type veth peer name p2p1
	ip link set p2p1 netns cli
	ip addr add 10.99.0.1/24 dev p2p0
	ip link set p2p0 up
	ip netns exec cli ip addr add 10.99.0.2/24 dev p2p1
	ip netns exec cli ip link set p2p1 up
	make_image /tmp/g1.img 64; make_image /tmp/g2.img 64
	b1=$(gadget_storage g1 /tmp/g1.img)
	b2=$(gadget_storage g2 /tmp/g2.img)
	start_server
	wait_for "ip netns exec cli $P2PUSB list 10.99.0.1" 10 || die "no path over veth"
	p1=$(ip netns exec cli $P2PUSB attach 10.99.0.1 "$b1")
	p2=$(ip netns exec cli $P2PUSB attach 10.99.0.1 "$b2")
	v1=$(imported_busid g1); v2=$(imported_busid g2)
	d1=$(wait_for_disk "$v1" 30); wait_for_disk "$v2" 30 >/dev/null
	ip netns exec cli ss -t -n -o state established | sed 's/^/client: /'
	timeout 150 dd if="$d1" of=/dev/null bs=1M count=64 iflag=direct \
		status=none 2>/tmp/dd.err &
	pid=$!
	sleep 2
	kill -0 $pid 2>/dev/null || die "the copy ended before the fault"
	n1=$(ended_count "$b1"); n2=$(ended_count "$b2")
	T0=$(ms_now)
	tc qdisc add dev p2p0 root netem loss 100%
	ip netns exec cli tc qdisc add dev p2p1 root netem loss 100%
	watch_events 100 \
		srv_busy="[ \$(ended_count $b1) -gt $n1 ]" \
		srv_idle="[ \$(ended_count $b2) -gt $n2 ]" \
		cli_busy="vhci_port_free $p1" \
		cli_idle="vhci_port_free $p2" \
		copy="! kill -0 $pid" || true
	rc=0; kill -0 $pid 2>/dev/null && kill $pid; wait $pid || rc=$?
	echo "measured: path dropped: busy session noticed by the server after $(when srv_busy), by the client (vhci port free) after $(when cli_busy); idle session: server $(when srv_idle), client $(when cli_idle); reader ended after $(when copy) (exit $rc)"
	grep "session for .* ended" "$LOG/serve.log" || true
	local e
	for e in srv_busy srv_idle cli_busy cli_idle; do
		[ -n "${WHEN[$e]:-}" ] && [ "${WHEN[$e]}" -le 90000 ] ||
			die "$e: not noticed within 90 s"
	done
	tc qdisc del dev p2p0 root
	ip netns exec cli tc qdisc del dev p2p1 root
	given_back "$b1" usb-storage 10 && given_back "$b2" usb-storage 10 ||
		die "not given back to usb-storage"
	p1=$(ip netns exec cli $P2PUSB attach 10.99.0.1 "$b1")
	v1=$(imported_busid g1)
	d1=$(wait_for_disk "$v1" 30)
	dd if="$d1" of=/dev/null bs=1M count=2 iflag=direct status=none ||
		die "cannot read after importing again"
	echo "the path restored, $b1 imported again over veth and read"
	$P2PUSB detach "$p1"
	wait_gone g1
	no_protocol_errors
}

# F5a. Unlink storm from cdc-acm: the imported tty is opened and closed
# hundreds of times (each open submits bulk IN and interrupt URBs, each
# close unlinks them) while the gadget pumps data at it and a disk on the
# same server copies 16 MiB.  Then both streams must still be exact, and
# no session may have ended.
fault_unlink_serial() {
	local disk i fd w r c unlinks bus dev
	storage_gadget g1
	start_server
	$P2PUSB attach 127.0.0.1 "$BUSID" >/dev/null
	disk=$(imported_disk g1)
	acm_import s1
	read -r bus <"/sys/bus/usb/devices/$ACM_VB/busnum"
	read -r dev <"/sys/bus/usb/devices/$ACM_VB/devnum"
	timeout 300 cat "/sys/kernel/debug/usb/usbmon/${bus}u" >/tmp/usbmon &
	local mon=$!
	timeout 200 cat /dev/zero >"$GS" 2>/dev/null &
	w=$!
	timeout 200 cat "$GS" >/dev/null 2>&1 &
	r=$!
	disk_check "$disk" "$IMAGE" storm >/tmp/disk.out 2>&1 &
	c=$!
	T0=$(ms_now)
	for i in $(seq 300); do
		exec {fd}<>"$TTY"
		read -r -t 0.02 -N 64 -u $fd junk || true
		printf 'ping %d\n' "$i" >&$fd
		exec {fd}>&-
	done
	echo "measured: 300 opens and closes of $TTY in $(secs $(($(ms_now) - T0))) s"
	wait $c || { cat /tmp/disk.out; die "the disk's data check failed during the storm"; }
	cat /tmp/disk.out
	kill $w $r 2>/dev/null || true; wait $w $r 2>/dev/null || true
	kill $mon 2>/dev/null || true; wait $mon 2>/dev/null || true
	unlinks=$(awk -v d=$(printf '%03d' "$dev") '$3 == "C" && $5 ~ /^-(2|104)(:|$)/ { split($4, a, ":"); if (a[3] == d) n++ } END { print n + 0 }' /tmp/usbmon)
	echo "measured: $unlinks of the ACM device's URBs came back cancelled (usbmon on bus $bus); $(unlink_counts)"
	serial_drain "$TTY" "$GS"
	serial_check "$TTY" "$GS" 256
	DATA_MIB=4 disk_check "$disk" "$IMAGE"
	[ "$(ended_count "$BUSID")" -eq 0 ] && [ "$(ended_count "$ACM_BUSID")" -eq 0 ] ||
		die "a session ended during the storm"
	no_protocol_errors
}

# F5b. Readers killed mid-transfer, over and over, on three devices at
# once: dd on a disk, cat on an ACM tty, and usbfs-poke streaming through
# a loopback gadget with 16 URBs in flight (its death makes usbfs kill
# them all: CMD_UNLINKs in both directions).  Then every stream checks out.
fault_unlink_kill() {
	local disk i p
	storage_gadget g1
	start_server
	$P2PUSB attach 127.0.0.1 "$BUSID" >/dev/null
	disk=$(imported_disk g1)
	acm_import s1
	loopback_import l1
	timeout 200 cat /dev/zero >"$GS" 2>/dev/null &
	local w=$!
	T0=$(ms_now)
	(
		for i in $(seq 15); do
			dd if="$disk" of=/dev/null bs=1M count=64 iflag=direct status=none &
			p=$!; sleep 0.$((RANDOM % 8 + 2)); kill -KILL $p || true; wait $p || true
			dd if=/dev/zero of="$disk" bs=1M count=64 oflag=direct status=none &
			p=$!; sleep 0.$((RANDOM % 8 + 2)); kill -KILL $p || true; wait $p || true
		done 2>/dev/null
	) &
	local k1=$!
	(
		for i in $(seq 30); do
			cat "$TTY" >/dev/null &
			p=$!; sleep 0.$((RANDOM % 8 + 2)); kill -KILL $p || true; wait $p || true
		done 2>/dev/null
	) &
	local k2=$!
	(
		for i in $(seq 30); do
			$POKE stream &
			p=$!; sleep 0.$((RANDOM % 8 + 2)); kill -KILL $p || true; wait $p || true
		done 2>/dev/null
	) &
	local k3=$!
	wait $k1 $k2 $k3
	echo "measured: 30 dd, 30 cat and 30 usbfs streamers killed mid-transfer in $(secs $(($(ms_now) - T0))) s; $(unlink_counts)"
	kill $w 2>/dev/null || true; wait $w 2>/dev/null || true
	$POKE drain
	$POKE check 262144 || die "loopback stream desynchronised"
	echo "loopback: 256 KiB written and read back intact"
	serial_drain "$TTY" "$GS"
	serial_check "$TTY" "$GS" 256
	DATA_MIB=4 disk_check "$disk" "$IMAGE"
	for b in "$BUSID" "$ACM_BUSID" "$LB_BUSID"; do
		[ "$(ended_count "$b")" -eq 0 ] || die "the session for $b ended"
	done
	no_protocol_errors
}

# F5c. Endpoint halt and SET_INTERFACE sequences through usbfs on the
# imported loopback device: CLEAR_HALT on both endpoints and SET_INTERFACE
# with reads pending, reads and writes discarded mid-transfer; a data
# check after each (usbfs-poke storm), while a disk on the same server
# copies 16 MiB.  The server runs those requests itself (run_intercepted).
fault_unlink_halt() {
	local disk c
	storage_gadget g1
	start_server
	$P2PUSB attach 127.0.0.1 "$BUSID" >/dev/null
	disk=$(imported_disk g1)
	loopback_import l1
	$POKE check 65536 || die "loopback does not work to start with"
	disk_check "$disk" "$IMAGE" storm >/tmp/disk.out 2>&1 &
	c=$!
	$POKE storm 40 >/tmp/poke.out || { cat /tmp/poke.out; die "usbfs-poke storm failed"; }
	wait $c || { cat /tmp/disk.out; die "the disk's data check failed during the storm"; }
	cat /tmp/disk.out
	echo "measured: $(cat /tmp/poke.out)"
	$POKE check 262144 || die "loopback stream desynchronised after the storm"
	[ "$(ended_count "$BUSID")" -eq 0 ] && [ "$(ended_count "$LB_BUSID")" -eq 0 ] ||
		die "a session ended during the storm"
	grep -c "ran request" "$LOG/serve.log" | sed 's/^/requests the server ran itself: /'
	no_protocol_errors
}

# gadget_sourcesink NAME: Gadget Zero's SourceSink function: its bulk IN
# endpoint sends the test pattern (pattern=1: byte i of each packet is
# i % 63) that usbfs-poke's cancel and pattern modes check; its vendor
# requests 0x5b and 0x5c write and read back its endpoint 0 buffer.  No
# kernel driver binds it.  Echoes its busid.
gadget_sourcesink() {
	local f=$CONFIGFS/$1/functions/SourceSink.0
	modprobe -q usb_f_ss_lb 2>/dev/null || true
	_gadget_create "$1" SourceSink.0 || return 1
	echo 1 >"$f/pattern"
	echo 4096 >"$f/bulk_buflen"
	_gadget_plug "$1"
}

# bulk_eps BUSID: sets EP_OUT and EP_IN, the bulk endpoints of BUSID:1.0.
bulk_eps() {
	local ep
	EP_OUT=""; EP_IN=""
	for ep in /sys/bus/usb/devices/"$1":1.0/ep_*; do
		ep=${ep##*ep_}
		[ $((0x$ep & 0x80)) -ne 0 ] && EP_IN=$ep || EP_OUT=$ep
	done
	[ -n "$EP_IN" ] && [ -n "$EP_OUT" ] || die "$1:1.0 has no bulk endpoints"
}

# vhci_drops: what vhci_hcd said when it gave up on a connection.
vhci_drops() {
	dmesg | grep -E "cannot find a urb|connection closed|stop threads|disconnect device|recv a header|unlink->seqnum [0-9]+ not found" || true
}

# F5d. Cancel storm: through the kernel's usbip attach, a usbfs program
# submits a read on the imported SourceSink's bulk IN endpoint and
# discards it at once, 1,000 times; each comes back (cancelled or with
# the gadget's pattern).  vhci_hcd now and then puts a CMD_UNLINK on the
# wire before the CMD_SUBMIT it names (seen on 6.1 and 6.12, a few times
# in 1,000 cycles); answered RET_UNLINK 0 and then RET_SUBMIT, vhci finds
# no URB for the RET_SUBMIT ("cannot find a urb of seqnum"), takes the
# stream for broken and drops the device (and on 6.12 usbfs may then hang
# in DISCARDURB for good).  Afterwards the device must still be attached,
# its session alive, and reads must bring one unbroken stretch of the
# pattern.
cancel_storm() {
	local bin vb port poke rc pid dropped
	bin=$(poke_bin) || die "cannot build usbfs-poke"
	BUSID=$(gadget_sourcesink z1)
	start_server "$BUSID"
	usbip attach -r 127.0.0.1 -b "$BUSID"
	vb=$(imported_busid z1)
	port=$(vhci_port_of "$vb")
	bulk_eps "$vb"
	poke="$bin $(usbfs_node "$vb") 0 $EP_OUT $EP_IN"
	$poke pattern 65536 || die "the imported SourceSink does not work to start with"
	# Watched rather than waited for: once vhci has dropped the device,
	# 6.12's usbfs can hang in DISCARDURB (usb_kill_urb) for good.
	$poke cancel 1000 120 >/tmp/poke.out 2>&1 &
	pid=$!
	T0=$(ms_now)
	dropped=
	while kill -0 $pid 2>/dev/null && [ $(($(ms_now) - T0)) -lt 150000 ]; do
		if [ -z "$dropped" ] && { vhci_port_free "$port" ||
			dmesg | grep -q "cannot find a urb"; }; then
			dropped=$(ms_now)
		fi
		[ -z "$dropped" ] || [ $(($(ms_now) - dropped)) -lt 5000 ] || break
		sleep 0.5
	done
	rc=0
	if kill -0 $pid 2>/dev/null; then
		rc=124
		echo "usbfs-poke stuck after $(secs $(($(ms_now) - T0))) s (state $(awk '{ print $3 }' /proc/$pid/stat), in $(cat /proc/$pid/wchan 2>/dev/null))" >>/tmp/poke.out
		kill -KILL $pid 2>/dev/null || true
	else
		wait $pid || rc=$?
	fi
	sed 's/^/measured: /' /tmp/poke.out
	echo "measured: $(unlink_counts)"
	if [ -n "$dropped" ] || [ $rc -ne 0 ]; then
		vhci_drops | head -n 8 | sed 's/^/kernel: /'
		grep "session for $BUSID ended" "$LOG/serve.log" || true
		die "the cancel storm failed (exit $rc)${dropped:+: vhci dropped the device $(secs $((dropped - T0))) s in}"
	fi
	! grep -q "cannot find a urb" /tmp/dmesg.txt ||
		die "vhci_hcd got a RET_SUBMIT for a URB it had given back"
	[ -n "$(usb_busids "$(gadget_id z1)" vhci_hcd)" ] && ! vhci_port_free "$port" ||
		die "the imported device is gone"
	[ "$(ended_count "$BUSID")" -eq 0 ] || die "the session ended during the storm"
	$poke pattern 262144 || die "reads after the storm are not the pattern"
	no_protocol_errors
	usbip detach -p "$port"
	wait_gone z1
}

# ctrl_done FILE: the "done" lines of usbfs-poke ctrlq, by request index:
# "INDEX status S actual A NAME".
ctrl_done() { sed -n 's/^done //p' "$1" | sort -n; }

# F5e. Control requests keep their order: 16 asynchronous control requests
# queued at once on endpoint 0 (usbfs-poke ctrlq: descriptors, statuses,
# the gadget's vendor write and read-back, one it stalls, and the requests
# the server runs itself: SET_INTERFACE, CLEAR_FEATURE(ENDPOINT_HALT) on
# the IN endpoint; and CLEAR_FEATURE(ENDPOINT_HALT) on endpoint 0, which
# goes to the device like any other), first directly on the gadget
# (dummy_hcd), then imported through usbip attach.  The device completes
# them in order, so the import must too, each with the direct path's
# status and length.
ctrl_order() {
	local bin vb port rc
	bin=$(poke_bin) || die "cannot build usbfs-poke"
	BUSID=$(gadget_sourcesink z1)
	bulk_eps "$BUSID"
	$bin "$(usbfs_node "$BUSID")" 0 $EP_OUT $EP_IN ctrlq >/tmp/direct.out ||
		{ cat /tmp/direct.out; die "ctrlq failed directly on the gadget"; }
	sed 's/^/direct: /' /tmp/direct.out
	grep -q "(submission order)" /tmp/direct.out ||
		die "the gadget itself completed them out of order: the test is wrong"
	! grep -q "differs" /tmp/direct.out || die "the gadget's read-back differs, directly"
	ctrl_done /tmp/direct.out | grep -q "status -32 .*stalls" ||
		die "the request meant to stall did not stall, directly"
	start_server "$BUSID"
	usbip attach -r 127.0.0.1 -b "$BUSID"
	vb=$(imported_busid z1)
	port=$(vhci_port_of "$vb")
	bulk_eps "$vb"
	rc=0
	timeout 60 $bin "$(usbfs_node "$vb")" 0 $EP_OUT $EP_IN ctrlq \
		>/tmp/import.out 2>&1 || rc=$?
	sed 's/^/import: /' /tmp/import.out
	grep "ran request" "$LOG/serve.log" | sed 's/^/server: /' || true
	[ $rc -eq 0 ] || die "ctrlq failed through the import (exit $rc)"
	ctrl_done /tmp/direct.out >/tmp/direct.done
	ctrl_done /tmp/import.out >/tmp/import.done
	local diffs
	diffs=$(diff /tmp/direct.done /tmp/import.done | grep -c '^>' || true)
	echo "measured: import completion $(grep '^order:' /tmp/import.out); $diffs of 16 requests ended differently from the direct path"
	diff /tmp/direct.done /tmp/import.done | sed -n 's/^</  direct:/p; s/^>/  import:/p'
	local bad=""
	grep -q "(submission order)" /tmp/import.out || bad="completions out of submission order"
	[ "$diffs" -eq 0 ] || bad="${bad:+$bad; }$diffs statuses or lengths differ from the direct path"
	! grep -q "differs" /tmp/import.out || bad="${bad:+$bad; }a vendor read-back differs"
	[ -z "$bad" ] || die "$bad"
	$bin "$(usbfs_node "$vb")" 0 $EP_OUT $EP_IN pattern 65536 ||
		die "the bulk IN endpoint does not work after the control requests"
	[ "$(ended_count "$BUSID")" -eq 0 ] || die "the session ended"
	no_protocol_errors
	usbip detach -p "$port"
	wait_gone z1
}

# F6. The server under valgrind across import, a 4 MiB copy, detach, and
# an import whose client vanishes mid-copy (ss -K): no error, no leak.
fault_valgrind() {
	local port vb disk pid n rc
	modprobe -q -a tcp_diag inet_diag || true
	storage_gadget g1
	valgrind -q --leak-check=full --error-exitcode=9 \
		--log-file="$LOG/valgrind.log" \
		./p2pusb -v serve -p $PORT "$BUSID" 2>"$LOG/serve.log" &
	SERVER_PID=$!
	wait_for_listen $PORT 120 || die "valgrind'd server did not start"
	port=$($P2PUSB attach 127.0.0.1 "$BUSID")
	vb=$(imported_busid g1)
	disk=$(wait_for_disk "$vb" 60)
	DATA_MIB=4 disk_check "$disk" "$IMAGE"
	$P2PUSB detach "$port"
	wait_gone g1
	given_back "$BUSID" usb-storage 30 || die "not given back after detach"
	port=$($P2PUSB attach 127.0.0.1 "$BUSID")
	vb=$(imported_busid g1)
	disk=$(wait_for_disk "$vb" 60)
	timeout 120 dd if="$disk" of=/dev/null bs=1M count=16 iflag=direct status=none &
	pid=$!
	sleep 2
	n=$(ended_count "$BUSID")
	ss -K -t -n dst 127.0.0.1 dport = :$PORT >/dev/null
	wait_for "[ \$(ended_count $BUSID) -gt $n ]" 30 || die "session not ended"
	wait $pid || true
	given_back "$BUSID" usb-storage 30 || die "not given back after the client vanished"
	kill -TERM "$SERVER_PID"
	timeout 120 tail --pid="$SERVER_PID" -f /dev/null || die "valgrind'd server did not stop"
	rc=0; wait "$SERVER_PID" || rc=$?
	SERVER_PID=
	cat "$LOG/valgrind.log"
	[ $rc -eq 0 ] || die "server under valgrind exited with $rc"
	# libusb's USBDEVFS_GET_SPEED (_IO, no argument) is unknown to
	# valgrind, which says so once; anything else is a finding.
	! grep -v -e "unhandled ioctl 0x551f with no size/direction" \
		-e "could cause spurious value errors" \
		-e "README_MISSING_SYSCALL_OR_IOCTL" "$LOG/valgrind.log" ||
		die "valgrind reported something"
	echo "valgrind: no errors, no leaks"
}

# F7. Soak: for about 60 s, cycles of import disk and serial port, copy
# through both, detach; the server's descriptors and resident memory, taken
# between cycles, must stay flat.
fault_soak() {
	local fd0 rss0 fd1 rss1 fd2 rss2 cycles=0 disk p1 p2 start
	storage_gadget g1
	ACM_BUSID=$(gadget_acm s1)
	GS=$(gadget_tty s1)
	start_server
	fd0=$(proc_fds "$SERVER_PID"); rss0=$(proc_kb "$SERVER_PID" VmRSS)
	start=$(ms_now)
	while [ $cycles -lt 3 ] || [ $(($(ms_now) - start)) -lt 60000 ]; do
		[ $cycles -lt 30 ] || break
		p1=$($P2PUSB attach 127.0.0.1 "$BUSID")
		acm_attach s1
		p2=$(vhci_port_of "$ACM_VB")
		disk=$(imported_disk g1)
		DATA_MIB=2 disk_check "$disk" "$IMAGE" soak >/tmp/disk.out 2>&1 &
		local c=$!
		serial_check "$TTY" "$GS" 64 >/dev/null
		wait $c || { cat /tmp/disk.out; die "disk check failed in cycle $cycles"; }
		$P2PUSB detach "$p1"
		$P2PUSB detach "$p2"
		wait_gone g1; wait_gone s1
		given_back "$BUSID" usb-storage 10 && given_back "$ACM_BUSID" cdc_acm 10 || {
			dmesg | grep "probe of $ACM_BUSID" | tail -n 2
			die "not given back in cycle $cycles: $BUSID:1.0 has $(driver_of "$BUSID:1.0"), $ACM_BUSID:1.0 has $(driver_of "$ACM_BUSID:1.0")"
		}
		cycles=$((cycles + 1))
		if [ $cycles = 1 ]; then
			fd1=$(proc_fds "$SERVER_PID"); rss1=$(proc_kb "$SERVER_PID" VmRSS)
		fi
	done
	fd2=$(proc_fds "$SERVER_PID"); rss2=$(proc_kb "$SERVER_PID" VmRSS)
	echo "measured: soak $cycles cycles in $(secs $(($(ms_now) - start))) s (each: 2 MiB disk + 64 KiB serial each way)"
	echo "measured: server fds $fd0 at start, $fd1 after cycle 1, $fd2 at the end"
	echo "measured: server VmRSS $rss0 kB at start, $rss1 kB after cycle 1, $rss2 kB at the end"
	[ "$fd2" -eq "$fd0" ] || die "descriptors leaked: $fd0 -> $fd2"
	[ $((rss2 - rss1)) -le 256 ] || die "resident memory grew by $((rss2 - rss1)) kB"
	no_protocol_errors
}

# F8. The client changes the configuration (unconfigure, configure again:
# what writing bConfigurationValue does).  The server runs
# SET_CONFIGURATION itself; the device must stay with the session (usbfs
# on the server side) and work afterwards.
fault_reconfigure() {
	local vb disk cfg=
	storage_gadget g1
	start_server "$BUSID"
	$P2PUSB attach 127.0.0.1 "$BUSID" >/dev/null
	vb=$(imported_busid g1)
	disk=$(wait_for_disk "$vb" 30)
	echo 0 >"/sys/bus/usb/devices/$vb/bConfigurationValue" || echo "unconfigure refused"
	sleep 1
	echo "after unconfigure: server side $BUSID:1.0 driver $(driver_of "$BUSID:1.0")"
	read -r cfg <"/sys/bus/usb/devices/$BUSID/bConfigurationValue" || true
	echo "server side configuration: '$cfg'"
	echo 1 >"/sys/bus/usb/devices/$vb/bConfigurationValue" || echo "configure refused"
	sleep 1
	echo "after configure: server side $BUSID:1.0 driver $(driver_of "$BUSID:1.0")"
	grep "ran request" "$LOG/serve.log"
	[ "$(driver_of "$BUSID:1.0")" = usbfs ] ||
		die "the server-side device left the session (driver $(driver_of "$BUSID:1.0"))"
	disk=$(wait_for_disk "$vb" 30)
	DATA_MIB=4 disk_check "$disk" "$IMAGE"
	[ "$(ended_count "$BUSID")" -eq 0 ] || die "the session ended"
}

# A client floods submits and never reads a reply: the server stops
# reading it, its memory stays bounded, and another client is served.
flood() {
	local flooded port disk hwm fl
	storage_gadget g1
	flooded=$BUSID
	make_image /tmp/g2.img 64
	BUSID=$(gadget_storage g2 /tmp/g2.img)
	start_server
	tests/flood 127.0.0.1 $PORT "$flooded" 25 >/tmp/flood.out &
	fl=$!
	sleep 5
	port=$($P2PUSB attach 127.0.0.1 "$BUSID")
	disk=$(imported_disk g2)
	disk_check "$disk" /tmp/g2.img
	hwm=$(proc_kb "$SERVER_PID" VmHWM) || die "no VmHWM for the server"
	wait $fl || die "flood client failed"
	cat /tmp/flood.out
	echo "measured: server peak RSS $hwm kB while one client flooded"
	[ "$hwm" -lt 65536 ] || die "server memory grew to $hwm kB"
	$P2PUSB detach "$port"
	wait_gone g2
	given_back "$flooded" usb-storage 20 || die "flooded device not given back"
}

# 14. systemd's socket activation, the README's p2pusb.socket with
# Accept=yes: one `p2pusb serve --stdio BUSID` per connection, its stdin
# and stdout the accepted socket; the kernel's usbip attach as the client.
socket_activation() {
	local vb disk sa
	storage_gadget g1
	systemd-socket-activate --inetd --accept -l 127.0.0.1:$PORT \
		$P2PUSB -v serve --stdio "$BUSID" 2>"$LOG/serve.log" &
	sa=$!
	wait_for_listen $PORT 10
	usbip attach -r 127.0.0.1 -b "$BUSID"
	vb=$(imported_busid g1)
	disk=$(wait_for_disk "$vb" 30)
	disk_check "$disk" "$IMAGE"
	usbip detach -p "$(vhci_port_of "$vb")"
	wait_gone g1
	given_back "$BUSID" usb-storage 10 ||
		die "device not given back after the socket-activated session"
	grep -q "stdio: imported $BUSID" "$LOG/serve.log" ||
		die "no import in the per-connection server's log"
	kill "$sa"
	wait "$sa" || true
}

# --busy-poll changes only when the server sleeps: the same data checks.
kernel_client_busy_poll() {
	SERVE_OPTS="--busy-poll 200"
	kernel_client
	grep -q "imported" "$LOG/serve.log" || die "no import logged"
}

# ... and in the --via relay, both directions, with the server's too.
via_pipe_busy_poll() {
	VIA_OPTS="--busy-poll 200" SERVE_OPTS="--busy-poll 200" via_pipe
}

# 17. Devices by VID:PID: serve offers what matches, attach finds the one
# busid on the server (p2pusb port shows it), an ambiguous VID:PID is one
# error line, and attach --persist follows the device to another port.
by_vid_pid() {
	local id1 id2 b1 b2 port disk rc=0 out udc keeper
	DATA_MIB=4
	storage_gadget g1
	b1=$BUSID
	id1=$(gadget_id g1)
	make_image /tmp/g2.img 64
	gadget_storage g2 /tmp/g2.img >/dev/null
	id2=$(gadget_id g2)
	start_server "$id1" "$id2"
	for id in "$id1" "$id2"; do
		port=$($P2PUSB attach 127.0.0.1 "$id")
		$P2PUSB port | tee /tmp/port
		grep -q "^port $port: .* 3240 $(usb_busids "$id" dummy_hcd)\$" \
			/tmp/port || die "p2pusb port does not name the busid"
		disk=$(imported_disk "$([ "$id" = "$id1" ] && echo g1 || echo g2)")
		disk_check "$disk" "$([ "$id" = "$id1" ] && echo "$IMAGE" ||
			echo /tmp/g2.img)"
		$P2PUSB detach "$port"
	done
	wait_gone g1
	wait_gone g2
	# A second device with g1's VID:PID: ambiguous.
	make_image /tmp/g3.img 8
	_gadget_create g3 mass_storage.0
	echo "$((0x${id1#*:}))" >"$CONFIGFS/g3/idProduct"
	echo /tmp/g3.img >"$CONFIGFS/g3/functions/mass_storage.0/lun.0/file"
	_gadget_plug g3 >/dev/null
	wait_for "[ \$(usb_busids $id1 dummy_hcd | wc -l) -eq 2 ]" 20 ||
		die "no second $id1"
	out=$($P2PUSB attach 127.0.0.1 "$id1" 2>&1) || rc=$?
	echo "$out"
	[ "$rc" -eq 1 ] && [ "$(echo "$out" | wc -l)" -eq 1 ] &&
		echo "$out" | grep -q "$id1 is 2 devices on 127.0.0.1:3240" ||
		die "an ambiguous VID:PID: not one error line and exit 1"
	gadget_remove g3	# (its wait for g1's VID:PID to go gives up: fine)
	# --persist by VID:PID across a re-plug into another port.
	$P2PUSB attach --persist 127.0.0.1 "$id1" >/tmp/ports \
		2>"$LOG/persist.log" &
	keeper=$!
	wait_port /tmp/ports >/dev/null
	imported_disk g1 >/dev/null
	udc=$(_gadget_free_udc)
	echo "" >"$CONFIGFS/g1/UDC"
	echo "$udc" >"$CONFIGFS/g1/UDC"
	wait_for "[ -n \"\$(usb_busids $id1 dummy_hcd)\" ]" 20 ||
		die "g1 did not come back on $udc"
	b2=$(usb_busids "$id1" dummy_hcd)
	echo "g1 moved from $b1 to $b2"
	[ "$b1" != "$b2" ] || die "the busid did not change"
	wait_for "[ \$(wc -l </tmp/ports) -ge 2 ]" 60 ||
		die "--persist did not import $id1 again"
	disk=$(imported_disk g1)
	disk_check "$disk" "$IMAGE"
	$P2PUSB port | grep -q " 3240 $b2\$" ||
		die "p2pusb port does not name the new busid $b2"
	grep "importing again" "$LOG/persist.log" | head -n 2
	kill -TERM "$keeper"
	timeout 20 tail --pid="$keeper" -f /dev/null || die "--persist did not stop"
	wait_gone g1
}

# 19. VID:PID over the two other links.  A VID:PID costs two links: one for
# OP_REQ_DEVLIST, one for the import of the busid it found.  attach
# --listen accepts twice, so serve --connect must dial again after the
# list; attach --via runs its command twice.  Neither command line names
# the busid: p2pusb port must.
vid_pid_dialing() {
	local id port disk pid t0
	storage_gadget g1
	id=$(gadget_id g1)
	# attach --listen VID:PID, the server dialing in (itself by VID:PID).
	t0=$(ms_now)
	$P2PUSB -v attach --listen 127.0.0.1:3241 "$id" >/tmp/port \
		2>"$LOG/listen.log" &
	pid=$!
	wait_for_listen 3241 10 || { kill $pid; die "attach --listen is not listening"; }
	$P2PUSB -v serve --connect 127.0.0.1:3241 "$id" 2>"$LOG/serve.log" &
	SERVER_PID=$!
	timeout 30 tail --pid=$pid -f /dev/null ||
		{ kill $pid; cat "$LOG/listen.log"; die "attach --listen $id: no import within 30 s"; }
	wait $pid || { cat "$LOG/listen.log"; die "attach --listen $id failed"; }
	port=$(cat /tmp/port)
	echo "measured: attach --listen $id: port $port in $(secs $(($(ms_now) - t0))) s;" \
		"server's dials refused meanwhile: $(grep -c "again in" "$LOG/serve.log" || true)"
	grep -E ": (listed|imported)" "$LOG/serve.log"
	grep -q "listed 1 devices" "$LOG/serve.log" &&
		grep -q "imported $BUSID" "$LOG/serve.log" ||
		die "serve --connect: not one dial for the list, one for the import"
	disk=$(imported_disk g1)
	$P2PUSB port | tee /tmp/port.list
	grep -q "^port $port: .* $id .*127\.0\.0\.1 [0-9]* $BUSID\$" \
		/tmp/port.list || die "p2pusb port does not name the busid $BUSID (--listen)"
	disk_check "$disk" "$IMAGE"
	$P2PUSB detach "$port"
	wait_gone g1
	stop_server
	given_back "$BUSID" usb-storage 10 ||
		die "device not given back after the --listen session"
	# attach --via VID:PID, the command a serve --stdio VID:PID.
	t0=$(ms_now)
	$P2PUSB -v attach --via "$P2PUSB -v serve --stdio $id" "$id" \
		>/tmp/port 2>"$LOG/relay.log" &
	pid=$!
	port=$(wait_port /tmp/port) ||
		{ kill $pid; cat "$LOG/relay.log"; die "attach --via $id: no port within 30 s"; }
	echo "measured: attach --via $id: port $port in $(secs $(($(ms_now) - t0))) s"
	disk=$(imported_disk g1)
	$P2PUSB port | tee /tmp/port.list
	grep -q "^port $port: .* $id .*via relay $BUSID\$" /tmp/port.list ||
		die "p2pusb port does not name the busid $BUSID (--via)"
	disk_check "$disk" "$IMAGE"
	$P2PUSB detach "$port"
	wait_gone g1
	timeout 20 tail --pid=$pid -f /dev/null ||
		{ kill $pid; die "relay did not end"; }
	wait $pid || die "relay exited with an error"
	grep -E "stdio: (listed|imported)" "$LOG/relay.log"
	grep -q "stdio: listed 1 devices" "$LOG/relay.log" &&
		grep -q "stdio: imported $BUSID" "$LOG/relay.log" ||
		die "--via: not one serve --stdio for the list, one for the import"
	given_back "$BUSID" usb-storage 10 ||
		die "device not given back after the --via session"
}

# 18. serve --pcap, and the --via relay's: a mass-storage session captured
# as usbmon records (test.sh decodes $LOG/*.pcap with tshark on the host).
pcap_capture() {
	SERVE_OPTS="--pcap $LOG/capture.pcap" kernel_client
	stop_server || die "serve --pcap did not exit cleanly"
	[ -s "$LOG/capture.pcap" ] || die "no capture written"
	gadget_remove g1
	VIA_OPTS="--pcap $LOG/relay.pcap" SERVE_OPTS="" via_pipe
	[ -s "$LOG/relay.pcap" ] || die "the relay wrote no capture"
}

scenario=${1:?usage: scenarios.sh NAME [P2PUSB-BINARY]}
load_usb_modules 4 2>/dev/null
"$scenario"
