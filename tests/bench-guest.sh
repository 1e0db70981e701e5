#!/bin/bash
# bench-guest.sh [ROUNDS [PATH...]] - the benchmark's VM side, run by tests/bench.sh
# through tests/vm.sh.  Not a pass/fail test.
#
# One mass-storage gadget on dummy_hcd (64 MiB image in the guest's /tmp)
# is measured along every path, ROUNDS times (default 3), the order of the
# paths rotating from round to round:
#
#   direct   the gadget's own /dev/sdX on dummy_hcd: the rig's limit
#   kernel   usbip-host + usbipd  <->  kernel `usbip attach` (the peer)
#   p2k      p2pusb serve         <->  kernel `usbip attach`
#   p2p      p2pusb serve         <->  p2pusb attach
#   p2x2     p2pusb serve with two gadgets, both imported with `usbip
#            attach` and streamed at once (server RSS for two devices)
#   cand-N   like p2k, with a candidate build $P2PUSB_OUT/bin/cand-N
#            (bench.sh -c N=BINARY): A/B within one run
#
# For each: sequential read and write (dd O_DIRECT bs=1M, 64 MiB), 4 KiB
# random reads at queue depth 1 and GET_DESCRIPTOR round trips through
# usbfs (tests/rtt-bench.c), the server's CPU time over the sequential
# part (p2pusb: its /proc/PID/stat; kernel: its stub_rx and stub_tx
# threads only) and the server's VmHWM.
#
# Results are appended as they come to $P2PUSB_OUT/results.txt:
#   B PATH ROUND            a measurement started
#   R PATH ROUND KEY VALUE  one figure
#   E PATH ROUND            it finished
# A (PATH, ROUND) that already has an E line, or an O line (bench.sh adds
# one when the kernel died during it), is skipped, so bench.sh can boot a
# fresh VM after an oops and carry on where the last one died.
#
# bench-guest.sh profile [MIB]: instead, profile the whole guest with perf
# (cpu-clock, call graphs) while the kernel client copies MIB each way
# through p2pusb serve and then through usbip-host, and p2pusb serve under
# callgrind; reports in $P2PUSB_OUT/perf-*.txt and callgrind*.txt.
#
# bench-guest.sh counts: per-URB syscalls, context switches and page
# faults of each server (see "counts mode" below), as C lines in results.
#
# bench-guest.sh legs: one URB's round trip split into request, device and
# reply (see "legs mode" below), as L lines in results.
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
MIB=64
RES=$P2PUSB_OUT/results.txt
CTRL_SECS=3
RAND_SECS=4
TCK=$(getconf CLK_TCK)

touch "$RES"
rec() { echo "$*" >>"$RES"; }

# ---- helpers ----

# cpu_ticks PID...: utime + stime of the given tasks, in clock ticks.
cpu_ticks() {
	local p f sum=0
	for p in "$@"; do
		read -r -a f <"/proc/$p/stat" 2>/dev/null || continue
		sum=$((sum + f[13] + f[14]))
	done
	echo $sum
}

# kthread_pids NAME...: PIDs of tasks whose comm is one of NAME.
kthread_pids() {
	local d c n
	for d in /proc/[0-9]*; do
		read -r c <"$d/comm" 2>/dev/null || continue
		for n in "$@"; do [ "$c" = "$n" ] && echo "${d#/proc/}"; done
	done
}

# dd_mbps ARGS...: run dd, print its rate in MB/s (10^6 bytes/s).
dd_mbps() {
	local out
	out=$(dd "$@" bs=1M count=$MIB 2>&1) || { echo "$out" >&2; return 1; }
	echo "$out" | awk '/copied/ { printf "%.2f\n", $1 / 1e6 / $(NF - 3) }'
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
# $P2PUSB, which a prefix may change for the call) and imported with usbip
# attach (VB, VB_BUS and DISK set).
with_p2pusb() {
	local rc=0
	start_p2pusb "$B1" || return 1
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

# measure PATH ROUND DISK BUSID CPU-PIDS...: the four figures on DISK (the
# usb-storage disk of the device at BUSID) plus the server's CPU time.
measure() {
	local path=$1 round=$2 disk=$3 busid=$4 t0 t1 r w
	shift 4
	t0=$(cpu_ticks "$@")
	r=$(dd_mbps if="$disk" of=/dev/null iflag=direct) || return 1
	w=$(dd_mbps if=/dev/zero of="$disk" oflag=direct) || return 1
	t1=$(cpu_ticks "$@")
	rec R "$path" "$round" read_mbps "$r"
	rec R "$path" "$round" write_mbps "$w"
	if [ $# -gt 0 ]; then
		# CPU seconds per GiB moved: 2 * MIB MiB crossed the server.
		rec R "$path" "$round" cpu_s_per_gib \
			"$(awk -v t=$((t1 - t0)) -v hz="$TCK" -v m=$MIB \
				'BEGIN { printf "%.2f", t / hz / (2 * m / 1024) }')"
	fi
	rec R "$path" "$round" iops \
		"$($BIN/rtt-bench read4k "$disk" $RAND_SECS | awk '{ print $2 }')"
	rec R "$path" "$round" ctrl_rtt \
		"$($BIN/rtt-bench ctrl "$(usbfs_node "$busid")" $CTRL_SECS | awk '{ print $2 }')"
	info "$path round $round: read $r MB/s, write $w MB/s"
}

# ---- the paths ----

path_direct() {
	local disk
	disk=$(wait_for_disk "$B1" 30) || return 1
	measure direct "$1" "$disk" "$B1"
}

path_kernel() { with_usbip_host measure_kernel "$1"; }

measure_kernel() {
	# shellcheck disable=SC2046  # a list of PIDs
	measure kernel "$1" "$DISK" "$VB" $(kthread_pids stub_rx stub_tx)
}

# path_p2k ROUND [NAME BINARY]: p2pusb serve <-> usbip attach; with NAME,
# a candidate build of p2pusb (bench.sh -c NAME=BINARY) in the same place.
path_p2k() {
	P2PUSB=${3:-$P2PUSB} with_p2pusb measure_p2k "${2:-p2k}" "$1"
}

measure_p2k() {	# NAME ROUND
	local rc=0
	measure "$1" "$2" "$DISK" "$VB" "$SERVER_PID" || rc=1
	rec R "$1" "$2" rss_kib "$(proc_kb "$SERVER_PID" VmHWM)"
	return $rc
}

path_p2p() {
	local vb disk port rc=0
	start_p2pusb "$B1" || return 1
	port=$($P2PUSB attach 127.0.0.1 "$B1") || return 1
	vb=$(imported_busid g1) || return 1
	disk=$(wait_for_disk "$vb" 30) || return 1
	measure p2p "$1" "$disk" "$vb" "$SERVER_PID" || rc=1
	rec R p2p "$1" rss_kib "$(proc_kb "$SERVER_PID" VmHWM)"
	$P2PUSB detach "$port"
	wait_gone g1
	stop_p2pusb
	return $rc
}

# Two devices streamed at once: aggregate MB/s and the server's peak RSS.
path_p2x2() {
	local v1 v2 d1 d2 p1 p2 t0 t1 c0 c1 e rc=0
	start_p2pusb "$B1" "$B2" || return 1
	usbip attach -r 127.0.0.1 -b "$B1" || return 1
	usbip attach -r 127.0.0.1 -b "$B2" || return 1
	v1=$(imported_busid g1) && v2=$(imported_busid g2) || return 1
	d1=$(wait_for_disk "$v1" 30) && d2=$(wait_for_disk "$v2" 30) || return 1
	c0=$(cpu_ticks "$SERVER_PID")
	for dir in read write; do
		t0=${EPOCHREALTIME/./}
		if [ $dir = read ]; then
			dd if="$d1" of=/dev/null bs=1M count=$MIB iflag=direct status=none &
			dd if="$d2" of=/dev/null bs=1M count=$MIB iflag=direct status=none
		else
			dd if=/dev/zero of="$d1" bs=1M count=$MIB oflag=direct status=none &
			dd if=/dev/zero of="$d2" bs=1M count=$MIB oflag=direct status=none
		fi
		wait $! || rc=1
		t1=${EPOCHREALTIME/./}
		e=$(awk -v m=$MIB -v us=$((t1 - t0)) \
			'BEGIN { printf "%.2f", 2 * m * 1048576 / us }')
		rec R p2x2 "$1" ${dir}_mbps "$e"
	done
	c1=$(cpu_ticks "$SERVER_PID")
	rec R p2x2 "$1" cpu_s_per_gib "$(awk -v t=$((c1 - c0)) -v hz="$TCK" \
		-v m=$MIB 'BEGIN { printf "%.2f", t / hz / (4 * m / 1024) }')"
	rec R p2x2 "$1" rss_kib "$(proc_kb "$SERVER_PID" VmHWM)"
	p1=$(vhci_port_of "$v1"); p2=$(vhci_port_of "$v2")
	usbip detach -p "$p1" >/dev/null
	usbip detach -p "$p2" >/dev/null
	wait_gone g1; wait_gone g2
	stop_p2pusb
	return $rc
}

# cleanup: after a failed path, leave nothing attached or bound.
cleanup() {
	local p
	for p in $(awk '$2 ~ /^[0-9]+$/ && $3 != 4 && $3 != "004" { print $2 + 0 }' \
			/sys/devices/platform/vhci_hcd.0/status* 2>/dev/null); do
		usbip detach -p "$p" >/dev/null 2>&1
	done
	usbip unbind -b "$B1" >/dev/null 2>&1
	stop_p2pusb; stop_usbipd
	sleep 1
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

# counts [NAME BINARY]...: the tree's p2pusb, each candidate, the kernel.
counts() {
	local name bin f
	for f in p2pusb "$BIN"/cand-*; do
		[ "$f" = p2pusb ] && { name=p2k; bin=$P2PUSB; } ||
			{ [ -x "$f" ] || continue; name=${f##*/}; bin=$f; }
		P2PUSB=$bin with_p2pusb count_p2pusb "$name" || return 1
	done
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

if [ "${1:-}" = profile ]; then
	profile "${2:-32}"
	exit
fi
if [ "${1:-}" = counts ]; then
	counts
	exit
fi
if [ "${1:-}" = legs ]; then
	legs
	exit
fi

ROUNDS=${1:-3}
shift
PATHS=(direct kernel p2k p2p p2x2)
[ $# -eq 0 ] || PATHS=("$@")
for f in "$BIN"/cand-*; do	# candidate builds: bench.sh -c NAME=BINARY
	[ -x "$f" ] && PATHS+=("${f##*/}")
done
failed=0
for ((round = 1; round <= ROUNDS; round++)); do
	for ((k = 0; k < ${#PATHS[@]}; k++)); do
		path=${PATHS[(k + round - 1) % ${#PATHS[@]}]}
		if grep -q "^[EO] $path $round\$" "$RES"; then
			continue
		fi
		rec B "$path" "$round"
		case $path in
		cand-*) run=(path_p2k "$round" "$path" "$BIN/$path") ;;
		*) run=("path_$path" "$round") ;;
		esac
		if "${run[@]}"; then
			rec E "$path" "$round"
		else
			echo "bench: $path round $round failed"
			usb_dump
			failed=1
			cleanup
			rec E "$path" "$round"
			rec F "$path" "$round"
		fi
	done
done
exit $failed
