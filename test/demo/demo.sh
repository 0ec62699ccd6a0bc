#!/usr/bin/env bash
# berth demo. Everything happens inside network namespaces this script
# creates (prefix berth-demo-) and removes on exit, even on failure; the
# machine's own namespace is never touched.
#
#   test/demo/demo.sh [bridge]   single node: two containers, outside world, a published port
#   test/demo/demo.sh clean      remove what an interrupted run left
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=$PWD/bin
MODE=${1:-bridge}
P=berth-demo
WORK=/tmp/$P
NODE=$P-node OUT=$P-outside C1=$P-c1 C2=$P-c2

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
in_ns() { local n=$1; shift; ip netns exec "$n" "$@"; }

cleanup() {
	set +e
	for pidf in "$WORK"/*.pid; do [ -f "$pidf" ] && kill "$(cat "$pidf")" 2>/dev/null; done
	if [ -f "$WORK/conf.json" ] && ip netns list | grep -q "^$NODE"; then
		for c in c1 c2; do cni DEL $c "$P-$c" >/dev/null 2>&1; done
	fi
	for n in $C1 $C2 $NODE $OUT; do ip netns del "$n" 2>/dev/null; done
	rm -rf "$WORK"
}

# cni CMD ID NETNS: call berth-bridge as a runtime would (CNI env + config on stdin).
cni() {
	in_ns $NODE env CNI_COMMAND="$1" CNI_CONTAINERID="$2" CNI_NETNS="/var/run/netns/$3" \
		CNI_IFNAME=eth0 CNI_PATH="$BIN" "$BIN/berth-bridge" <"$WORK/conf-$2.json"
}

if [ "$MODE" = clean ]; then cleanup; exit 0; fi
if [ "$MODE" != bridge ]; then echo "demo: mode $MODE is not available yet (try: bridge)" >&2; exit 2; fi
[ "$(id -u)" = 0 ] || { echo "demo: run as root (it creates network namespaces)" >&2; exit 1; }
cleanup
trap cleanup EXIT
mkdir -p "$WORK/www"

say "A node (netns $NODE, 192.0.2.2) and the outside world (netns $OUT, 192.0.2.1)"
for n in $NODE $OUT $C1 $C2; do ip netns add "$n"; done
ip link add $P-a netns $NODE type veth peer name $P-b netns $OUT
in_ns $NODE ip link set $P-a name eth0
in_ns $OUT ip link set $P-b name eth0
in_ns $NODE ip addr add 192.0.2.2/24 dev eth0
in_ns $OUT ip addr add 192.0.2.1/24 dev eth0
for n in $NODE $OUT $C1 $C2; do in_ns "$n" ip link set lo up; done
in_ns $NODE ip link set eth0 up
in_ns $OUT ip link set eth0 up

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
touch "$WORK/conf.json"

add() {
	local out
	out=$(cni ADD "$1" "$2") || { echo "$out" >&2; echo "demo: ADD $1 failed" >&2; exit 1; }
	echo "$out" | grep -o '"address": "[^"/]*' | head -1 | cut -d'"' -f4
}

say "berth-bridge ADD: two containers on network 'demo' (10.88.0.0/24), c1 publishes 8080->80"
IP1=$(add c1 $C1)
IP2=$(add c2 $C2)
echo "c1 = $IP1, c2 = $IP2"
in_ns $C1 ip -br addr show eth0

say "c1 pings c2, and the outside world"
in_ns $C1 ping -c 2 -W 2 "$IP2"
in_ns $C1 ping -c 2 -W 2 192.0.2.1

say "c1 serves HTTP on :80; the outside world fetches it through the node's published port 8080"
echo "hello from the berth container $IP1" >"$WORK/www/index.html"
# Not through in_ns: a shell function in the background is a subshell, and
# $! would be its pid, not httpd's (cleanup would leave httpd running).
ip netns exec $C1 busybox httpd -f -p 80 -h "$WORK/www" >"$WORK/httpd.log" 2>&1 &
echo $! >"$WORK/httpd.pid"
sleep 0.3
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
