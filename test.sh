#!/bin/bash
# test.sh - build p2pusb and run every test; the last line is
# "N passed, N failed" and the exit status is non-zero on any failure.
#
# Host tests need nothing but a compiler.  Everything that needs USB runs in
# a qemu VM booting Debian's stock kernel (tests/vm.sh), where the device
# is a dummy_hcd gadget or one of qemu's emulated xHCI devices and the peer
# is the real kernel: vhci_hcd, usbip-host, usb-storage, cdc-acm,
# snd-usb-audio.  Missing packages are installed with apt-get.
set -u
cd "$(dirname "$0")"

PACKAGES="gcc make pkg-config libusb-1.0-0-dev clang valgrind
	qemu-system-x86 linux-image-amd64 linux-image-6.12-amd64
	busybox-static kmod cpio xz-utils zstd
	usbip usbutils alsa-utils sox openssh-server openssh-client systemd
	tshark"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/p2pusb-test.XXXXXX")
PORT=$((20000 + $$ % 20000))
passed=0
failed=0
ONLY=${1:-}

cleanup() {
	[ -z "${SERVER_PID:-}" ] || kill "$SERVER_PID" 2>/dev/null
	rm -rf "$WORK"
}
trap cleanup EXIT

# missing_packages PKG...: the ones dpkg does not have installed.
missing_packages() {
	local p
	for p; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null |
			grep -q "ok installed" || echo "$p"
	done
}

# apt_install PKG...: one broken index (a foreign architecture's, say)
# must not stop the install of everything else.
apt_install() {
	echo "installing: $*"
	apt-get update -q >/dev/null ||
		echo "apt-get update had errors; installing anyway"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
		--no-install-recommends "$@" >/dev/null
}

install_missing() {
	local missing policy=/usr/sbin/policy-rc.d made=
	missing=$(missing_packages $PACKAGES)
	[ -n "$missing" ] || return 0
	# The tests start their own sshd on the VM's loopback; the package
	# must not start one on this machine.
	if [ ! -e $policy ]; then
		printf '#!/bin/sh\nexit 101\n' >$policy && chmod +x $policy &&
			made=1
	fi
	apt_install $missing
	local rc=$?
	[ -z "$made" ] || rm -f $policy
	return $rc
}

# check NAME CMD...: one test case; its output is shown only if it fails.
# With an argument, test.sh runs only the cases whose name contains it.
check() {
	local name=$1 log
	shift
	[[ $name == *"$ONLY"* ]] || return 0
	log="$WORK/$(echo "$name" | tr -c 'a-zA-Z0-9\n' '_').log"
	if "$@" >"$log" 2>&1; then
		passed=$((passed + 1))
		echo "ok   $name"
		grep -h '^measured:' "$log" | sed 's/^/     /'
	else
		failed=$((failed + 1))
		echo "FAIL $name"
		tail -n 60 "$log" | sed 's/^/     | /'
	fi
}

# ---- build ----

build_with() {
	make -B CC="$1" p2pusb
}

# ONCE (cold) code is compiled for size, and gcc takes what only cold code
# calls for cold too: a ONCE in the wrong place would put the URB path in
# .text.unlikely, compiled for size (as c0f304d did, unseen, for months).
urb_path_not_cold() {
	local o=$WORK/urb-path.o f cold
	gcc -std=c11 -O2 -fno-asynchronous-unwind-tables \
		$(pkg-config --cflags libusb-1.0) -c -o "$o" p2pusb.c || return 1
	# (a NAME.cold is the cold part gcc split off a function: fine)
	cold=$(objdump -t "$o" | awk '$4 == ".text.unlikely" { print $NF }' |
		grep -v '\.cold$' | sed 's/\..*//')
	for f in serve read_input on_input on_header on_cmd_submit submit_urb \
		on_transfer_done answer_transfer queue_ret_submit write_output \
		get_urb put_urb pollset_add pump frame payload_after; do
		if echo "$cold" | grep -qx "$f"; then
			echo "$f is compiled as cold code"
			return 1
		fi
	done
	echo "measured: $(echo "$cold" | grep -c .) functions in .text.unlikely," \
		"none of the URB path"
}

build_asan() {
	gcc -std=c11 -Wall -Wextra -Werror -g -O1 \
		-fsanitize=address,undefined -fno-omit-frame-pointer \
		$(pkg-config --cflags libusb-1.0) -o tests/p2pusb-asan p2pusb.c \
		$(pkg-config --libs libusb-1.0)
}

wire_test() {
	gcc -std=c11 -Wall -Wextra -Werror -g -fsanitize=address,undefined \
		$(pkg-config --cflags libusb-1.0) -o tests/wire-test \
		tests/wire-test.c $(pkg-config --libs libusb-1.0) &&
		tests/wire-test
}

# ---- host: a server on a machine without USB ----

# send_hex HEX [hangup]: raw bytes to the server; prints its reply as hex,
# or with "hangup" closes the connection right after sending.
send_hex() {
	exec 3<>/dev/tcp/127.0.0.1/$PORT || return 1
	printf "$(echo "$1" | sed 's/ //g; s/../\\x&/g')" >&3
	[ "${2:-}" = hangup ] || timeout 5 od -An -v -tx1 <&3 | tr -d ' \n'
	exec 3<&-
}

zeros() { printf '00%.0s' $(seq "$1"); }

# start_host_server BIN [SERVE-OPTIONS...] (BIN may be a command line)
start_host_server() {
	local bin=$1
	shift
	$bin serve -a 127.0.0.1 -p $PORT "$@" 2>"$WORK/host-serve.log" &
	SERVER_PID=$!
	for _ in $(seq 50); do
		grep -q "serving on" "$WORK/host-serve.log" && return 0
		sleep 0.1
	done
	return 1
}

stop_host_server() {
	kill -INT "$SERVER_PID"
	wait "$SERVER_PID"
	SERVER_PID=
}

# A USB-less server still answers: an empty list, NODEV for any busid, and
# a broken request costs only that connection.
host_server() {
	local bin=$1 reply
	start_host_server "$bin" || return 1
	./p2pusb list 127.0.0.1:$PORT | tee /dev/stderr |
		grep -q "offers no devices" || return 1
	reply=$(send_hex "0111 8005 00000000")
	[ "$reply" = 011100050000000000000000 ] || { echo "devlist: $reply"; return 1; }
	reply=$(send_hex "0111 8003 00000000 312d31 $(zeros 29)")
	[ "$reply" = 0111000300000004 ] || { echo "import: $reply"; return 1; }
	reply=$(send_hex "0200 8005 00000000")
	[ -z "$reply" ] || { echo "bad version answered: $reply"; return 1; }
	grep -q "127.0.0.1:[0-9]*: .*version 2.00" "$WORK/host-serve.log" ||
		{ echo "no log line naming the peer"; return 1; }
	./p2pusb list 127.0.0.1:$PORT >/dev/null || return 1
	stop_host_server
	cat "$WORK/host-serve.log"
	grep -q "offering no devices" "$WORK/host-serve.log"
}

valgrind_server() {
	host_server "valgrind -q --error-exitcode=9 --leak-check=full --errors-for-leak-kinds=definite ./p2pusb" &&
		! grep -q "==[0-9]*==" "$WORK/host-serve.log"
}

# --allow: a client outside the list gets no answer and one log line.
host_allow() {
	start_host_server ./p2pusb --allow 10.0.0.0/8,fd00::/8 || return 1
	[ -z "$(send_hex "0111 8005 00000000")" ] || return 1
	stop_host_server
	grep "refused" "$WORK/host-serve.log"
	grep -q "^p2pusb: 127.0.0.1:[0-9]*: refused: not in --allow$" \
		"$WORK/host-serve.log" || return 1
	start_host_server ./p2pusb --allow 192.168.0.0/16,127.0.0.0/8 || return 1
	./p2pusb list 127.0.0.1:$PORT || return 1
	stop_host_server
}

# A client that sends one byte and waits holds nothing for long, and no
# one else waits for it.
host_silent_client() {
	local fd start
	start_host_server ./p2pusb || return 1
	exec {fd}<>/dev/tcp/127.0.0.1/$PORT
	printf '\x01' >&$fd
	./p2pusb list 127.0.0.1:$PORT || return 1
	start=$SECONDS
	timeout 20 cat <&$fd >/dev/null || return 1
	exec {fd}<&-
	echo "measured: a silent client was dropped after $((SECONDS - start)) s"
	stop_host_server
	grep -q "no complete request within 10 s" "$WORK/host-serve.log"
}

# Hundreds of connections at once; afterwards every descriptor is closed.
host_many_clients() {
	local fds=() fd i before after
	start_host_server ./p2pusb || return 1
	before=$(ls /proc/$SERVER_PID/fd | wc -l)
	for i in $(seq 300); do
		exec {fd}<>/dev/tcp/127.0.0.1/$PORT || return 1
		fds+=("$fd")
	done
	./p2pusb list 127.0.0.1:$PORT || return 1
	for fd in "${fds[@]}"; do exec {fd}<&-; done
	for i in $(seq 50); do
		after=$(ls /proc/$SERVER_PID/fd | wc -l)
		[ "$after" -eq "$before" ] && break
		sleep 0.1
	done
	echo "measured: server fds $before before 300 clients, $after after"
	stop_host_server
	[ "$after" -eq "$before" ]
}

# Out of descriptors, the server rests its listeners instead of spinning
# on a connection it cannot accept, and serves again once they are freed.
host_out_of_fds() {
	local bin=${1:-./p2pusb} fds=() fd pid t0 t1 hz used n
	(ulimit -n 32 && exec $bin serve -a 127.0.0.1 -p $PORT) \
		2>"$WORK/host-serve.log" &
	pid=$!
	for _ in $(seq 50); do
		grep -q "serving on" "$WORK/host-serve.log" && break
		sleep 0.1
	done
	for _ in $(seq 60); do
		exec {fd}<>/dev/tcp/127.0.0.1/$PORT || break
		fds+=("$fd")
	done
	sleep 0.5
	t0=$(awk '{ print $14 + $15 }' /proc/$pid/stat)
	sleep 3
	t1=$(awk '{ print $14 + $15 }' /proc/$pid/stat)
	hz=$(getconf CLK_TCK)
	used=$(( (t1 - t0) * 1000 / hz ))
	echo "measured: ${#fds[@]} connections under ulimit -n 32:" \
		"server used $used ms of CPU in 3 s"
	for fd in "${fds[@]}"; do exec {fd}<&-; done
	timeout 20 ./p2pusb list 127.0.0.1:$PORT || { kill $pid; return 1; }
	kill -INT $pid
	wait $pid
	cat "$WORK/host-serve.log"
	# One line each time the descriptors run out, not one per poll().
	n=$(grep -c "cannot accept connections" "$WORK/host-serve.log")
	[ "$used" -lt 300 ] && [ "$n" -ge 1 ] && [ "$n" -le 3 ]
}

# cpu_ms PID: user+system CPU time the process has used, in ms.
cpu_ms() {
	awk -v hz="$(getconf CLK_TCK)" '{ print int(($14 + $15) * 1000 / hz) }' \
		"/proc/$1/stat"
}

# --busy-poll spins only after events: an idle server sleeps as before.
host_busy_poll_idle() {
	local t0 t1
	start_host_server ./p2pusb --busy-poll 2000 || return 1
	./p2pusb list 127.0.0.1:$PORT || return 1
	sleep 1
	t0=$(cpu_ms $SERVER_PID)
	sleep 3
	t1=$(cpu_ms $SERVER_PID)
	echo "measured: idle serve --busy-poll 2000 used $((t1 - t0)) ms" \
		"of CPU in 3 s"
	./p2pusb list 127.0.0.1:$PORT || return 1
	stop_host_server
	[ $((t1 - t0)) -lt 30 ]
}

# make install lays out the binary and the README, and nothing else;
# make uninstall takes them away again.
make_install() {
	local d files
	d=$(mktemp -d "$WORK/install.XXXX")
	make -s install DESTDIR="$d" PREFIX=/usr || return 1
	files=$(cd "$d" && find . -type f | sort | tr '\n' ' ')
	echo "installed: $files"
	[ "$files" = "./usr/bin/p2pusb ./usr/share/doc/p2pusb/README " ] ||
		return 1
	"$d/usr/bin/p2pusb" -V || return 1
	make -s uninstall DESTDIR="$d" PREFIX=/usr || return 1
	[ -z "$(find "$d" -type f)" ]
}

# Every prefix of a handshake, then a hang-up: the server shrugs each off.
host_truncated_handshakes() {
	local req n
	req="01118003 00000000 312d31 $(zeros 29)"
	req=${req// /}
	start_host_server tests/p2pusb-asan || return 1
	for n in $(seq 0 2 78); do
		send_hex "${req:0:n}" hangup
	done
	[ "$(send_hex "$req")" = 0111000300000004 ] || return 1
	stop_host_server
	! grep -E "Sanitizer|runtime error" "$WORK/host-serve.log"
}

# ---- host: a hostile or broken server (tests/bad-server) ----

build_bad_server() {
	gcc -std=c11 -Wall -Wextra -Werror -O2 -o tests/bad-server \
		tests/bad-server.c
}

# hostile_list SCENARIO RC REGEX: `p2pusb list` against tests/bad-server
# playing SCENARIO.  It must exit RC and print nothing but printable ASCII
# and newlines; with RC 1 stderr is exactly one line naming the peer and
# matching the extended REGEX, with RC 0 stderr is empty and REGEX is for
# stdout.  (The attach forms need vhci_hcd: tests/hostile-server.sh.)
hostile_list() {
	local scen=$1 want=$2 re=$3 port=$((30000 + ($$ + 5000) % 10000))
	local out=$WORK/hostile-$1 rc bad n start=$SECONDS
	tests/bad-server -t 60 $port "$scen" 2>"$out.server" &
	bad=$!
	for _ in $(seq 50); do
		grep -q listening "$out.server" && break
		sleep 0.1
	done
	timeout 60 ./p2pusb list 127.0.0.1:$port >"$out.out" 2>"$out.err"
	rc=$?
	timeout 30 tail --pid=$bad -f /dev/null || kill $bad
	wait $bad
	echo "p2pusb list: exit $rc after $((SECONDS - start)) s; stdout:"
	head -n 3 "$out.out" | cut -c 1-200 | cat -v
	echo "stderr:"
	cat -v "$out.err"
	cat "$out.server"
	[ "$scen" != silent ] ||
		echo "measured: a silent server: p2pusb list gave up after $((SECONDS - start)) s"
	[ "$rc" -eq "$want" ] || { echo "exit $rc, expected $want"; return 1; }
	n=$(cat "$out.out" "$out.err" | LC_ALL=C tr -d '\n\040-\176' | wc -c)
	[ "$n" -eq 0 ] || { echo "$n bytes neither printable nor newline"; return 1; }
	if [ "$want" -eq 0 ]; then
		[ ! -s "$out.err" ] || { echo "stderr is not empty"; return 1; }
		grep -qE -- "$re" "$out.out" || { echo "stdout lacks /$re/"; return 1; }
	else
		[ "$(wc -l <"$out.err")" -eq 1 ] &&
			[ "$(awk 'END { print NR }' "$out.err")" -eq 1 ] ||
			{ echo "stderr is not exactly one line"; return 1; }
		grep -q "127.0.0.1:$port" "$out.err" ||
			{ echo "the error does not name the peer"; return 1; }
		grep -qE -- "$re" "$out.err" ||
			{ echo "the error lacks /$re/"; return 1; }
	fi
}

# The attach and attach --via forms too, against vhci_hcd: one VM.
vm_hostile() {
	local out
	out=$(mktemp -d "$WORK/vm-hostile.XXXX")
	tests/vm.sh -t 300 -o "$out" tests/hostile-server.sh
}

# ---- fuzz: the server's input path over a fake libusb (tests/fuzz.c) ----

# Every seed in tests/corpus under ASan+UBSan (gcc, no libFuzzer needed);
# the seeds must be exactly what the generator in tests/fuzz.c writes.
fuzz_replay() {
	gcc -std=c11 -Wall -Wextra -Werror -g -O1 -fno-omit-frame-pointer \
		-fsanitize=address,undefined -fno-sanitize-recover=all \
		$(pkg-config --cflags libusb-1.0) -o tests/fuzz-replay \
		tests/fuzz.c || return 1
	mkdir -p "$WORK/seeds" && tests/fuzz-replay -g "$WORK/seeds" &&
		diff -r tests/corpus "$WORK/seeds" ||
		{ echo "tests/corpus is not what tests/fuzz-replay -g writes"; return 1; }
	TMPDIR=$WORK tests/fuzz-replay tests/corpus
}

# libFuzzer for FUZZ_SECONDS (60), seeded from tests/corpus; new inputs stay
# in $WORK.  A crash fails the check; its input is kept and printed.
fuzz_libfuzzer() {
	local dir=$WORK/fuzz keep=${TMPDIR:-/tmp}/p2pusb-fuzz-crashes crash rc
	clang -g -O1 -Wall -Wextra -Werror -DFUZZ_LIBFUZZER \
		-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
		$(pkg-config --cflags libusb-1.0) -o tests/fuzz tests/fuzz.c ||
		return 1
	mkdir -p "$dir/corpus" "$dir/crashes"
	TMPDIR=$WORK tests/fuzz -max_total_time="${FUZZ_SECONDS:-60}" \
		-rss_limit_mb=2048 -timeout=10 -max_len=8192 \
		-artifact_prefix="$dir/crashes/" "$dir/corpus" tests/corpus \
		>"$dir/log" 2>&1
	rc=$?
	grep -a "^Done\|p2pusb-fuzz: FAIL\|ERROR:\|runtime error" "$dir/log"
	for crash in "$dir"/crashes/*; do
		[ -e "$crash" ] || continue
		mkdir -p "$keep" && cp "$crash" "$keep/" && rc=1
		echo "crash input: $keep/${crash##*/}"
		od -An -tx1 -v "$crash"
		[ -x tests/fuzz-replay ] && tests/fuzz-replay -d "$crash"
	done
	[ "$rc" -eq 0 ]
}

# ---- fuzz: the client's side: handshake replies, the --via relay ----

# Every client seed under ASan+UBSan (gcc); the seeds must be what the
# generator writes (fuzz_replay checks the whole tree, this its part).
fuzz_client_replay() {
	gcc -std=c11 -Wall -Wextra -Werror -g -O1 -fno-omit-frame-pointer \
		-fsanitize=address,undefined -fno-sanitize-recover=all \
		-DFUZZ_CLIENT $(pkg-config --cflags libusb-1.0) \
		-o tests/fuzz-client-replay tests/fuzz.c || return 1
	mkdir -p "$WORK/client-seeds" &&
		tests/fuzz-client-replay -g "$WORK/client-seeds" &&
		diff -r tests/corpus/client "$WORK/client-seeds/client" ||
		{ echo "tests/corpus/client is not what -g writes"; return 1; }
	TMPDIR=$WORK tests/fuzz-client-replay tests/corpus/client
}

# libFuzzer for FUZZ_SECONDS (60) on what a server sends the client,
# seeded from tests/corpus/client; as fuzz_libfuzzer.
fuzz_client_libfuzzer() {
	local dir=$WORK/fuzz-client keep=${TMPDIR:-/tmp}/p2pusb-fuzz-crashes
	local crash rc
	clang -g -O1 -Wall -Wextra -Werror -DFUZZ_LIBFUZZER -DFUZZ_CLIENT \
		-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
		$(pkg-config --cflags libusb-1.0) -o tests/fuzz-client \
		tests/fuzz.c || return 1
	mkdir -p "$dir/corpus" "$dir/crashes"
	TMPDIR=$WORK tests/fuzz-client -max_total_time="${FUZZ_SECONDS:-60}" \
		-rss_limit_mb=2048 -timeout=10 -max_len=8192 \
		-artifact_prefix="$dir/crashes/" "$dir/corpus" \
		tests/corpus/client >"$dir/log" 2>&1
	rc=$?
	for crash in "$dir"/crashes/*; do
		[ -e "$crash" ] || continue
		mkdir -p "$keep" && cp "$crash" "$keep/client-${crash##*/}" &&
			rc=1
		echo "crash input: $keep/client-${crash##*/}"
		od -An -tx1 -v "$crash"
		[ -x tests/fuzz-client-replay ] &&
			tests/fuzz-client-replay -d "$crash"
	done
	# last, so that check's tail shows why
	grep -a "^Done\|p2pusb-fuzz: FAIL\|ERROR:\|runtime error" "$dir/log"
	[ "$rc" -eq 0 ]
}

# serve takes busids and VID:PIDs; anything else with a colon is refused.
serve_device_names() {
	local out
	out=$(./p2pusb serve -a 127.0.0.1 -p $PORT 1-1 12:zz 2>&1) && return 1
	echo "$out"
	[ "$(echo "$out" | wc -l)" -eq 1 ] &&
		echo "$out" | grep -q "12:zz is neither a busid nor a VID:PID"
}

# Clear one-line errors for a client that cannot get anywhere.
client_errors() {
	local out
	out=$(./p2pusb attach 127.0.0.1:$PORT 1-1 2>&1) && return 1
	echo "$out"
	[ "$(echo "$out" | wc -l)" -eq 1 ] || return 1
	echo "$out" | grep -q "vhci_hcd not loaded" || return 1
	out=$(./p2pusb list 127.0.0.1:1 2>&1) && return 1
	echo "$out"
	echo "$out" | grep -q "cannot connect to 127.0.0.1 port 1" || return 1
	out=$(./p2pusb bogus 2>&1) && return 1
	echo "$out" | grep -q usage
}

# ---- VM scenarios ----

# vm_scenario [-K KERNEL] NAME [ARGS...]: tests/scenarios.sh NAME in a VM,
# on Debian 12's stock kernel or, with -K 6.12, on 6.12 (tests/vm.sh -K).
#
# The client's own kernel can die under the unlink storms: 6.12's vhci_hcd
# once oopsed in vhci_tx_loop (vhci_send_cmd_submit, a corrupted slab),
# while the server's side went on normally.  That is the kernel's bug, and
# a rare one, so a VM that died (vm.sh: 125) with vhci_hcd in its oops is
# booted once more and the oops is shown; a second death fails.
vm_scenario() {
	local out kernel=() try rc
	if [ "$1" = -K ]; then
		kernel=(-K "$2")
		shift 2
	fi
	for try in 1 2; do
		out=$(mktemp -d "$WORK/vm-$1${kernel[1]:+-${kernel[1]}}.XXXX")
		tests/vm.sh "${kernel[@]}" -t 300 -o "$out" tests/scenarios.sh \
			"$@" && return 0
		rc=$?
		[ "$rc" -eq 125 ] && [ "$try" -eq 1 ] &&
			grep -q " vhci_[a-z_]*+0x[0-9a-f/x]* \[vhci_hcd\]" \
				"$out/kernel.log" || return "$rc"
		echo "measured: the VM's kernel oopsed in vhci_hcd, booting" \
			"once more:" $(grep -m 2 -o " vhci_[a-z_]*+0x[0-9a-f/x]*" \
				"$out/kernel.log")
	done
}

# make bench is no test, but the helper it builds must not rot unseen.
rtt_bench_builds() {
	gcc -std=c11 -O2 -Wall -Wextra -Werror -pthread -o tests/rtt-bench \
		tests/rtt-bench.c &&
		tests/rtt-bench wake 0.1 | grep -E "^wake_us( [a-z_0-9]+ [0-9.]+){6}$"
}

# serve --pcap's capture of a mass-storage session, decoded by Wireshark's
# own dissectors (tshark): USB descriptors and usb-storage's SCSI commands
# are there, and not one record is malformed.
pcap_scenario() {
	local out=$WORK/vm-pcap f
	mkdir -p "$out"
	tests/vm.sh -t 300 -o "$out" tests/scenarios.sh pcap_capture ||
		return 1
	for f in "$out/capture.pcap" "$out/relay.pcap"; do
		pcap_decodes "$f" || { echo "in $f"; return 1; }
	done
}

pcap_decodes() {
	local f=$1 n
	# The gadget's MODE SENSE(6) answer has SCSI-2's 12-byte caching page,
	# which Wireshark's SBC dissector reads past (as it would in the
	# kernel's own usbmon capture): not the capture's fault.
	n=$(tshark -r "$f" -Y '_ws.malformed && !(scsi_sbc.opcode == 0x1a)' \
		2>/dev/null | wc -l)
	echo "measured: ${f##*/} holds $(tshark -r "$f" 2>/dev/null | wc -l)" \
		"usbmon records, $n malformed (MODE SENSE(6) aside)"
	[ "$n" -eq 0 ] ||
		{ tshark -r "$f" -Y _ws.malformed 2>/dev/null | head; return 1; }
	tshark -r "$f" 2>&1 >/dev/null | grep -i "cut short\|corrupt" &&
		return 1
	tshark -r "$f" -Y "usb.idVendor == 0x1d6b" 2>/dev/null | grep -q . ||
		{ echo "no device descriptor with the gadget's idVendor"; return 1; }
	tshark -r "$f" -Y "scsi_sbc.opcode == 0x28" 2>/dev/null | grep -q . ||
		{ echo "no SCSI READ(10)"; return 1; }
	tshark -r "$f" -Y "scsi_sbc.opcode == 0x2a" 2>/dev/null | grep -q . ||
		{ echo "no SCSI WRITE(10)"; return 1; }
}

flood_scenario() {
	gcc -std=c11 -Wall -Wextra -Werror -O2 -o tests/flood tests/flood.c &&
		vm_scenario flood
}

# The tone must come out of qemu's speaker: 440 Hz (counted by zero
# crossings) for most of its 2 s.
audio_scenario() {
	local out=$WORK/vm-audio
	mkdir -p "$out"
	sox -n -r 48000 -c 2 -b 16 "$out/tone.wav" synth 2 sine 440 vol 0.5
	tests/vm.sh -t 300 -o "$out" -q "-device qemu-xhci,id=xhci
		-device usb-audio,audiodev=snd0,bus=xhci.0
		-audiodev wav,id=snd0,path=$out/speaker.wav" \
		tests/scenarios.sh audio || return 1
	sox "$out/speaker.wav" -t raw -e signed -b 16 -c 1 - remix 1 |
		od -An -v -td2 -w2 |
		awk -v rate="$(soxi -r "$out/speaker.wav")" '
			$1 > 1000 || $1 < -1000 { if (!first) first = NR; last = NR }
			$1 > 1000 && s < 0 { x++ } $1 > 1000 { s = 1 }
			$1 < -1000 { s = -1 }
			END {
				sec = (last - first) / rate; f = x / sec
				printf "measured: %.2f s of tone at %.0f Hz reached the speaker\n", sec, f
				exit !(sec > 1.2 && f > 420 && f < 460)
			}'
}

# ---- cross: embedded boards (make CROSS=..., make static) ----

# Foreign architectures come from Debian multiarch, added only when one is
# missing; qemu-user runs the foreign binaries directly (no binfmt needed).
# aarch64 and armhf are the usual boards, armhf also the 32-bit ABI, s390x
# the big-endian one.  Installed on first use by the cross checks only.
CROSS_PACKAGES="qemu-user-static
	gcc-aarch64-linux-gnu libc6-dev-arm64-cross libusb-1.0-0-dev:arm64
	gcc-arm-linux-gnueabihf libc6-dev-armhf-cross libusb-1.0-0-dev:armhf
	gcc-s390x-linux-gnu libc6-dev-s390x-cross libusb-1.0-0-dev:s390x"
CROSS_READY=

install_cross() {
	local missing p
	[ -n "$CROSS_READY" ] && return 0
	missing=$(missing_packages $CROSS_PACKAGES)
	if [ -n "$missing" ]; then
		for p in $missing; do
			[[ $p == *:* ]] || continue
			dpkg --print-foreign-architectures | grep -qx "${p#*:}" ||
				dpkg --add-architecture "${p#*:}" || return 1
		done
		apt_install $missing || return 1
	fi
	CROSS_READY=1
}

# Both board builds with -Werror, they start under qemu-user, and the
# stripped sizes (README's footprint table).
cross_build() {
	local b s
	install_cross || return 1
	make p2pusb && make -B CROSS=aarch64-linux-gnu- &&
		make -B CROSS=arm-linux-gnueabihf- || return 1
	qemu-aarch64-static ./p2pusb-aarch64 -V | grep "^p2pusb " &&
		qemu-arm-static ./p2pusb-armhf -V | grep "^p2pusb " || return 1
	s="measured: stripped size"
	for b in :p2pusb aarch64-linux-gnu-:p2pusb-aarch64 \
		arm-linux-gnueabihf-:p2pusb-armhf; do
		"${b%%:*}strip" -o "$WORK/stripped" "${b#*:}" || return 1
		s="$s, ${b#*:} $(($(stat -c %s "$WORK/stripped") / 1024)) KiB"
	done
	echo "$s"
	# The design card's limit, for the x86-64 build.
	strip -o "$WORK/stripped" p2pusb &&
		[ "$(stat -c %s "$WORK/stripped")" -le 65536 ] ||
		{ echo "the stripped x86-64 binary is over 64 KiB"; return 1; }
}

# wire_cross TRIPLET QEMU: tests/wire-test.c for TRIPLET (UBSan included:
# misaligned access traps too), run under qemu-user.
wire_cross() {
	local t=$1 qemu=$2 pc
	install_cross || return 1
	pc="env PKG_CONFIG_LIBDIR=/usr/lib/$t/pkgconfig:/usr/share/pkgconfig pkg-config"
	"$t-gcc" -std=c11 -Wall -Wextra -Werror -g -O2 -fsanitize=undefined \
		-fno-sanitize-recover=all -static-libubsan \
		$($pc --cflags libusb-1.0) -o "$WORK/wire-test-$t" \
		tests/wire-test.c $($pc --libs libusb-1.0) &&
		"$qemu" "$WORK/wire-test-$t"
}

# cross_host_server CROSS ARCH QEMU: that build serving the native client
# over a real socket (armhf: 32-bit, s390x: big-endian).
cross_host_server() {
	install_cross || return 1
	make p2pusb && make CROSS="$1" || return 1
	host_server "$3 ./p2pusb-$2"
}

# What an idle server holds (README's footprint table): VmRSS counts the
# shared libc and libusb pages too, RssAnon only p2pusb's own.
idle_footprint() {
	local bin pid
	make p2pusb && make static || return 1
	for bin in p2pusb p2pusb-static; do
		start_host_server "./$bin" || return 1
		pid=$SERVER_PID
		./p2pusb list 127.0.0.1:$PORT || return 1
		echo "measured: idle $bin serve:" $(grep -E \
			'^(VmHWM|VmRSS|RssAnon|RssFile)' "/proc/$pid/status")
		stop_host_server
	done
}

# make static must give a binary with no program interpreter, for this
# machine and for a board.
static_build() {
	install_cross || return 1
	make -B static && make -B static CROSS=arm-linux-gnueabihf- || return 1
	if readelf -l p2pusb-static p2pusb-armhf-static | grep -q INTERP; then
		echo "a static build is dynamically linked"
		return 1
	fi
	./p2pusb-static -V && qemu-arm-static ./p2pusb-armhf-static -V || return 1
	echo "measured: static size (not stripped)," \
		"x86-64 $(($(stat -c %s p2pusb-static) / 1024)) KiB," \
		"armhf $(($(stat -c %s p2pusb-armhf-static) / 1024)) KiB"
}

# The static binary, udev stubs and all, on both ends of a real session.
static_vm() {
	make static && vm_scenario p2pusb_both ./p2pusb-static
}

# ---- run ----

install_missing || echo "warning: apt-get failed; testing with what is here"
check "build with clang (-Wall -Wextra -Werror)" build_with clang
check "build with gcc (-Wall -Wextra -Werror)" build_with gcc
check "build with ASan+UBSan" build_asan
check "build: the URB path is not compiled as cold code (ONCE)" urb_path_not_cold
check "wire format matches the spec sheet's vectors" wire_test
check "host: USB-less server answers and survives bad input" host_server ./p2pusb
check "host: same under ASan+UBSan" host_server tests/p2pusb-asan
check "host: same under valgrind, no leaks" valgrind_server
check "host: client errors are one clear line" client_errors
check "host: serve refuses a DEVICE that is neither busid nor VID:PID" serve_device_names
check "host: --allow refuses other clients" host_allow
check "host: a silent client is dropped, others are served" host_silent_client
check "host: 300 connections at once, no descriptor leaked" host_many_clients
check "host: handshake cut at every byte boundary" host_truncated_handshakes
check "host: out of descriptors, no spinning; serves again after" host_out_of_fds
check "host: an idle serve --busy-poll uses no CPU" host_busy_poll_idle
check "make install / uninstall (DESTDIR, PREFIX)" make_install

check "build tests/bad-server (a hostile USB/IP server for client tests)" build_bad_server
check "host: hostile server: list shows a busid's terminal escapes as text" hostile_list devlist-escape 0 '\\x1b.*pwned'
check "host: hostile server: list, device list refused (status 1, no count)" hostile_list devlist-refused 1 'refused the device list'
check "host: hostile server: list, device record cut short, then EOF" hostile_list short-record 1 'closed the connection'
check "host: hostile server: list, ndev 0xffffffff, then EOF" hostile_list huge-count 1 'closed the connection|count'
check "host: hostile server: list, a server that never answers" hostile_list silent 1 'no answer within [0-9]+ s'
check "host: hostile server: list, 64 MiB of random bytes" hostile_list garbage 1 'version|op code'
check "host: hostile server: list, 1 MiB of random device records, shown printable" hostile_list devlist-garbage 1 'closed the connection'
check "fuzz: replay tests/corpus over a fake device under ASan+UBSan (gcc)" fuzz_replay
check "fuzz: libFuzzer ${FUZZ_SECONDS:-60} s over a fake device, no crash, leak or UB" fuzz_libfuzzer
check "fuzz: replay tests/corpus/client (list, attach, --via), ASan+UBSan" fuzz_client_replay
check "fuzz: libFuzzer ${FUZZ_SECONDS:-60} s, client side: no crash, leak, UB" fuzz_client_libfuzzer
check "vm: hostile server: list, attach, attach --via; one error line, nothing attached" vm_hostile
check "vm 1: p2pusb serve <-> kernel usbip attach (usb-storage)" vm_scenario kernel_client
check "vm 2: kernel usbipd <-> p2pusb attach (usb-storage)" vm_scenario kernel_server
check "vm 3: p2pusb <-> p2pusb (usb-storage)" vm_scenario p2pusb_both
check "vm 3a: p2pusb <-> p2pusb, both under ASan+UBSan" vm_scenario p2pusb_both tests/p2pusb-asan
check "vm 4: p2pusb <-> p2pusb (cdc-acm serial)" vm_scenario serial
check "vm 5: isochronous audio into qemu's USB speaker" audio_scenario
check "vm 6: two devices to two clients at once" vm_scenario two_devices
check "vm 7: detach gives the device back; it imports again" vm_scenario give_back
check "vm 8: serve --connect dials attach --listen" vm_scenario dial_in
check "vm 9: attach --via a command (serve --stdio), traced by the relay" vm_scenario via_pipe
check "vm 10: attach --via ssh through a real OpenSSH server" vm_scenario via_ssh
check "vm 11: attach --persist re-imports after a server restart" vm_scenario persist
check "vm 12: -vv traces a known session in decoded lines" vm_scenario trace
check "vm 13: a client flooding submits unread: bounded, others served" flood_scenario
check "vm 14: systemd socket activation: serve --stdio per connection, usbip attach" vm_scenario socket_activation
check "vm 15: serve --busy-poll 200 <-> kernel usbip attach (usb-storage)" vm_scenario kernel_client_busy_poll
check "vm 16: attach --busy-poll --via serve --busy-poll --stdio (usb-storage)" vm_scenario via_pipe_busy_poll
check "vm 17: devices by VID:PID: two at once, ambiguity, --persist across a re-plug" vm_scenario by_vid_pid
check "vm 18: serve --pcap, attach --via --pcap: tshark decodes USB and SCSI" pcap_scenario
check "vm 19: VID:PID over attach --listen (serve --connect redials) and --via (two serve --stdio)" vm_scenario vid_pid_dialing
check "build tests/rtt-bench (make bench's load), its wake probe runs" rtt_bench_builds
check "build tests/usbfs-poke (usbfs helper of the fault scenarios)" gcc -std=gnu11 -O2 -Wall -Wextra -Werror -o tests/usbfs-poke tests/usbfs-poke.c
check "vm fault: client socket destroyed mid-copy; device given back, imports again" vm_scenario fault_client_gone
check "vm fault: server SIGKILLed mid-copy; vhci port freed, reader gets EIO" vm_scenario fault_server_killed
check "vm fault: device unplugged mid-copy and idle; re-plugged, same server imports it" vm_scenario fault_unplug
check "vm fault: network path drops every packet; both ends notice within 90 s" vm_scenario fault_netpath
check "vm fault: unlink storm, ACM tty opened and closed 300 times during I/O" vm_scenario fault_unlink_serial
check "vm fault: unlink storm, readers killed mid-transfer on three devices" vm_scenario fault_unlink_kill
check "vm fault: unlink storm, CLEAR_HALT / SET_INTERFACE / discards via usbfs" vm_scenario fault_unlink_halt
check "vm fault: server under valgrind across import, copy, detach, vanished client" vm_scenario fault_valgrind
check "vm fault: 60 s soak of attach/copy/detach cycles; fds and VmRSS flat" vm_scenario fault_soak
check "vm fault: client unconfigures and reconfigures the device" vm_scenario fault_reconfigure
check "vm fault: cancel storm, 1,000 bulk IN reads submitted and discarded at once (usbip attach)" vm_scenario cancel_storm
check "vm fault: 16 queued control requests complete in order, statuses as on the gadget itself" vm_scenario ctrl_order

# 6.12's vhci_hcd times things differently from 6.1's: the same peers again.
check "vm 6.12: p2pusb serve <-> kernel usbip attach (usb-storage)" vm_scenario -K 6.12 kernel_client
check "vm 6.12: kernel usbipd <-> p2pusb attach (usb-storage)" vm_scenario -K 6.12 kernel_server
check "vm 6.12: p2pusb <-> p2pusb (usb-storage)" vm_scenario -K 6.12 p2pusb_both
check "vm 6.12: unlink storm, ACM tty opened and closed 300 times during I/O" vm_scenario -K 6.12 fault_unlink_serial
check "vm 6.12: unlink storm, readers killed mid-transfer on three devices" vm_scenario -K 6.12 fault_unlink_kill
check "vm 6.12: unlink storm, CLEAR_HALT / SET_INTERFACE / discards via usbfs" vm_scenario -K 6.12 fault_unlink_halt
check "vm 6.12: cancel storm, 1,000 bulk IN reads submitted and discarded at once (usbip attach)" vm_scenario -K 6.12 cancel_storm
check "vm 6.12: 16 queued control requests complete in order, statuses as on the gadget itself" vm_scenario -K 6.12 ctrl_order

check "cross: make CROSS=aarch64-linux-gnu- / arm-linux-gnueabihf- (-Werror), -V under qemu" cross_build
check "cross: wire format on aarch64 (qemu-user)" wire_cross aarch64-linux-gnu qemu-aarch64-static
check "cross: wire format on armhf, 32-bit (qemu-user)" wire_cross arm-linux-gnueabihf qemu-arm-static
check "cross: wire format on s390x, big-endian (qemu-user)" wire_cross s390x-linux-gnu qemu-s390x-static
check "cross: armhf server under qemu-user answers the native client" cross_host_server arm-linux-gnueabihf- armhf qemu-arm-static
check "cross: s390x (big-endian) server under qemu-user answers the native client" cross_host_server s390x-linux-gnu- s390x qemu-s390x-static
check "cross: footprint of an idle server (VmRSS, VmHWM)" idle_footprint
check "cross: make static (x86-64, armhf) links with no interpreter" static_build
check "cross: vm 3 with make static's binary on both ends (usb-storage)" static_vm

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
