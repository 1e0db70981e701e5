#!/bin/bash
# bench-guest.sh [-s SECS] [-t SECS] [-l SLICE] [-b USEC] ROUNDS [PATH...]
# - the benchmark's VM side, run by tests/bench.sh through tests/vm.sh.
# Not a pass/fail test.
#
# Every path is set up once, each on a mass-storage gadget of its own on
# dummy_hcd (32 MiB images in the guest's /tmp), and all stay attached;
# then come slots, ROUNDS times (default 8) round after round, the order
# of the p2pusb paths rotating:
#
#   direct | kernel+p2k | kernel+p2p | kernel+bp2000 | kx2+p2x2 | direct ...
#
# A slot of a p2pusb path holds its kernel peer (kx2 for p2x2, kernel for
# the rest) too: the two take turns every SLICE seconds, the kernel first
# and last, so that both see the same seconds of a host that may be busy
# with other work (bench.sh divides one by the other).  The paths:
#
#   direct   the gadget's own /dev/sdX on dummy_hcd: the rig's limit
#   kernel   usbip-host + usbipd  <->  kernel `usbip attach` (the peer)
#   kx2      usbip-host with two gadgets, both imported with `usbip
#            attach` and streamed at once (the peer of p2x2)
#   p2k      p2pusb serve         <->  kernel `usbip attach`
#   p2p      p2pusb serve         <->  p2pusb attach
#   bpUSEC   like p2k, with p2pusb serve --busy-poll USEC (bp2000)
#   p2x2     p2pusb serve with two gadgets, both imported with `usbip
#            attach` and streamed at once (server RSS for two devices)
#   cand-N   like p2k, with a candidate build $P2PUSB_OUT/bin/cand-N
#            (bench.sh -c N=BINARY)
#
# Each p2pusb server is a process of its own on a port of its own.  Given
# PATHs, only those are measured, plus the kernel path each is compared
# with (kx2 for p2x2, kernel for the rest).
#
# A slot (tests/rtt-bench.c slot, in one process: under TCG each fork and
# exec costs tens of ms): SEQ_S seconds (-s, default 3) of sequential
# reads (1 MiB O_DIRECT, as dd bs=1M iflag=direct), as many of writes,
# SECS seconds (-t, default 3) of 4 KiB random reads at queue depth 1 and
# as many of GET_DESCRIPTOR round trips through usbfs, each path of the
# slot getting half of each, in turns of SLICE seconds (-l, default 0.3);
# the server's CPU time over the sequential part (p2pusb: every thread's
# /proc/PID/task/*/schedstat; kernel: its stub_rx and stub_tx threads
# only) and the server's VmHWM.  A path of two devices loads both at once
# (reads and writes only) and reports the sum of their MB/s.
#
# Results are appended as they come to $P2PUSB_OUT/results.txt:
#   B PATH SLOT             a measurement started (SLOT: its place in the
#                           sequence, or "setup")
#   R PATH SLOT KEY VALUE   one figure (of PATH or of its kernel peer)
#   E PATH SLOT             it finished
#   F PATH SLOT             it failed
# A slot that already has an E line, or an O line (bench.sh adds one when
# the kernel died during it), is skipped, so bench.sh can boot a fresh VM
# after an oops and carry on where the last one died; a path whose setup
# has an O line is left out.
#
# bench-guest.sh profile [MIB]: instead, profile the whole guest with perf
# (cpu-clock, call graphs) while the kernel client copies MIB each way
# through p2pusb serve and then through usbip-host, and p2pusb serve under
# callgrind; reports in $P2PUSB_OUT/perf-*.txt and callgrind*.txt.
#
# bench-guest.sh [-b USEC] counts: per-URB syscalls, context switches and
# page faults of each server (see "counts mode" below), as C lines in
# results; -b adds p2pusb serve --busy-poll USEC.
#
# bench-guest.sh [-b USEC] legs: one URB's round trip split into request,
# device and reply (see "legs mode" below), as L lines in results; -b adds
# p2pusb serve --busy-poll USEC.
set -u
cd "$(dirname "$0")/.." || exit 2
. tests/guest-lib.sh

# bench.sh leaves a snapshot of the binaries in $P2PUSB_OUT/bin, so that a
# rebuild in the work tree during the run changes nothing.
BIN=$P2PUSB_OUT/bin
P2PUSB=$BIN/p2pusb
[ -x "$P2PUSB" ] && [ -x "$BIN/rtt-bench" ] ||
	die "no binaries in $BIN: run me through tests/bench.sh"
PORT=3240
MIB=64		# the images of the profile, counts and legs modes
IMG_MIB=32	# the table's images, one per gadget
SEQ_S=3		# the table: seconds of sequential reads, and of writes, per slot
SECS=3		# the table: seconds of 4K reads, and of control round trips
SLICE=0.3	# the table: seconds per turn when two paths alternate
BUSY_US=	# -b: counts and legs also with serve --busy-poll BUSY_US
SERVE_ARGS=()	# with_p2pusb: extra arguments for serve
RES=$P2PUSB_OUT/results.txt

touch "$RES"
rec() { echo "$*" >>"$RES"; }

# ---- helpers ----

# kthread_pids NAME...: PIDs of tasks whose comm is one of NAME.
kthread_pids() {
	local d c n
	for d in /proc/[0-9]*; do
		read -r c <"$d/comm" 2>/dev/null || continue
		for n in "$@"; do [ "$c" = "$n" ] && echo "${d#/proc/}"; done
	done
}

SERVER_PID=
start_p2pusb() {
	$P2PUSB serve -p $PORT "$@" 2>>"$P2PUSB_OUT/serve.log" &
	SERVER_PID=$!
	wait_for_listen $PORT 120	# P2PUSB may be valgrind ... p2pusb
}
stop_p2pusb() {
	[ -n "$SERVER_PID" ] || return 0
	kill -TERM "$SERVER_PID" 2>/dev/null
	timeout 60 tail --pid="$SERVER_PID" -f /dev/null
	wait "$SERVER_PID" 2>/dev/null
	SERVER_PID=
}

USBIPD_PID=
start_usbipd() {
	usbipd >>"$P2PUSB_OUT/usbipd.log" 2>&1 &
	USBIPD_PID=$!
	wait_for_listen $PORT 10
}
stop_usbipd() {
	[ -n "$USBIPD_PID" ] || return 0
	kill -TERM "$USBIPD_PID" 2>/dev/null
	wait "$USBIPD_PID" 2>/dev/null
	USBIPD_PID=
}

# attach_g1: usbip attach g1 from the server on $PORT; sets VB, VB_BUS
# and DISK.
attach_g1() {
	usbip attach -r 127.0.0.1 -b "$B1" || return 1
	VB=$(imported_busid g1) || return 1
	read -r VB_BUS <"/sys/bus/usb/devices/$VB/busnum"
	DISK=$(wait_for_disk "$VB" 60) || return 1
}
detach_g1() {
	usbip detach -p "$(vhci_port_of "$VB")" >/dev/null
	wait_gone g1
}

# with_p2pusb CMD...: CMD with g1 exported by p2pusb serve (SERVER_PID;
# $P2PUSB, which a prefix may change for the call; SERVE_ARGS added to its
# arguments) and imported with usbip attach (VB, VB_BUS and DISK set).
with_p2pusb() {
	local rc=0
	start_p2pusb "${SERVE_ARGS[@]}" "$B1" || return 1
	attach_g1 || return 1
	"$@" || rc=1
	detach_g1
	stop_p2pusb
	return $rc
}

# with_usbip_host CMD...: CMD with g1 exported by the kernel's usbip-host
# and imported with usbip attach (VB, VB_BUS and DISK set).
with_usbip_host() {
	local rc=0
	usbip bind -b "$B1" >/dev/null || return 1
	start_usbipd || return 1
	attach_g1 || return 1
	"$@" || rc=1
	detach_g1
	usbip unbind -b "$B1" >/dev/null
	stop_usbipd
	return $rc
}

# ---- table mode: every path set up once, then slots that alternate ----

declare -A P_DISKS P_NODE P_PIDS P_SRV P_BAD
NG=0			# gadgets made so far: g1, g2, ...
NEXT_PORT=$((PORT + 1))	# p2pusb servers: one port each
SERVERS=()
USBIPD_PID=

# ref_of PATH: the kernel path that PATH's slots alternate with, if any.
ref_of() {
	case $1 in
	direct|kernel|kx2) ;;
	p2x2) echo kx2 ;;
	*) echo kernel ;;
	esac
}

# new_gadget: one more storage gadget, its image full of zeros (real
# pages, not holes); sets NEW_G (its name) and NEW_B (its busid).
new_gadget() {
	NG=$((NG + 1))
	NEW_G=g$NG
	dd if=/dev/zero of=/tmp/$NEW_G.img bs=1M count=$IMG_MIB status=none &&
		NEW_B=$(gadget_storage $NEW_G /tmp/$NEW_G.img)
}

# import PORT GADGET BUSID: usbip attach it from the server on PORT; sets
# IMP_VB (its busid on vhci_hcd) and IMP_DISK.
import() {
	usbip --tcp-port "$1" attach -r 127.0.0.1 -b "$3" || return 1
	IMP_VB=$(imported_busid "$2") && IMP_DISK=$(wait_for_disk "$IMP_VB" 60)
}

# setup_path PATH: its gadgets, its server, its imports; sets P_DISKS,
# P_NODE (usbfs node of the first device), P_PIDS (whose CPU counts) and
# P_SRV (whose VmHWM is the RSS) of PATH.
setup_path() {
	local p=$1 n=1 i port bin=$P2PUSB args=() busids=() gs=() disks=""
	[ $p = kx2 ] || [ $p = p2x2 ] && n=2
	for ((i = 0; i < n; i++)); do
		new_gadget || return 1
		busids+=("$NEW_B"); gs+=("$NEW_G")
	done
	case $p in
	direct)
		P_DISKS[$p]=$(wait_for_disk "$NEW_B" 30) || return 1
		P_NODE[$p]=$(usbfs_node "$NEW_B")
		return 0 ;;
	kernel|kx2)
		for ((i = 0; i < n; i++)); do
			usbip bind -b "${busids[i]}" >/dev/null || return 1
		done
		if [ -z "$USBIPD_PID" ]; then
			usbipd >>"$P2PUSB_OUT/usbipd.log" 2>&1 &
			USBIPD_PID=$!
			wait_for_listen $PORT 10 || return 1
		fi
		port=$PORT ;;
	p2k|p2p|p2x2) ;;
	bp[1-9]*) args=(--busy-poll "${p#bp}") ;;
	cand-*) bin=$BIN/$p ;;
	*) echo "bench: no path $p" >&2; return 1 ;;
	esac
	if [ -z "${port:-}" ]; then
		port=$NEXT_PORT
		NEXT_PORT=$((NEXT_PORT + 1))
		$bin serve -p $port "${args[@]}" "${busids[@]}" \
			2>>"$P2PUSB_OUT/serve-$p.log" &
		P_SRV[$p]=$!
		P_PIDS[$p]=$!
		SERVERS+=($!)
		wait_for_listen $port 60 || return 1
	fi
	for ((i = 0; i < n; i++)); do
		if [ $p = p2p ]; then
			$P2PUSB attach 127.0.0.1:$port "${busids[i]}" >/dev/null &&
				IMP_VB=$(imported_busid "${gs[i]}") &&
				IMP_DISK=$(wait_for_disk "$IMP_VB" 60) || return 1
		else
			import $port "${gs[i]}" "${busids[i]}" || return 1
		fi
		disks+=" $IMP_DISK"
	done
	P_DISKS[$p]=${disks# }
	P_NODE[$p]=$(usbfs_node "$IMP_VB")
}

# side PATH: the path as rtt-bench slot wants it: NODE DISKS PIDS.
side() {
	local d=${P_DISKS[$1]} p=${P_PIDS[$1]:-}
	p=${p% }
	[[ $d != *" "* ]] || P_NODE[$1]=-
	[ -n "$p" ] || p=-
	echo "${P_NODE[$1]:--} ${d// /,} ${p// /,}"
}

# warm_up PATH: first touches of everything (buffers, page tables, the
# image's pages), unrecorded.
warm_up() {
	# shellcheck disable=SC2046  # NODE DISKS PIDS
	$BIN/rtt-bench slot 0.5 0.4 1 $(side "$1") >/dev/null
}

# slot SLOT PATH [REF]: one slot (tests/rtt-bench.c slot, one process):
# PATH alone, or REF (the kernel's) and PATH taking turns every SLICE
# seconds; each one's figures as R lines, and its server's peak RSS.
slot() {
	local s=$1 p=$2 r=${3:-} out line k path
	# shellcheck disable=SC2046  # NODE DISKS PIDS
	out=$($BIN/rtt-bench slot $SEQ_S $SECS $SLICE ${r:+$(side "$r")} $(side "$p")) ||
		return 1
	while read -r -a line; do
		path=$p
		[ -z "$r" ] || [ "${line[0]}" = b ] || path=$r
		for ((k = 1; k + 1 < ${#line[@]}; k += 2)); do
			rec R "$path" "$s" "${line[k]%_per_s}" "${line[k + 1]}"
		done
		[ -z "${P_SRV[$path]:-}" ] ||
			rec R "$path" "$s" rss_kib "$(proc_kb "${P_SRV[$path]}" VmHWM)"
		info "slot $s $path: ${line[*]:1}"
	done <<<"$out"
}

# teardown: detach everything, stop every server.
teardown() {
	local p b
	for p in $(awk '$2 ~ /^[0-9]+$/ && $3 != 4 && $3 != "004" { print $2 + 0 }' \
			/sys/devices/platform/vhci_hcd.0/status* 2>/dev/null); do
		usbip detach -p "$p" >/dev/null 2>&1
	done
	for b in /sys/bus/usb/drivers/usbip-host/[0-9]*; do
		[ -e "$b" ] && usbip unbind -b "${b##*/}" >/dev/null 2>&1
	done
	for p in "${SERVERS[@]}" $USBIPD_PID; do kill -TERM "$p" 2>/dev/null; done
	for p in "${SERVERS[@]}" $USBIPD_PID; do
		timeout 30 tail --pid="$p" -f /dev/null
		wait "$p" 2>/dev/null
	done
}

# table ROUNDS [PATH...]
table() {
	local rounds=$1 paths=() chain=() alone=() seq=() need=() p q r k s
	local -A want=() fails=()
	shift
	paths=(direct kernel kx2 p2k p2p p2x2)
	[ -z "$BUSY_US" ] || paths+=("bp$BUSY_US")
	[ $# -eq 0 ] || paths=("$@")
	for p in "$BIN"/cand-*; do	# candidate builds: bench.sh -c NAME=BINARY
		[ -x "$p" ] && paths+=("${p##*/}")
	done
	for p in "${paths[@]}"; do
		r=$(ref_of "$p")
		if [ -n "$r" ]; then
			chain+=("$p"); want[$r]=1
		fi
		want[$p]=1
	done
	# alone: what no other path is compared with (direct; a kernel path
	# asked for by itself).
	for p in "${paths[@]}"; do
		[ -n "$(ref_of "$p")" ] && continue
		for q in "${chain[@]}"; do [ "$(ref_of "$q")" = "$p" ] && continue 2; done
		alone+=("$p")
	done
	# The sequence: per round, the lone paths, then each other path in a
	# slot with its kernel peer; the order rotates from round to round.
	for ((r = 0; r < rounds; r++)); do
		seq+=("${alone[@]}")
		for ((k = 0; k < ${#chain[@]}; k++)); do
			seq+=("${chain[(k + r) % ${#chain[@]}]}")
		done
	done
	# Setup: the kernel paths first (usbipd), then the rest.
	for p in kernel kx2 "${!want[@]}"; do
		[ -n "${want[$p]:-}" ] || continue
		[[ " ${need[*]} " == *" $p "* ]] || need+=("$p")
	done
	for p in "${need[@]}"; do
		if grep -q "^O $p setup\$" "$RES"; then
			P_BAD[$p]=1
			continue
		fi
		rec B "$p" setup
		if setup_path "$p" && warm_up "$p"; then
			rec E "$p" setup
		else
			echo "bench: setting up $p failed"
			usb_dump
			rec E "$p" setup
			rec F "$p" setup
			P_BAD[$p]=1
		fi
	done
	# The stub threads exist once the kernel's devices are imported.
	# shellcheck disable=SC2207  # a list of PIDs
	k=$(kthread_pids stub_rx stub_tx | tr '\n' ' ')
	[ -z "${want[kernel]:-}" ] || P_PIDS[kernel]=$k
	[ -z "${want[kx2]:-}" ] || P_PIDS[kx2]=$k
	info "set up: ${need[*]}; ${#seq[@]} slots of 2 x ${SEQ_S}s + 2 x ${SECS}s"
	for ((s = 1; s <= ${#seq[@]}; s++)); do
		p=${seq[s - 1]}
		[ -z "${P_BAD[$p]:-}" ] || continue
		grep -q "^[EO] $p $s\$" "$RES" && continue
		q=$(ref_of "$p")
		[ -z "$q" ] || [ -z "${P_BAD[$q]:-}" ] || continue
		rec B "$p" "$s"
		if slot "$s" "$p" $q; then
			rec E "$p" "$s"
			fails[$p]=0
		else
			echo "bench: $p slot $s failed"
			rec E "$p" "$s"
			rec F "$p" "$s"
			fails[$p]=$((${fails[$p]:-0} + 1))
			if [ "${fails[$p]}" -ge 2 ]; then
				echo "bench: $p failed twice in a row; no more of it"
				usb_dump
				P_BAD[$p]=1
			fi
		fi
	done
	teardown
}

# ---- loads for the profile, counts and legs modes (on DISK and VB) ----

WORKLOADS="seqread seqwrite rand4k ctrl"

# workload NAME [MIB]: one load, quietly; the sequential ones MIB (16) long.
workload() {
	local mib=${2:-16}
	case $1 in
	seqread) dd if="$DISK" of=/dev/null bs=1M count="$mib" iflag=direct status=none ;;
	seqwrite) dd if=/dev/zero of="$DISK" bs=1M count="$mib" oflag=direct status=none ;;
	rand4k) $BIN/rtt-bench read4k "$DISK" 3 >/dev/null ;;
	ctrl) $BIN/rtt-bench ctrl "$(usbfs_node "$VB")" 2 >/dev/null ;;
	esac
}

# copy_load MIB: every workload in turn.
copy_load() {
	local w
	for w in $WORKLOADS; do
		workload $w "$1" || return 1
	done
}

# ---- profile mode ----

# perf_pass NAME: the whole guest under perf (cpu-clock, every CPU) while
# copy_load runs; reports by task and, for the busiest tasks, by symbol.
perf_pass() {
	# perf stops cleanly when its command ends (a SIGINT to a perf in the
	# background is ignored: non-interactive shells start jobs so).
	echo "max_sectors_kb $(cat /sys/block/${DISK#/dev/}/queue/max_sectors_kb)"
	export -f copy_load workload usbfs_node
	export BIN DISK VB WORKLOADS
	perf record -q -a -e cpu-clock -F 1000 -g -o /tmp/perf-$1.data -- \
		bash -c "copy_load $PROFILE_MIB" >"$P2PUSB_OUT/perf-load-$1.txt" 2>&1
	cat "$P2PUSB_OUT/perf-load-$1.txt"
	perf report -i /tmp/perf-$1.data --stdio --no-children --sort comm \
		-g none >"$P2PUSB_OUT/perf-$1-comm.txt" 2>&1
	perf report -i /tmp/perf-$1.data --stdio --no-children \
		--sort comm,dso,sym -g none --percent-limit 0.2 \
		>"$P2PUSB_OUT/perf-$1-sym.txt" 2>&1
	perf report -i /tmp/perf-$1.data --stdio --children --comms p2pusb \
		--sort sym -g none --percent-limit 1 \
		>"$P2PUSB_OUT/perf-$1-p2pusb-children.txt" 2>&1
}

# perf over p2pusb serve <-> usbip attach and over usbip-host, then
# callgrind (user-space instructions) over p2pusb serve.
profile() {
	PROFILE_MIB=${1:-32}
	with_p2pusb perf_pass p2pusb || return 1
	# The same load through the kernel's usbip-host, for comparison.
	with_usbip_host perf_pass kernel || return 1

	# User-space instruction profile: a smaller copy under callgrind.
	P2PUSB="valgrind --tool=callgrind --callgrind-out-file=$P2PUSB_OUT/callgrind.out $BIN/p2pusb" \
		with_p2pusb copy_load 4 || return 1
	callgrind_annotate "$P2PUSB_OUT/callgrind.out" 2>&1 | head -n 60 \
		>"$P2PUSB_OUT/callgrind.txt"
	callgrind_annotate --inclusive=yes "$P2PUSB_OUT/callgrind.out" 2>&1 |
		head -n 60 >"$P2PUSB_OUT/callgrind-inclusive.txt"
}

# ---- counts mode: per-URB costs that a busy host cannot distort ----
#
# Wall-clock figures swing with the load on the host (other VMs share its
# cores); what the server does per URB does not.  For each workload the
# URBs on the vhci bus are counted with usbmon, and per URB: the server's
# context switches and page faults (p2pusb: the process; kernel: stub_rx +
# stub_tx), then in a second pass under strace -c, its syscalls.

# ctx_faults PID...: voluntary+involuntary context switches, minor faults.
ctx_faults() {
	local p cs=0 mf=0 f k v
	for p in "$@"; do
		while read -r k v _; do
			case $k in *ctxt_switches:) cs=$((cs + v)) ;; esac
		done <"/proc/$p/status"
		read -r -a f <"/proc/$p/stat"
		mf=$((mf + f[9]))
	done
	echo "$cs $mf"
}

# under_usbmon FILE BUS WORKLOAD: run it while usbmon's text of BUS (0:
# every bus) goes to FILE.
under_usbmon() {
	cat "/sys/kernel/debug/usb/usbmon/${2}u" >"$1" &
	local mon_pid=$!
	sleep 0.5
	workload "$3"
	sleep 0.5
	kill $mon_pid; wait $mon_pid 2>/dev/null
}

# count_urbs WORKLOAD: run it, print the URBs submitted on the vhci bus.
count_urbs() {
	under_usbmon /tmp/usbmon.txt "$VB_BUS" "$1"
	awk '$3 == "S" { n++ } END { print n + 0 }' /tmp/usbmon.txt
}

# count_pass NAME PID...: context switches and faults per URB.
count_pass() {
	local name=$1 w a b urbs
	shift
	for w in $WORKLOADS; do
		read -r -a a <<<"$(ctx_faults "$@")"
		urbs=$(count_urbs $w)
		read -r -a b <<<"$(ctx_faults "$@")"
		rec C "$name" $w urbs "$urbs"
		rec C "$name" $w ctxsw_per_urb "$(awk -v d=$((b[0] - a[0])) -v u="$urbs" 'BEGIN { printf "%.2f", u ? d / u : 0 }')"
		rec C "$name" $w faults_per_urb "$(awk -v d=$((b[1] - a[1])) -v u="$urbs" 'BEGIN { printf "%.2f", u ? d / u : 0 }')"
	done
}

# strace_pass NAME PID: syscalls per URB, and which.
strace_pass() {
	local name=$1 pid=$2 w st_pid urbs
	for w in $WORKLOADS; do
		strace -c -f -p "$pid" -o "/tmp/strace-$name-$w.txt" 2>/dev/null &
		st_pid=$!
		sleep 1
		urbs=$(count_urbs $w)
		kill -INT $st_pid; wait $st_pid
		cp "/tmp/strace-$name-$w.txt" "$P2PUSB_OUT/"
		# strace -c: % time, seconds, usecs/call, calls, [errors,] name
		awk -v u="$urbs" -v n="$name" -v w=$w '
			$1 ~ /^[0-9.]+$/ && u > 0 {
				printf "C %s %s %s %.2f\n", n, w,
					$NF == "total" ? "syscalls_per_urb" : "sys_" $NF,
					$4 / u }' \
			"/tmp/strace-$name-$w.txt" >>"$RES"
	done
}

# counts: the tree's p2pusb, each candidate, serve --busy-poll BUSY_US
# (bench.sh -b), the kernel.
counts() {
	local name bin f
	for f in p2pusb "$BIN"/cand-*; do
		[ "$f" = p2pusb ] && { name=p2k; bin=$P2PUSB; } ||
			{ [ -x "$f" ] || continue; name=${f##*/}; bin=$f; }
		P2PUSB=$bin with_p2pusb count_p2pusb "$name" || return 1
	done
	if [ -n "$BUSY_US" ]; then
		SERVE_ARGS=(--busy-poll "$BUSY_US")
		with_p2pusb count_p2pusb "bp$BUSY_US" || return 1
		SERVE_ARGS=()
	fi
	with_usbip_host count_kernel
}

count_p2pusb() {	# NAME
	workload seqread	# warm up: first touches of everything
	count_pass "$1" "$SERVER_PID"
	strace_pass "$1" "$SERVER_PID"
	rec C "$1" all rss_kib "$(proc_kb "$SERVER_PID" VmHWM)"
	# Transfer buffers mapped from usbfs (libusb_dev_mem_alloc).
	rec C "$1" all usbfs_maps \
		"$(grep -c ' /dev/bus/usb/' "/proc/$SERVER_PID/maps")"
}

count_kernel() {
	workload seqread
	# shellcheck disable=SC2046  # a list of PIDs
	count_pass kernel $(kthread_pids stub_rx stub_tx)
}

# ---- legs mode: where one URB's round trip goes ----
#
# usbmon stamps every URB on both buses with one clock: submitted on vhci
# (the client's driver), submitted on dummy_hcd (by the server), completed
# on dummy_hcd, completed on vhci.  With one URB in flight at a time
# (ctrl, rand4k) the four follow each other, and their gaps are the
# request's way to the device, the device's own time and the reply's way
# back.  Medians, in microseconds, as L lines in results.  p2k-pinned
# runs the server on CPU 1 and the load on CPU 0: a wakeup then needs no
# switch of address space, which QEMU's TCG pays with a full TLB flush
# (kernel threads such as stub_rx never switch).

# legs_of FILE VHCI_BUS DEV_BUS: "request device reply" medians.
legs_of() {
	awk -v vb="$2" -v db="$3" '
	function med(a, n,   i, j, t) {
		for (i = 2; i <= n; i++)	# insertion sort: n is small
			for (j = i; j > 1 && a[j - 1] > a[j]; j--) {
				t = a[j]; a[j] = a[j - 1]; a[j - 1] = t
			}
		return n ? a[int((n + 1) / 2)] : 0
	}
	{ split($4, f, ":"); bus = f[2] + 0 }
	bus == vb && $3 == "S" { t0 = $2; st = 1; next }
	bus == db && $3 == "S" && st == 1 { t1 = $2; st = 2; next }
	bus == db && $3 == "C" && st == 2 { t2 = $2; st = 3; next }
	bus == vb && $3 == "C" && st == 3 {
		n++; rq[n] = t1 - t0; dv[n] = t2 - t1; rp[n] = $2 - t2
		st = 0; next
	}
	bus == vb { st = 0 }	# anything else: not one URB at a time
	END { printf "%d %d %d %d\n", n, med(rq, n), med(dv, n), med(rp, n) }
	' "$1"
}

# legs_pass NAME: the ctrl and rand4k workloads under usbmon.
legs_pass() {
	local name=$1 w db r
	read -r db <"/sys/bus/usb/devices/$B1/busnum"
	workload seqread	# warm up: first touches of everything
	for w in ctrl rand4k; do
		under_usbmon /tmp/usbmon-$name-$w.txt 0 $w
		read -r -a r <<<"$(legs_of /tmp/usbmon-$name-$w.txt "$VB_BUS" "$db")"
		rec L "$name" $w urbs "${r[0]}"
		rec L "$name" $w request_us "${r[1]}"
		rec L "$name" $w device_us "${r[2]}"
		rec L "$name" $w reply_us "${r[3]}"
	done
}

legs() {
	# What a wakeup costs in this guest, USB aside: the yardstick for the
	# legs (a W line: "W wake_us thread_1cpu A process_1cpu B ...").
	rec W $($BIN/rtt-bench wake 1)
	with_p2pusb legs_pass p2k || return 1
	# The same with the server and the client's load on a CPU each.
	if [ "$(nproc)" -gt 1 ]; then
		P2PUSB="taskset -c 1 $P2PUSB" with_p2pusb on_cpu0 legs_pass p2k-pinned ||
			return 1
	fi
	# serve --busy-poll (bench.sh -b USEC): the server awake when the
	# next event comes.
	if [ -n "$BUSY_US" ]; then
		SERVE_ARGS=(--busy-poll "$BUSY_US")
		with_p2pusb legs_pass "p2k-bp$BUSY_US" || return 1
		SERVE_ARGS=()
	fi
	with_usbip_host legs_pass kernel
}

# on_cpu0 CMD...: CMD with this shell, and the load it runs, on CPU 0.
on_cpu0() {
	local rc=0
	taskset -p -c 0 $$ >/dev/null
	"$@" || rc=1
	taskset -p -c 0-63 $$ >/dev/null 2>&1
	return $rc
}

# ---- main ----

while getopts "s:t:l:b:" opt; do
	case $opt in
	s) SEQ_S=$OPTARG ;;
	l) SLICE=$OPTARG ;;
	t) SECS=$OPTARG ;;
	b) BUSY_US=$OPTARG ;;
	*) die "usage: bench-guest.sh [-s SECS] [-t SECS] [-l SLICE] [-b USEC] [ROUNDS [PATH...] | profile [MIB] | counts | legs]" ;;
	esac
done
shift $((OPTIND - 1))

case ${1:-} in
profile|counts|legs) ;;
*)
	# The table: gadgets of its own, made as the paths are set up.
	rounds=${1:-8}
	[ $# -eq 0 ] || shift
	load_usb_modules 12 2>/dev/null
	table "$rounds" "$@"
	exit
	;;
esac

load_usb_modules 4 2>/dev/null
make_image /tmp/g1.img $MIB
make_image /tmp/g2.img $MIB
B1=$(gadget_storage g1 /tmp/g1.img) || die "no storage gadget"
B2=$(gadget_storage g2 /tmp/g2.img) || die "no second storage gadget"
# Fill the images so that every path reads real pages, not holes.
wait_for_disk "$B1" 30 >/dev/null && wait_for_disk "$B2" 30 >/dev/null ||
	die "gadget disks never appeared"
dd if=/dev/zero of="$(find_disk_for_busid "$B1")" bs=1M count=$MIB oflag=direct status=none
dd if=/dev/zero of="$(find_disk_for_busid "$B2")" bs=1M count=$MIB oflag=direct status=none
info "gadgets g1 at $B1, g2 at $B2"

case $1 in
profile) profile "${2:-32}" ;;
counts) counts ;;
legs) legs ;;
esac
