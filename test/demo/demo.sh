#!/usr/bin/env bash
# berth demo, single node. Everything happens inside network namespaces
# this script creates and removes on exit, even on failure; the machine's
# own namespace is never touched. Names carry the run's pid
# (berth-demo-<pid>-*, /tmp/berth-demo-<pid>.*), so runs at the same time
# leave each other alone.
#
#   test/demo/demo.sh [bridge]   two containers, the outside world, a published port
#   test/demo/demo.sh clean      remove what runs that were killed left behind
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=$PWD/bin
MODE=${1:-bridge}
PREFIX=berth-demo-

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
in_ns() { local n=$1; shift; ip netns exec "$n" "$@"; }

# remove_run PID: the namespaces (and every process in them) and the
# directory of the run with that pid.
remove_run() {
	local pid=$1 n
	for n in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$PREFIX$pid-" || true); do
		ip netns pids "$n" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
		ip netns del "$n" 2>/dev/null || true
	done
	rm -rf /tmp/"$PREFIX$pid".*
}

# running PID: is the run with that pid still going? (Not a zombie, and
# the pid not reused by another program.)
running() {
	local stat
	stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	[ "$(echo "${stat##*) }" | cut -d' ' -f1)" != Z ] && grep -q demo.sh <<<"$(tr '\0' ' ' <"/proc/$1/cmdline")"
}

# runs_left: pids of runs whose namespaces or directories exist but whose
# script is gone.
runs_left() {
	{
		ip netns list 2>/dev/null | awk '{print $1}' | sed -n "s/^$PREFIX\([0-9]*\)-.*/\1/p"
		for d in /tmp/"$PREFIX"*.*; do [ -d "$d" ] && basename "$d" | sed -n "s/^$PREFIX\([0-9]*\)\..*/\1/p"; done
	} | sort -u | while read -r pid; do
		[ -n "$pid" ] && ! running "$pid" && echo "$pid"
	done
	true
}

if [ "$MODE" = clean ]; then
	left=$(runs_left)
	if [ -z "$left" ]; then echo "demo.sh: nothing left behind by earlier bridge demos"; exit 0; fi
	for pid in $left; do remove_run "$pid"; echo "demo.sh: removed the namespaces and files of bridge demo run $pid"; done
	exit 0
fi
if [ "$MODE" != bridge ]; then echo "demo: mode $MODE is not available here (try: bridge)" >&2; exit 2; fi
[ "$(id -u)" = 0 ] || { echo "demo: run as root (it creates network namespaces)" >&2; exit 1; }

P=$PREFIX$$
NODE=$P-node OUT=$P-outside C1=$P-c1 C2=$P-c2
WORK=$(mktemp -d "/tmp/$P.XXXXXX")
cleanup() {
	set +e
	if [ -f "$WORK/conf-c1.json" ] && grep -q "^$NODE" <<<"$(ip netns list 2>/dev/null)"; then
		for c in c1 c2; do cni DEL $c "$P-$c" >/dev/null 2>&1; done
	fi
	remove_run $$
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$WORK/www"

say "A node (netns $NODE, 192.0.2.2) and the outside world (netns $OUT, 192.0.2.1)"
for n in $NODE $OUT $C1 $C2; do ip netns add "$n"; done
# Both ends are made inside the namespaces: no name in the machine's own.
ip link add eth0 netns $NODE type veth peer name eth0 netns $OUT
in_ns $NODE ip addr add 192.0.2.2/24 dev eth0
in_ns $OUT ip addr add 192.0.2.1/24 dev eth0
for n in $NODE $OUT $C1 $C2; do in_ns "$n" ip link set lo up; done
in_ns $NODE ip link set eth0 up
in_ns $OUT ip link set eth0 up

# cni CMD ID NETNS: call berth-bridge as a runtime would (CNI env + config on stdin).
cni() {
	in_ns $NODE env CNI_COMMAND="$1" CNI_CONTAINERID="$2" CNI_NETNS="/var/run/netns/$3" \
		CNI_IFNAME=eth0 CNI_PATH="$BIN" "$BIN/berth-bridge" <"$WORK/conf-$2.json"
}

# conf ID [PORTS]: the network config a runtime would pass for container ID.
conf() {
	local rc=""
	[ -n "${2:-}" ] && rc=",\"runtimeConfig\":{\"portMappings\":[$2]}"
	cat >"$WORK/conf-$1.json" <<JSON
{"cniVersion":"1.1.0","name":"demo","type":"berth-bridge","bridge":"berth0","isDefaultGateway":true,
 "stateDir":"$WORK/state","ipam":{"type":"berth-ipam","dataDir":"$WORK/ipam","ranges":[[{"subnet":"10.88.0.0/24"}]]}$rc}
JSON
}
conf c1 '{"hostPort":8080,"containerPort":80,"protocol":"tcp"}'
conf c2

add() {
	local out
	out=$(cni ADD "$1" "$2") || { echo "$out" >&2; echo "demo: ADD $1 failed" >&2; exit 1; }
	echo "$out" | grep -o '"address": "[^"/]*' | head -1 | cut -d'"' -f4
}

# ping_all FROM IP: three pings, all answered, or the demo fails.
ping_all() {
	local out
	out=$(in_ns "$1" ping -c 3 -W 2 "$2") || true
	echo "$out"
	# A here-string, not echo into grep -q: bash's echo writes line by
	# line, and one written after grep -q matched and left dies of SIGPIPE,
	# which pipefail makes the pipeline's failure (1 in 2000 here).
	grep -Eq '3 packets transmitted, 3 (packets )?received' <<<"$out" || { echo "demo: ping from $1 to $2 lost packets" >&2; exit 1; }
}

say "berth-bridge ADD: two containers on network 'demo' (10.88.0.0/24), c1 publishes 8080->80"
IP1=$(add c1 $C1)
IP2=$(add c2 $C2)
echo "c1 = $IP1, c2 = $IP2"
in_ns $C1 ip -br addr show eth0

say "c1 pings c2, and the outside world"
ping_all $C1 "$IP2"
ping_all $C1 192.0.2.1

say "c1 serves HTTP on :80; the outside world fetches it through the node's published port 8080"
echo "hello from the berth container $IP1" >"$WORK/www/index.html"
ip netns exec $C1 busybox httpd -f -p 80 -h "$WORK/www" >"$WORK/httpd.log" 2>&1 &
disown # cleanup kills it with the namespace's processes; no job report
# wait until it listens, then fetch (each must answer, or the demo fails)
for _ in $(seq 50); do in_ns $C1 busybox wget -qO /dev/null http://127.0.0.1/ 2>/dev/null && break; sleep 0.1; done
in_ns $OUT busybox wget -qO- http://192.0.2.2:8080/
say "... and from the node itself over localhost"
in_ns $NODE busybox wget -qO- http://127.0.0.1:8080/

say "The rules berth installed (iptables, in the node namespace only)"
in_ns $NODE iptables-save -t nat | grep BERTH | head -20

say "DEL both containers: nothing is left"
cni DEL c1 $C1 && cni DEL c2 $C2
left=$(in_ns $NODE iptables-save | grep -c BERTH || true)
echo "BERTH rules left: $left; addresses reserved: $(ls "$WORK/ipam/demo" | grep -c '^10\.' || true)"
[ "$left" = 0 ] || { echo "demo: rules left behind" >&2; exit 1; }
echo "demo finished"
