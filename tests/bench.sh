#!/bin/bash
# bench.sh - p2pusb against the kernel's usbip-host, one VM.
#
# Usage: tests/bench.sh [-r ROUNDS] [-s SECS] [-t SECS] [-l SLICE] [-b USEC]
#                       [-o OUTDIR] [-p 'PATH...'] [-c NAME=BINARY]...
#                       [-q 'QEMU ARGS']
#                                                   (make bench: no options)
#        tests/bench.sh --profile [-o OUTDIR]       perf profile of serve
#        tests/bench.sh --counts [-b USEC] [-o OUTDIR] [-c NAME=BINARY]...
#                             per-URB syscalls, context switches, faults
#        tests/bench.sh --legs [-b USEC] [-o OUTDIR]
#                             one URB's round trip in three legs (usbmon)
#        tests/bench.sh --table -o OUTDIR [-r ROUNDS ...]
#                             the table of an earlier run again
#
# Boots the test VM (tests/vm.sh) once and runs tests/bench-guest.sh in
# it, which sets up every path at once, each on a mass-storage gadget of
# its own on dummy_hcd: directly, through the kernel's usbip-host (one
# device, and two streamed at once), through p2pusb serve with the
# kernel's and p2pusb's client, serve --busy-poll USEC, and two devices
# through one serve.  Then come short slots, ROUNDS times (default 8)
# round after round, the order rotating:
#
#   direct | kernel+p2k | kernel+p2p | kernel+bp2000 | kx2+p2x2 | direct ...
#
# In a slot the p2pusb path and its kernel peer take turns a few times a
# second, so that each p2pusb figure is compared with the kernel's from
# the same seconds, not with a median taken minutes away: whatever else
# the host does hits both.  The table has the median of each figure over
# all slots and, for each p2pusb path, the median over the slots of its
# ratio to the kernel's with the interquartile range of those ratios,
# "0.93x (0.85-1.02)"; every slot's ratio is in OUTDIR/pairs.txt.
#
# A slot of a p2pusb path holds the kernel path too: the two take turns
# every SLICE seconds (default 0.3), the kernel's first and last (tests/
# rtt-bench.c slot), through -s SECS (default 3) of 1 MiB O_DIRECT reads,
# as many of writes, and -t SECS (default 3) each of 4 KiB random reads
# and of control round trips; each path gets half of each.  -b USEC picks
# serve's --busy-poll window for the bpUSEC path (default 2000; -b 0: no
# such path); in --counts and --legs it adds a row for serve --busy-poll
# USEC.  -p measures only some paths (direct kernel kx2 p2k p2p p2x2
# bpUSEC, as many windows as wanted: -p 'bp500 bp2000' compares two),
# plus the kernel path each is compared with.  -c adds a candidate build
# of p2pusb (say, with a patch to try) as one more path, measured like
# "p2pusb serve + usbip attach".  -q passes extra arguments to qemu.  Not
# a pass/fail test: it fails only when it could not measure.
#
# The kernel's usbip-host can oops (vm.sh then exits 125).  The guest
# records every measurement as it goes, so after an oops a fresh VM
# carries on with what is left; the measurement that died is reported and
# left out.  At most three VMs are booted.
set -u
cd "$(dirname "$0")/.." || exit 2

rounds=8
seqs=3
secs=3
slice=0.3
busy=2000
out=""
profile=0
cands=()
qemu_args=""
paths=""
while [ $# -gt 0 ]; do
	case $1 in
	-r) rounds=$2; shift 2 ;;
	-s) seqs=$2; shift 2 ;;
	-t) secs=$2; shift 2 ;;
	-l) slice=$2; shift 2 ;;
	-b) busy=$2; shift 2 ;;
	-o) out=$2; shift 2 ;;
	-c) cands+=("$2"); shift 2 ;;
	-q) qemu_args=$2; shift 2 ;;
	-p) paths=$2; shift 2 ;;
	--profile) profile=1; shift ;;
	--counts) profile=2; shift ;;
	--legs) profile=3; shift ;;
	--table) profile=4; shift ;;
	*) sed -n '/^# Usage/,/^$/s/^# \{0,1\}//p' "$0" >&2; exit 2 ;;
	esac
done
case $rounds in *[!0-9]*|'') echo "bench: -r wants a whole number" >&2; exit 2 ;; esac
case $busy in *[!0-9]*|'') echo "bench: -b wants microseconds" >&2; exit 2 ;; esac
busy_arg=()
[ "$busy" = 0 ] || busy_arg=(-b "$busy")
if [ $profile = 4 ]; then
	[ -s "$out/results.txt" ] || { echo "bench: --table wants -o OUTDIR of a run" >&2; exit 2; }
fi
if [ -z "$out" ]; then
	out=$(mktemp -d "${TMPDIR:-/tmp}/p2pusb-bench.XXXXXX")
fi
mkdir -p "$out"
out=$(realpath "$out")
[ $profile = 4 ] || : >"$out/results.txt"

# ---- the table ----
# Figures: medians over the slots that ended without failing.  Ratios:
# in each slot of a p2pusb path, its figure over that of the kernel path
# it took turns with (kx2 for p2x2: usbip-host with two devices); the
# median and interquartile range of those over the slots (every one in
# pairs.txt).
# table RUN: print it (and pairs.txt) from $out/results.txt; RUN, lines
# about the run, goes at the end.
table() {
awk -v run="$1" -v date="$(date -u +%Y-%m-%d)" -v rounds="$rounds" \
    -v seqs="$seqs" -v secs="$secs" -v slice="$slice" -v pairs="$out/pairs.txt" '
function sort(a, n,    i, j, t) {
	for (i = 2; i <= n; i++)
		for (j = i; j > 1 && a[j - 1] > a[j]; j--) {
			t = a[j]; a[j] = a[j - 1]; a[j - 1] = t
		}
}
# quantile of sorted a[1..n], linear between neighbours
function q(a, n, f,    x, i) {
	if (n == 0) return ""
	x = 1 + (n - 1) * f; i = int(x)
	return i >= n ? a[n] : a[i] + (x - i) * (a[i + 1] - a[i])
}
function median(key,    n, i, a) {
	n = cnt[key]
	for (i = 1; i <= n; i++) a[i] = val[key, i]
	sort(a, n)
	return q(a, n, 0.5)
}
function fmt(v, d) { return v == "" ? "n/a" : sprintf("%." d "f", v) }
function ratio(a, b) { return (a == "" || b == "" || b == 0) ? "n/a" : sprintf("%.2fx", a / b) }
function ref_of(p) { return p == "p2x2" ? "kx2" : (p == "direct" || p == "kernel" || p == "kx2") ? "" : "kernel" }
function good(s) { return (s in at) && (s in ended) && !(s in bad) }
# cell PATH METRIC SET: "median (q1-q3)" of the ratios in SET: "" all,
# "q" the slots with a quiet host, "b" the others
function cell(p, m, set,    n, i, a) {
	n = pc[set, p, m]
	if (n == 0) return "n/a"
	for (i = 1; i <= n; i++) a[i] = pv[set, p, m, i]
	sort(a, n)
	return sprintf("%.2fx (%.2f-%.2f)", q(a, n, 0.5), q(a, n, 0.25), q(a, n, 0.75))
}
$1 == "B" && $3 ~ /^[0-9]+$/ { at[$3] = $2; next }
$1 == "R" && $3 ~ /^[0-9]+$/ { r_[$3, $2, $4] = $5
	nr++; rs[nr] = $3; rp[nr] = $2; rk[nr] = $4; next }
$1 == "E" && $3 ~ /^[0-9]+$/ { ended[$3] = 1; next }
($1 == "F" || $1 == "O") && $3 ~ /^[0-9]+$/ { bad[$3] = 1; next }
$1 == "F" || $1 == "O" { setupbad[$2] = 1; next }
END {
	nm = split("read_mbps write_mbps iops ctrl_rtt cpu_s_per_gib rss_kib", m, " ")
	for (i = 1; i <= nr; i++) {
		if (!good(rs[i])) continue
		p = rp[i]; seen[p] = 1
		if (!((rs[i] SUBSEP p) in counted)) { counted[rs[i], p] = 1; runs[p]++ }
		val[p, rk[i], ++cnt[p SUBSEP rk[i]]] = r_[rs[i], p, rk[i]]
	}
	# the pairs: each slot of a p2pusb path holds its kernel peer too.  A
	# slot had a quiet host when the peer did at least half as well there
	# as in its best slot of the run (ctrl round trips; for two devices,
	# reads): a busy host slows usbip-host 10 to 20 times.
	ind["kernel"] = "ctrl_rtt"; ind["kx2"] = "read_mbps"
	maxs = 0
	for (s in at) if (s + 0 > maxs) maxs = s + 0
	for (s = 1; s <= maxs; s++) {
		if (!good(s)) continue
		p = at[s]; r = ref_of(p)
		if (r != "" && (s SUBSEP r SUBSEP ind[r]) in r_ && r_[s, r, ind[r]] > best[r])
			best[r] = r_[s, r, ind[r]]
	}
	for (s = 1; s <= maxs; s++) {
		if (!good(s)) continue
		p = at[s]; r = ref_of(p)
		if (r == "") continue
		quiet = (s SUBSEP r SUBSEP ind[r]) in r_ && r_[s, r, ind[r]] >= best[r] / 2
		for (j = 1; j <= 5; j++) {
			if (!((s SUBSEP p SUBSEP m[j]) in r_) || !((s SUBSEP r SUBSEP m[j]) in r_))
				continue
			ref = r_[s, r, m[j]]
			if (ref == 0) continue
			x = r_[s, p, m[j]] / ref
			pv["", p, m[j], ++pc["", p, m[j]]] = x
			set = quiet ? "q" : "b"
			pv[set, p, m[j], ++pc[set, p, m[j]]] = x
			printf "slot %d %s %s %s / %s %s = %.3f%s\n", s, m[j], p,
				r_[s, p, m[j]], r, ref, x, quiet ? "" : " (busy host)" >pairs
		}
	}
	# rows: a fixed order, then the busy-poll windows, then candidates
	np = 0
	split("direct kernel kx2 p2k p2p", fixed, " ")
	for (i = 1; i <= 5; i++) if (fixed[i] in seen) paths[++np] = fixed[i]
	nb = 0
	for (p in seen) if (p ~ /^bp[0-9]+$/) bps[++nb] = substr(p, 3) + 0
	sort(bps, nb)
	for (i = 1; i <= nb; i++) paths[++np] = "bp" bps[i]
	if ("p2x2" in seen) paths[++np] = "p2x2"
	for (p in seen) if (p ~ /^cand-/) paths[++np] = p
	name["direct"] = "direct (dummy_hcd, no USB/IP)"
	name["kernel"] = "usbip-host + usbip attach"
	name["kx2"]    = "usbip-host, 2 devices at once"
	name["p2k"]    = "p2pusb serve + usbip attach"
	name["p2p"]    = "p2pusb serve + p2pusb attach"
	name["p2x2"]   = "p2pusb serve, 2 devices at once"
	short["p2k"] = "serve+usbip att"; short["p2p"] = "serve+p2pusb att"
	short["p2x2"] = "2 devs (/kx2)"
	for (i = 1; i <= np; i++) {
		p = paths[i]
		if (p ~ /^bp/) { name[p] = "p2pusb serve --busy-poll " substr(p, 3); short[p] = "busy-poll " substr(p, 3) }
		if (p ~ /^cand-/) { name[p] = substr(p, 6) " serve + usbip attach"; short[p] = substr(p, 6) }
	}
	dec["read_mbps"] = 1; dec["write_mbps"] = 1; dec["iops"] = 0
	dec["ctrl_rtt"] = 0; dec["cpu_s_per_gib"] = 1; dec["rss_kib"] = 0
	for (i = 1; i <= np; i++)
		for (j = 1; j <= nm; j++)
			med[paths[i], m[j]] = median(paths[i] SUBSEP m[j])
	printf "\n%-33s %7s %7s %7s %8s %8s %8s\n", "medians of all slots",
		"read", "write", "4K rd", "ctrl", "srv CPU", "srv RSS"
	printf "%-33s %7s %7s %7s %8s %8s %8s\n", "", "MB/s", "MB/s", "IOPS",
		"RTT/s", "s/GiB", "KiB"
	for (i = 1; i <= np; i++) {
		p = paths[i]
		line = sprintf("%-33s", name[p])
		for (j = 1; j <= nm; j++)
			line = line sprintf(" %" (j <= 3 ? 7 : 8) "s",
					    fmt(med[p, m[j]], dec[m[j]]))
		print line
	}
	for (p in setupbad) print "(no data: setting up " p " failed)"
	nc = 0
	for (i = 1; i <= np; i++) if (ref_of(paths[i]) != "") cols[++nc] = paths[i]
	if (nc) {
		printf "\nratio to usbip-host, turn by turn: median (interquartile range) over the slots\n"
		printf "%-13s", ""
		for (i = 1; i <= nc; i++) printf " %-17s", short[cols[i]]
		printf "\n"
		label["read_mbps"] = "read"; label["write_mbps"] = "write"
		label["iops"] = "4K rd"; label["ctrl_rtt"] = "ctrl"
		label["cpu_s_per_gib"] = "srv CPU"

		sets[1] = ""; sets[2] = "q"; sets[3] = "b"
		head["q"] = "the same, slots with a quiet host (*)"
		head["b"] = "the same, slots with a busy host"
		for (k = 1; k <= 3; k++) {
			if (k > 1) printf "\n%s\n", head[sets[k]]
			for (j = 1; j <= 5; j++) {
				printf "%-13s", label[m[j]]
				for (i = 1; i <= nc; i++) printf " %-17s", cell(cols[i], m[j], sets[k])
				printf "\n"
			}
			printf "%-13s", "slots"
			for (i = 1; i <= nc; i++) printf " %-17d", pc[sets[k], cols[i], "read_mbps"]
			printf "\n"
		}
		print "\nIn each slot the p2pusb path and usbip-host took turns every " slice " s, usbip-host"
		print "first and last; a ratio: the p2pusb figure of one slot over the usbip-host"
		print "figure of the same slot (\"2 devs\": over usbip-host with two devices)."
		print "Higher is better except CPU; the kernel counts only its stub_rx/stub_tx threads."
		print "(*) usbip-host did at least half as well in the slot as in its best one"
		print "(ctrl RTT/s; 2 devices: read MB/s): a busy host slows it 10 to 20 times."
	}
	if (cnt["kernel" SUBSEP "ctrl_rtt"]) {
		for (i = 1; i <= cnt["kernel" SUBSEP "ctrl_rtt"]; i++) a[i] = val["kernel", "ctrl_rtt", i]
		sort(a, cnt["kernel" SUBSEP "ctrl_rtt"])
		printf "\nhow busy the host was: usbip-host ctrl RTT/s %d-%d over its slots\n",
			a[1], a[cnt["kernel" SUBSEP "ctrl_rtt"]]
	}
	if ("p2x2" in seen)
		printf "server peak RSS streaming two devices: %s KiB\n", fmt(med["p2x2", "rss_kib"], 0)
	printf "slots per path:"
	for (i = 1; i <= np; i++) printf " %s %d", paths[i], runs[paths[i]]
	printf "\n%d rounds; a slot: %s s of reads, %s s of writes, %s s of 4K reads, %s s of\n",
		rounds, seqs, seqs, secs, secs
	printf "control round trips (half each for each path of the slot)\n"
	print date ", " run
}' "$out/results.txt" | tee "$out/table.txt"
}

if [ $profile = 4 ]; then
	table "table of the run in $out again"
	exit
fi

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
	tests/vm.sh -t 1200 -q "$qemu_args" -o "$out" tests/bench-guest.sh "${busy_arg[@]}" counts \
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
	tests/vm.sh -t 900 -q "$qemu_args" -o "$out" tests/bench-guest.sh "${busy_arg[@]}" legs \
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
qemus0=$(pgrep -c qemu-system)
oopses=()
for vm in 1 2 3; do
	# shellcheck disable=SC2086  # a list of paths
	tests/vm.sh -t 1200 -q "$qemu_args" -o "$out" tests/bench-guest.sh \
		-s "$seqs" -t "$secs" -l "$slice" "${busy_arg[@]}" "$rounds" $paths \
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

table "$elapsed s; host: $(nproc) CPUs
load average at start / end: $load0 / $(cut -d' ' -f1-3 /proc/loadavg)
other qemu-system processes at start / end: $qemus0 / $(pgrep -c qemu-system)${oopses[*]:+
kernel oops during: ${oopses[*]}}"

grep -q '^E ' "$out/results.txt"
