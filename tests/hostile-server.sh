#!/bin/bash
# hostile-server.sh [--p2pusb BIN] [--host] [CASE...] - p2pusb's client side
# against a hostile or broken server (tests/bad-server), run inside the VM
# by vm.sh:   tests/vm.sh -t 300 -o DIR tests/hostile-server.sh
#
# Each case starts a fresh bad-server, points `p2pusb list`, `p2pusb
# attach` or `p2pusb attach --via` at it, and expects what a user should
# get from any broken server: exit status 1, exactly ONE line on stderr
# that names the peer and the reason, nothing but printable ASCII (and
# newlines) on stdout and stderr, and nothing left attached: every vhci
# port free, no port record left in /var/run/vhci_hcd, and (except where
# the import is correct) vhci_hcd never even asked to attach.  The one
# exception is list-devlist-escape: that list is well formed, so it must
# succeed, showing the escapes as text (\x1b ...).
#
# Every case runs, whatever the earlier ones did; each prints what it saw
# (outputs through cat -v) and "ok CASE" or "FAIL CASE: why".  The script
# ends with PASS (exit 0) or FAIL (exit 1).  CASE names (default: all; a
# name may be a prefix, like "list-" or "via-"):
#   list-devlist-escape list-devlist-refused list-short-record
#   list-huge-count list-silent list-garbage list-devlist-garbage
#   attach-import-escape attach-unknown-speed attach-short-record
#   attach-huge-count attach-silent attach-garbage
#   via-import-escape via-unknown-speed via-short-record via-garbage
#   via-closed-stdin
# --host runs only the list-* cases, with no vhci checks: they need no USB,
# so they run on the build machine too.  --p2pusb BIN tests another build,
# --port N has bad-server listen on 127.0.0.1:N (default 34517).
set -eu
cd "$(dirname "$0")/.."
. tests/guest-lib.sh
export LC_ALL=C		# bytes are bytes: in the regexes, tr and cat -v

P2PUSB=./p2pusb
HOST_ONLY=0
PORT=34517			# the VM has a loopback of its own
while [ $# -gt 0 ]; do
	case $1 in
	--p2pusb) P2PUSB=$2; shift 2 ;;
	--host) HOST_ONLY=1; shift ;;
	--port) PORT=$2; shift 2 ;;
	-*) sed -n '2,/^set -eu/s/^# \{0,1\}//p' "$0" >&2; exit 2 ;;
	*) break ;;
	esac
done
WANT=("$@")
W=$(mktemp -d "${TMPDIR:-/tmp}/hostile.XXXXXX")
VHCI=/sys/devices/platform/vhci_hcd.0
passed=0
failed=()

# tests/bad-server, built here when missing or older than its source (the
# VM's overlay is writable, the host's tree stays untouched).
bad_server_bin() {
	if [ -x tests/bad-server ] && [ tests/bad-server -nt tests/bad-server.c ]; then
		echo "$PWD/tests/bad-server"
	else
		gcc -std=c11 -Wall -Wextra -Werror -O2 -o "$W/bad-server" \
			tests/bad-server.c >&2 || return 1
		echo "$W/bad-server"
	fi
}
BAD=$(bad_server_bin) || die "cannot build tests/bad-server"

if [ $HOST_ONLY = 0 ]; then
	modprobe vhci-hcd || die "no vhci_hcd"
	[ -d $VHCI ] || die "no $VHCI"
fi

# ---- helpers -------------------------------------------------------------
# Under qemu's TCG every exec costs tens of ms (hundreds on a busy host), so
# the checks below work on what run_case read once, with bash builtins.

problem() { PROBLEMS+=("$*"); }

secs() { printf '%d.%02d' $(($1 / 1000)) $(($1 % 1000 / 10)); }

# nonprint FILE: how many bytes are neither printable ASCII nor newline.
nonprint() { tr -d '\n\040-\176' <"$1" | wc -c; }

# vhci_busy: the vhci ports that are not free (state 4), as "port:state".
vhci_busy() {
	local f hub port sta rest
	for f in $VHCI/status*; do
		while read -r hub port sta rest; do
			[ "$hub" = hub ] && continue
			[ $((10#$sta)) -eq 4 ] || echo "$((10#$port)):$((10#$sta))"
		done <"$f"
	done
}

# show FILE MAX: its first lines, control bytes made visible (cat -v).
show() {
	local l
	head -n "$2" "$1" | cat -v | while IFS= read -r l; do
		echo "  | ${l:0:300}"
	done
}

# run_case FORM SCENARIO: the client (FORM: list, attach or via) against a
# fresh bad-server playing SCENARIO.  Sets RC, MS, PEER; OUT and ERR (the
# files), OUTL and ERRL (their lines), OUT_NL and ERR_NL (newlines in
# them), OUT_NP and ERR_NP (bytes neither printable nor newline).
run_case() {
	local form=$1 scen=$2 bpid="" start i l=""
	BLOG=$W/$CASE.server.log
	OUT=$W/$CASE.out
	ERR=$W/$CASE.err
	: >"$BLOG"
	: >"$OUT"
	: >"$ERR"
	RC=-1 MS=0 OUTL=() ERRL=() OUT_NL=0 ERR_NL=0 OUT_NP=0 ERR_NP=0
	if [ "$form" != via ]; then
		"$BAD" -t 60 $PORT "$scen" 2>>"$BLOG" &
		bpid=$!
		for ((i = 0; i < 100; i++)); do	# its first line, within 10 s
			read -r l <"$BLOG" || true
			[[ $l == *listening* ]] && break
			sleep 0.1
		done
		if [[ $l != *listening* ]]; then
			problem "bad-server did not start: $(cat "$BLOG")"
			kill "$bpid" 2>/dev/null || true
			wait "$bpid" 2>/dev/null || true
			return
		fi
		PEER=127.0.0.1:$PORT
	else
		PEER=bad-server
	fi
	[ $HOST_ONLY = 1 ] || KLOG_FROM=$(dmesg | wc -l)
	start=$(ms_now)
	set +e
	case $form in
	list) timeout 90 "$P2PUSB" list 127.0.0.1:$PORT ;;
	attach) timeout 90 "$P2PUSB" attach 127.0.0.1:$PORT 1-1 ;;
	# exec: or dash's sh -c stays in between, holding the pipes open.
	via) timeout 90 "$P2PUSB" attach \
		--via "exec $BAD -t 60 -l $BLOG --stdio $scen" 1-1 ;;
	esac >"$OUT" 2>"$ERR" </dev/null
	RC=$?
	set -e
	MS=$(($(ms_now) - start))
	if [ -n "$bpid" ]; then
		if ! timeout 30 tail -s 0.1 --pid="$bpid" -f /dev/null; then
			problem "bad-server still running 30 s after the client"
			kill "$bpid" 2>/dev/null || true
		fi
		wait "$bpid" 2>/dev/null || true
	fi
	mapfile -t OUTL <"$OUT"
	mapfile -t ERRL <"$ERR"
	OUT_NL=$(wc -l <"$OUT")
	ERR_NL=$(wc -l <"$ERR")
	OUT_NP=$(nonprint "$OUT")
	ERR_NP=$(nonprint "$ERR")
	echo "$CASE: p2pusb $form against bad-server $scen: exit $RC after $(secs $MS) s"
	echo "  stdout: $OUT_NL lines, $OUT_NP bytes not printable"
	show "$OUT" 3
	echo "  stderr: $ERR_NL lines, $ERR_NP bytes not printable"
	show "$ERR" 5
	l=""
	while IFS= read -r i; do l+="${i#bad-server: }; "; done <"$BLOG"
	echo "  bad-server: $l"
}

# printable: both outputs hold printable ASCII and newlines only.
printable() {
	[ "$OUT_NP" -eq 0 ] || problem "stdout has $OUT_NP non-printable bytes"
	[ "$ERR_NP" -eq 0 ] || problem "stderr has $ERR_NP non-printable bytes"
}

# one_error_line REGEX: exit 1 and exactly one stderr line, naming the peer,
# matching the extended REGEX.
one_error_line() {
	local line=${ERRL[0]:-}
	[ "$RC" -eq 1 ] || problem "exit status $RC, expected 1"
	[ "$ERR_NL" -eq 1 ] && [ ${#ERRL[@]} -eq 1 ] ||
		problem "${#ERRL[@]} lines on stderr, expected exactly one"
	[[ $line == *"$PEER"* ]] || problem "the error line does not name the peer ($PEER)"
	[[ $line =~ $1 ]] || problem "the error line does not match /$1/"
	printable
}

# nothing_attached [ATTACHES]: vhci_hcd attached ATTACHES devices in this
# case (default 0), and afterwards every port is free again, no record left.
nothing_attached() {
	local want=${1:-0} klog=() l n=0 failed="" rec
	[ $HOST_ONLY = 0 ] || return 0
	wait_for '[ -z "$(vhci_busy)" ]' 15 2>/dev/null ||
		problem "vhci ports still in use: $(vhci_busy | tr '\n' ' ')"
	for rec in /var/run/vhci_hcd/port*; do
		[ ! -e "$rec" ] || problem "port record left: $rec"
	done
	mapfile -t -s "$KLOG_FROM" klog < <(dmesg)
	for l in "${klog[@]}"; do
		[[ $l != *"rhport("* ]] || n=$((n + 1))
		[[ $l != *"Failed attach request"* ]] || failed=${l#*] }
	done
	[ "$n" -eq "$want" ] || problem "vhci_hcd attached $n devices, expected $want"
	[ -z "$failed" ] || problem "vhci_hcd was asked to attach: $failed"
	echo "  vhci: $n attached; ports busy now: $(vhci_busy | tr '\n' ' ')"
}

# ---- the cases -------------------------------------------------------------
# A well-formed list with escapes in busid and path: shown, escaped.
c_list_devlist_escape() {
	run_case list devlist-escape
	[ "$RC" -eq 0 ] || problem "exit status $RC, expected 0 (the list is well formed)"
	[ ! -s "$ERR" ] || problem "stderr is not empty"
	[ "$OUT_NL" -eq 1 ] && [ ${#OUTL[@]} -eq 1 ] ||
		problem "${#OUTL[@]} lines on stdout, expected the one device"
	[[ ${OUTL[0]:-} == *pwned* ]] || problem "the busid's printable part is gone"
	[[ ${OUTL[0]:-} == *'\x1b'* ]] || problem "no \\x1b shown for the ESC bytes"
	printable
}
# c. status 1, and nothing after the 8-byte op_common.
c_list_devlist_refused() {
	run_case list devlist-refused
	one_error_line "refused the device list"
}
c_list_short_record() {
	run_case list short-record
	one_error_line "closed the connection"
}
c_list_huge_count() {
	run_case list huge-count
	one_error_line "closed the connection|count"
}
c_list_silent() {
	run_case list silent
	one_error_line "no answer within [0-9]+ s"
	[ "$MS" -lt 20000 ] || problem "took $(secs $MS) s"
}
c_list_garbage() {
	run_case list garbage
	one_error_line "version|op code"
}
# Random device records: whatever gets printed must be printable.
c_list_devlist_garbage() {
	run_case list devlist-garbage
	one_error_line "closed the connection"
}
# b. a record for another busid, escapes in it.
c_attach_import_escape() {
	run_case attach import-escape
	one_error_line "answered for busid .*, not 1-1"
	[[ ${ERRL[0]:-} == *'\x1b'* ]] || problem "no \\x1b shown for the ESC bytes"
	nothing_attached
}
# d. speed 99: refused before vhci_hcd is asked.
c_attach_unknown_speed() {
	run_case attach unknown-speed
	one_error_line "reported an unknown speed 99"
	nothing_attached
}
c_attach_short_record() {
	run_case attach short-record
	one_error_line "closed the connection"
	nothing_attached
}
c_attach_huge_count() {
	run_case attach huge-count
	one_error_line "op code 0x0005"
	nothing_attached
}
c_attach_silent() {
	run_case attach silent
	one_error_line "no answer within [0-9]+ s"
	[ "$MS" -lt 20000 ] || problem "took $(secs $MS) s"
	nothing_attached
}
c_attach_garbage() {
	run_case attach garbage
	one_error_line "version|op code"
	nothing_attached
}
c_via_import_escape() {
	run_case via import-escape
	one_error_line "answered for busid .*, not 1-1"
	[[ ${ERRL[0]:-} == *'\x1b'* ]] || problem "no \\x1b shown for the ESC bytes"
	nothing_attached
}
c_via_unknown_speed() {
	run_case via unknown-speed
	one_error_line "reported an unknown speed 99"
	nothing_attached
}
c_via_short_record() {
	run_case via short-record
	one_error_line "closed the connection"
	nothing_attached
}
c_via_garbage() {
	run_case via garbage
	one_error_line "version|op code"
	nothing_attached
}
# i. a correct import, then the command closes its stdin: vhci_hcd's first
# CMD_SUBMIT cannot be written to it.  That is a failed write (EPIPE), to
# be reported as one, not taken for a detach.  The port line on stdout is
# expected: the import itself worked.
c_via_closed_stdin() {
	run_case via stdio-closed-stdin
	one_error_line "write"
	[[ ${ERRL[0]:-} == *"Broken pipe"* ]] ||
		problem "the error line does not give the reason (Broken pipe)"
	[[ ! ${ERRL[0]:-} =~ closed\ the\ connection|[Dd]etach ]] ||
		problem "reported as a hang-up or detach, not as a failed write"
	[ ${#OUTL[@]} -eq 1 ] && [[ ${OUTL[0]} =~ ^[0-9]+$ ]] ||
		problem "stdout is not the vhci port number"
	nothing_attached 1
}

CASES="list-devlist-escape list-devlist-refused list-short-record
	list-huge-count list-silent list-garbage list-devlist-garbage
	attach-import-escape attach-unknown-speed attach-short-record
	attach-huge-count attach-silent attach-garbage
	via-import-escape via-unknown-speed via-short-record via-garbage
	via-closed-stdin"

wanted() {
	local w
	[ $HOST_ONLY = 0 ] || [[ $1 == list-* ]] || return 1
	[ ${#WANT[@]} -gt 0 ] || return 0
	for w in "${WANT[@]}"; do [[ $1 == "$w"* ]] && return 0; done
	return 1
}

echo "p2pusb: $P2PUSB ($("$P2PUSB" -V 2>&1)), bad-server: $BAD, kernel $(uname -r)"
for CASE in $CASES; do
	wanted "$CASE" || continue
	PROBLEMS=()
	t0=$(ms_now)
	"c_${CASE//-/_}"
	if [ ${#PROBLEMS[@]} -eq 0 ]; then
		echo "ok   $CASE ($(secs $(($(ms_now) - t0))) s)"
		passed=$((passed + 1))
	else
		msg=$(printf '%s; ' "${PROBLEMS[@]}")
		echo "FAIL $CASE ($(secs $(($(ms_now) - t0))) s): ${msg%; }"
		failed+=("$CASE")
	fi
	echo
done
[ $HOST_ONLY = 1 ] || cp "$W"/*.log "$W"/*.out "$W"/*.err "$P2PUSB_OUT/" 2>/dev/null || true
rm -rf "$W"
echo "measured: $passed cases passed, ${#failed[@]} failed${failed[*]:+: ${failed[*]}}"
if [ ${#failed[@]} -eq 0 ]; then echo PASS; else echo FAIL; exit 1; fi
