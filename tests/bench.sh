#!/bin/bash
# bench.sh - p2pusb against the kernel's usbip-host, one VM, one gadget.
#
# Usage: tests/bench.sh [-r ROUNDS] [-o OUTDIR] [-p 'PATH...'] [-c NAME=BINARY]...
#                       [-q 'QEMU ARGS']            (make bench: no options)
#        tests/bench.sh --profile [-o OUTDIR]       perf profile of serve
#        tests/bench.sh --counts [-o OUTDIR] [-c NAME=BINARY]...
#                             per-URB syscalls, context switches, faults
#        tests/bench.sh --legs [-o OUTDIR]
#                             one URB's round trip in three legs (usbmon)
#
# Boots the test VM (tests/vm.sh) once and runs tests/bench-guest.sh in
# it, which measures one mass-storage gadget on dummy_hcd along every
# path: directly, through the kernel's usbip-host, and through p2pusb
# serve with the kernel's and p2pusb's client.  Prints one table of
# medians over ROUNDS (default 3) and each p2pusb figure as a ratio to
# the kernel's.  Not a pass/fail test: it fails only when it could not
# measure.  -c adds a candidate build of p2pusb (say, with a patch to try)
# as one more row, measured like "p2pusb serve + usbip attach" in the same
# VM: on a machine this noisy, only an A/B inside one run means anything.
# -p measures only some paths (direct kernel p2k p2p p2x2; see
# tests/bench-guest.sh); -q passes extra arguments to qemu.
#
# The kernel's usbip-host can oops (vm.sh then exits 125).  The guest
# records every measurement as it goes, so after an oops a fresh VM
# carries on with what is left; the measurement that died is reported and
# left out.  At most three VMs are booted.
set -u
cd "$(dirname "$0")/.." || exit 2

rounds=3
out=""
profile=0
cands=()
qemu_args=""
paths=""
while [ $# -gt 0 ]; do
	case $1 in
	-r) rounds=$2; shift 2 ;;
	-o) out=$2; shift 2 ;;
	-c) cands+=("$2"); shift 2 ;;
	-q) qemu_args=$2; shift 2 ;;
	-p) paths=$2; shift 2 ;;
	--profile) profile=1; shift ;;
	--counts) profile=2; shift ;;
	--legs) profile=3; shift ;;
	*) sed -n '/^# Usage/,/^$/s/^# \{0,1\}//p' "$0" >&2; exit 2 ;;
	esac
done
if [ -z "$out" ]; then
	out=$(mktemp -d "${TMPDIR:-/tmp}/p2pusb-bench.XXXXXX")
fi
mkdir -p "$out"
out=$(realpath "$out")
: >"$out/results.txt"

# The VM runs a snapshot of the binaries from $out/bin: a rebuild in the
# work tree during the run changes nothing.
make -s p2pusb || exit 1
mkdir -p "$out/bin"
cp p2pusb "$out/bin/p2pusb" || exit 1
for c in "${cands[@]}"; do
	[ -x "${c#*=}" ] && [ "${c%%=*}" != "$c" ] ||
		{ echo "bench: -c wants NAME=BINARY, not $c" >&2; exit 2; }
	cp "${c#*=}" "$out/bin/cand-${c%%=*}" || exit 1
done
gcc -std=c11 -O2 -Wall -Wextra -Werror -pthread -o "$out/bin/rtt-bench" \
	tests/rtt-bench.c || exit 1
strip -o "$out/p2pusb.stripped" "$out/bin/p2pusb" &&
	echo "bench: output in $out; p2pusb $(stat -c %s "$out/bin/p2pusb") bytes," \
		"$(stat -c %s "$out/p2pusb.stripped") stripped"

if [ $profile = 2 ]; then
	# Counts do not depend on how busy the host is: a fair A/B for
	# candidates even when the wall-clock table is too noisy.
	tests/vm.sh -t 1200 -q "$qemu_args" -o "$out" tests/bench-guest.sh counts \
		>"$out/vm-1.log" 2>&1
	rc=$?
	grep -v '^\[' "$out/vm-1.log" | grep -v '^$' | tail -n 20 >&2
	awk '
	$1 == "C" { v[$2, $3, $4] = $5; if (!($2 in seen)) { seen[$2] = 1; order[++n] = $2 }
		    if ($4 ~ /^sys_/ && !($4 in sc)) { sc[$4] = 1; scs[++nsc] = $4 } }
	function g(k) { return k in v ? v[k] : "-" }
	END {
		nw = split("seqread seqwrite rand4k ctrl", w, " ")
		printf "%-12s", "per URB"
		for (j = 1; j <= nw; j++) printf " | %-22s", w[j] " (" g(order[1] SUBSEP w[j] SUBSEP "urbs") " URBs)"
		printf "\n%-12s", "server"
		for (j = 1; j <= nw; j++) printf " | %6s %7s %7s", "sysc", "ctxsw", "faults"
		print ""
		for (i = 1; i <= n; i++) {
			printf "%-12s", order[i]
			for (j = 1; j <= nw; j++)
				printf " | %6s %7s %7s", g(order[i] SUBSEP w[j] SUBSEP "syscalls_per_urb"),
					g(order[i] SUBSEP w[j] SUBSEP "ctxsw_per_urb"),
					g(order[i] SUBSEP w[j] SUBSEP "faults_per_urb")
			print ""
		}
		printf "\nsyscalls per URB, seqread:\n"
		for (i = 1; i <= n; i++) {
			if (order[i] == "kernel") continue
			line = sprintf("  %-10s", order[i])
			for (k = 1; k <= nsc; k++)
				if ((order[i] SUBSEP "seqread" SUBSEP scs[k]) in v)
					line = line sprintf(" %s %s", substr(scs[k], 5), v[order[i], "seqread", scs[k]])
			print line
		}
		for (i = 1; i <= n; i++)
			if ((order[i] SUBSEP "all" SUBSEP "rss_kib") in v)
				printf "peak RSS %s: %s KiB\n", order[i], v[order[i], "all", "rss_kib"]
		for (i = 1; i <= n; i++)
			if ((order[i] SUBSEP "all" SUBSEP "usbfs_maps") in v)
				printf "buffers mapped from usbfs %s: %s\n", order[i], v[order[i], "all", "usbfs_maps"]
	}' "$out/results.txt" | tee "$out/counts.txt"
	exit $rc
fi
if [ $profile = 3 ]; then
	tests/vm.sh -t 900 -q "$qemu_args" -o "$out" tests/bench-guest.sh legs \
		>"$out/vm-1.log" 2>&1
	rc=$?
	awk '
	$1 == "L" { v[$2, $3, $4] = $5; if (!($2 in seen)) { seen[$2] = 1; order[++n] = $2 } }
	END {
		print "median microseconds per URB, one in flight (usbmon, both buses)"
		printf "%-10s %-7s %6s %9s %9s %9s %9s\n", "server", "load", "URBs",
			"request", "device", "reply", "total"
		split("ctrl rand4k", loads, " ")
		for (i = 1; i <= n; i++)
			for (w = 1; w <= 2; w++) {
				k = loads[w]
				rq = v[order[i], k, "request_us"]
				dv = v[order[i], k, "device_us"]
				rp = v[order[i], k, "reply_us"]
				printf "%-10s %-7s %6d %9d %9d %9d %9d\n", order[i], k,
					v[order[i], k, "urbs"], rq, dv, rp, rq + dv + rp
			}
		if (wake != "") {
			split(wake, f, " ")
			print "one wakeup through a pipe (rtt-bench wake), microseconds:"
			printf "  one CPU: thread %s, process %s; two CPUs: thread %s, process %s\n",
				f[4], f[6], f[8], f[10]
			printf "a null syscall %s us, a 48-byte write+read on a socketpair %s us\n",
				f[12], f[14]
		}
	}
	$1 == "W" { wake = $0 }' "$out/results.txt" | tee "$out/legs.txt"
	exit $rc
fi
if [ $profile = 1 ]; then
	tests/vm.sh -t 900 -q "$qemu_args" -o "$out" tests/bench-guest.sh profile 32
	rc=$?
	echo "bench: reports in $out: perf-{p2pusb,kernel}-{comm,sym}.txt, strace-*.txt, callgrind*.txt"
	exit $rc
fi

start=$(date +%s)
load0=$(cut -d' ' -f1-3 /proc/loadavg)
oopses=()
for vm in 1 2 3; do
	tests/vm.sh -t 1200 -q "$qemu_args" -o "$out" tests/bench-guest.sh "$rounds" $paths \
		>"$out/vm-$vm.log" 2>&1
	rc=$?
	cp "$out/kernel.log" "$out/kernel-$vm.log" 2>/dev/null
	grep -v '^\[' "$out/vm-$vm.log" | grep -v '^$' | tail -n 40 >&2
	[ $rc = 125 ] || break
	# The VM died.  An oops: the measurement begun last and never ended
	# is the one the kernel died in; mark it and let a fresh VM do the
	# rest.  No oops in the log (qemu killed from outside, say): retry.
	victim=$(awk '$1 == "B" { b[$2 " " $3] = 1; last = $2 " " $3 }
		      $1 == "E" { delete b[$2 " " $3] }
		      END { if (last in b) print last }' "$out/results.txt")
	if grep -qE "Oops|BUG:|Kernel panic|general protection" "$out/kernel-$vm.log"; then
		[ -n "$victim" ] || break
		oopses+=("$victim")
		echo "O $victim" >>"$out/results.txt"
		echo "bench: the kernel died during '$victim' (see $out/kernel-$vm.log);" \
			"booting a fresh VM for the rest" >&2
		grep -m3 -E "BUG|Oops|RIP" "$out/kernel-$vm.log" | sed 's/^/    /' >&2
	else
		echo "bench: the VM died during '${victim:-setup}' without an oops" \
			"in its log (killed from outside?); booting a fresh VM" >&2
		grep -a "terminating on signal" "$out/vm-$vm.log" | sed 's/^/    /' >&2
	fi
done
elapsed=$(( $(date +%s) - start ))

# ---- the table: medians over the rounds that ended without failing ----
awk -v elapsed="$elapsed" -v oopses="${oopses[*]:-}" \
    -v load="$load0 / $(cut -d' ' -f1-3 /proc/loadavg)" -v cpus="$(nproc)" \
    -v date="$(date -u +%Y-%m-%d)" -v rounds="$rounds" '
function median(key,    n, i, j, t, a) {
	n = cnt[key]
	if (n == 0) return ""
	for (i = 1; i <= n; i++) a[i] = val[key, i]
	for (i = 2; i <= n; i++)
		for (j = i; j > 1 && a[j - 1] > a[j]; j--) {
			t = a[j]; a[j] = a[j - 1]; a[j - 1] = t
		}
	return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
function fmt(v, d) { return v == "" ? "n/a" : sprintf("%." d "f", v) }
function ratio(a, b) { return (a == "" || b == "" || b == 0) ? "n/a" : sprintf("%.2fx", a / b) }
$1 == "R" { r[$2 " " $3, $4] = $5
	    if ($2 ~ /^cand-/ && !($2 in iscand)) { iscand[$2] = 1; cands = cands " " $2 }
	    next }
$1 == "E" { ended[$2 " " $3] = 1; next }
$1 == "F" || $1 == "O" { bad[$2 " " $3] = 1; next }
END {
	for (k in r) {
		split(k, kp, SUBSEP)
		if (!(kp[1] in ended) || kp[1] in bad) continue
		split(kp[1], pr, " ")
		key = pr[1] SUBSEP kp[2]
		val[key, ++cnt[key]] = r[k]
	}
	for (k in ended)
		if (!(k in bad)) { split(k, pr, " "); runs[pr[1]]++ }
	np = split("direct kernel p2k p2p p2x2" cands, paths, " ")
	name["direct"] = "direct (dummy_hcd, no USB/IP)"
	name["kernel"] = "usbip-host + usbip attach"
	name["p2k"]    = "p2pusb serve + usbip attach"
	name["p2p"]    = "p2pusb serve + p2pusb attach"
	name["p2x2"]   = "p2pusb serve, 2 devices at once"
	for (i = 6; i <= np; i++)
		name[paths[i]] = substr(paths[i], 6) " serve + usbip attach"
	nm = split("read_mbps write_mbps iops ctrl_rtt cpu_s_per_gib rss_kib", m, " ")
	dec["read_mbps"] = 1; dec["write_mbps"] = 1; dec["iops"] = 0
	dec["ctrl_rtt"] = 0; dec["cpu_s_per_gib"] = 1; dec["rss_kib"] = 0
	for (i = 1; i <= np; i++)
		for (j = 1; j <= nm; j++)
			med[paths[i], m[j]] = median(paths[i] SUBSEP m[j])
	printf "\n%-33s %7s %7s %7s %8s %8s %8s\n", "medians of " rounds " runs",
		"read", "write", "4K rd", "ctrl", "srv CPU", "srv RSS"
	printf "%-33s %7s %7s %7s %8s %8s %8s\n", "", "MB/s", "MB/s", "IOPS",
		"RTT/s", "s/GiB", "KiB"
	for (i = 1; i <= np; i++) {
		p = paths[i]
		line = sprintf("%-33s", name[p])
		for (j = 1; j <= nm; j++)
			line = line sprintf(" %" (j <= 3 ? 7 : 8) "s",
					    fmt(med[p, m[j]], dec[m[j]]))
		print line (runs[p] ? "" : "   (no data)")
	}
	printf "\n%-33s %7s %7s %7s %8s %8s\n", "ratio to usbip-host (kernel)",
		"read", "write", "4K rd", "ctrl", "CPU (*)"
	for (i = 3; i <= np; i++) {
		p = paths[i]
		if (p == "p2x2") continue
		line = sprintf("%-33s", name[p])
		for (j = 1; j <= 5; j++)
			line = line sprintf(" %" (j <= 3 ? 7 : 8) "s",
					    ratio(med[p, m[j]], med["kernel", m[j]]))
		print line
	}
	print "(*) higher is better except CPU; the kernel counts only its stub_rx/stub_tx threads"
	if (np > 5) {
		printf "\n%-33s %7s %7s %7s %8s %8s %8s\n", "candidate / p2pusb serve",
			"read", "write", "4K rd", "ctrl", "CPU", "RSS"
		for (i = 6; i <= np; i++) {
			p = paths[i]
			line = sprintf("%-33s", name[p])
			for (j = 1; j <= 6; j++)
				line = line sprintf(" %" (j <= 3 ? 7 : 8) "s",
						    ratio(med[p, m[j]], med["p2k", m[j]]))
			print line
		}
	}
	printf "\np2pusb serve seq read vs direct:  %s (p2k), %s (p2p)\n",
		ratio(med["p2k", "read_mbps"], med["direct", "read_mbps"]),
		ratio(med["p2p", "read_mbps"], med["direct", "read_mbps"])
	printf "server peak RSS streaming two devices: %s KiB\n",
		fmt(med["p2x2", "rss_kib"], 0)
	printf "runs per path:"
	for (i = 1; i <= np; i++) printf " %s %d", paths[i], runs[paths[i]]
	printf "; %s, %d s\n", date, elapsed
	printf "host: %d CPUs, load average at start / end: %s\n", cpus, load
	if (oopses != "") print "kernel oops during: " oopses
}' "$out/results.txt" | tee "$out/table.txt"

grep -q '^E ' "$out/results.txt"
