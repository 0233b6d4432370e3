#!/usr/bin/env bash
# The held session behind carrier NATs (issue #16), time-compressed.
#
# For each NAT timeout it builds two network namespaces: the agent's, and a
# router that masquerades it (iptables MASQUERADE) with
# nf_conntrack_tcp_timeout_established set to the timeout, mid-stream
# pickup off (nf_conntrack_tcp_loose=0) and packets of forgotten flows
# dropped (ctstate INVALID): a mapping idle that long is silently
# forgotten, as a carrier NAT forgets it. One real `tern server` on this
# host serves them all. Behind each NAT run two agents, each in a namespace
# of its own behind a router of its own: one holds a session (the default)
# with the ping interval off, so its keepalive is what its NAT allows; the
# other polls at 60 s (EDGE_SESSION=off, every interval 60 s), tern's
# async mode as it was.
#
# Time runs SCALE times faster than in the field: a NAT timeout of 5 min is
# 5 min / SCALE here, the agent's first keepalive is 60 s / SCALE, and a
# day is 86,400 s / SCALE. Bytes do not scale: every packet both ways on
# the agent's link (its veth, less 14 B of Ethernet header a frame) is what
# the day costs in the field. The agent's dead-connection timeout (5 s, the
# least EDGE_POLL_TIMEOUT) does not scale, so a lost keepalive is noticed
# later here than it would be (no bytes flow meanwhile).
#
# The agents read an idle Docker engine of the run's own (no bridge, no
# iptables, a data root in the run's directory, in a network namespace of
# its own), so nothing else on this
# machine moves their bytes; AGENT_DOCKER_HOST points them at another.
#
#   sudo scripts/session-nat.sh                 # NATs of 2, 5, 30, 120 min at SCALE 60: 24 min, 8 agents
#   NATS="120 1800" MEASURE=240 sudo scripts/session-nat.sh   # a quick look: 4 min, scaled up to a day
#
# JSON=FILE also writes the figures for scripts/session-nat-chart.py.
#
# Prints a markdown table: per NAT, bytes per idle day held and polling,
# keepalives (or polls) and new TCP connections per day (the router counts
# the agent's SYNs), and the keepalive period learned.
set -euo pipefail
cd "$(dirname "$0")/.."

TERN=${TERN:-target/release/tern}
SCALE=${SCALE:-60}
NATS=${NATS:-"120 300 1800 7200"}
DAY=$((86400 / SCALE))
# How long to measure (default a whole scaled day); a shorter MEASURE is
# scaled up to a day in the table.
MEASURE=${MEASURE:-$DAY}
START=$(( (60 + SCALE - 1) / SCALE ))
ID=tn$$
WORK=$(mktemp -d /tmp/tern-session-nat.XXXXXX)

[ -x "$TERN" ] || { echo "build first: cargo build --release -p tern ($TERN)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces, iptables)" >&2; exit 2; }

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$WORK/dockerd.pid" ] && kill "$(cat "$WORK/dockerd.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  ip netns del "$ID-e" 2>/dev/null || true
  local i=0
  for _ in $NATS $NATS; do
    i=$((i + 1))
    ip netns del "$ID-a$i" 2>/dev/null || true
    ip netns del "$ID-r$i" 2>/dev/null || true
    ip link del "$ID-h$i" 2>/dev/null || true
  done
  [ -n "${KEEP:-}" ] && echo "kept $WORK" >&2 || rm -rf "$WORK"
}
trap cleanup EXIT

if [ -z "${AGENT_DOCKER_HOST:-}" ]; then
  echo '{}' >"$WORK/daemon.json"
  # In a namespace of its own: with --bridge none in the host's namespace
  # dockerd would delete the host engine's docker0.
  ip netns add "$ID-e"
  # nsenter, not `ip netns exec`, which remounts /sys and hides the cgroups.
  nsenter --net="/run/netns/$ID-e" dockerd --config-file "$WORK/daemon.json" --data-root "$WORK/engine" --exec-root "$WORK/exec" \
    --pidfile "$WORK/dockerd.pid" -H "unix://$WORK/docker.sock" --bridge none --iptables=false \
    --ip-masq=false --log-level warn >"$WORK/dockerd.log" 2>&1 &
  for _ in $(seq 300); do docker -H "unix://$WORK/docker.sock" version >/dev/null 2>&1 && break; sleep 0.2; done
  docker -H "unix://$WORK/docker.sock" version >/dev/null || { tail "$WORK/dockerd.log" >&2; exit 1; }
  AGENT_DOCKER_HOST="unix://$WORK/docker.sock"
fi

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("0.0.0.0",0)); print(s.getsockname()[1])')
"$TERN" server --listen "0.0.0.0:$port" --data "$WORK/server" >"$WORK/server.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -s "$WORK/server/admin-token" ] && break; sleep 0.1; done
TOKEN=$(cat "$WORK/server/admin-token")
api() { curl -sk -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' "$@"; }
for _ in $(seq 100); do api "https://127.0.0.1:$port/api/environments" >/dev/null && break; sleep 0.1; done

# Lanes: 1..n hold sessions, n+1..2n poll, lane k and n+k behind the same NAT timeout.
LANES=()
for nat in $NATS; do LANES+=("$nat session"); done
for nat in $NATS; do LANES+=("$nat polling"); done
N=$(echo $NATS | wc -w)
S60=$(( (60 + SCALE - 1) / SCALE ))
i=0
for lane in "${LANES[@]}"; do
  read -r nat mode <<<"$lane"
  i=$((i + 1))
  a=$ID-a$i r=$ID-r$i
  ip netns add "$a"; ip netns add "$r"
  # agent <-> router
  ip link add "$ID-x$i" type veth peer name "$ID-y$i"
  ip link set "$ID-x$i" netns "$a"; ip link set "$ID-y$i" netns "$r"
  ip -n "$a" addr add "10.77.$i.2/30" dev "$ID-x$i"; ip -n "$a" link set "$ID-x$i" up; ip -n "$a" link set lo up
  ip -n "$r" addr add "10.77.$i.1/30" dev "$ID-y$i"; ip -n "$r" link set "$ID-y$i" up
  ip -n "$a" route add default via "10.77.$i.1"
  # the agent's namespace as the generated `docker run` sets it: no TCP timestamps
  ip netns exec "$a" sysctl -qw net.ipv4.tcp_timestamps=0
  # router <-> host
  ip link add "$ID-h$i" type veth peer name "$ID-z$i"
  ip link set "$ID-z$i" netns "$r"
  ip addr add "10.78.$i.1/30" dev "$ID-h$i"; ip link set "$ID-h$i" up
  ip -n "$r" addr add "10.78.$i.2/30" dev "$ID-z$i"; ip -n "$r" link set "$ID-z$i" up; ip -n "$r" link set lo up
  ip netns exec "$r" sysctl -qw net.ipv4.ip_forward=1
  ip netns exec "$r" iptables -t nat -A POSTROUTING -o "$ID-z$i" -j MASQUERADE
  ip netns exec "$r" iptables -A FORWARD -m conntrack --ctstate INVALID -j DROP
  # counts the agent's new connections (no target: it only counts)
  ip netns exec "$r" iptables -A FORWARD -i "$ID-y$i" -p tcp --syn
  ip netns exec "$r" sysctl -qw net.netfilter.nf_conntrack_tcp_loose=0
  ip netns exec "$r" sysctl -qw "net.netfilter.nf_conntrack_tcp_timeout_established=$((nat / SCALE > 0 ? nat / SCALE : 1))"
  if [ "$mode" = session ]; then
    intervals="{\"ping\":0,\"snapshot\":$S60,\"command\":3600}"
  else
    intervals="{\"ping\":$S60,\"snapshot\":$S60,\"command\":$S60}"
  fi
  body="{\"name\":\"nat-$nat-$mode\",\"url\":\"https://10.78.$i.1:$port\",\"intervals\":$intervals}"
  key=$(api -d "$body" "https://127.0.0.1:$port/api/environments" | python3 -c 'import sys,json; print(json.load(sys.stdin)["edge_key"])')
  echo "$key" >"$WORK/key$i"
done

syns() { # the agent's new TCP connections so far
  ip netns exec "$1" iptables -nvxL FORWARD | awk '/tcp flags:/ {print $1; exit}'
}
read_link() { # bytes packets (both ways) on the agent's veth
  ip netns exec "$1" sh -c "cat /sys/class/net/$2/statistics/rx_bytes /sys/class/net/$2/statistics/tx_bytes /sys/class/net/$2/statistics/rx_packets /sys/class/net/$2/statistics/tx_packets" |
    paste -sd' ' | awk '{print $1 + $2 - 14 * ($3 + $4), $3 + $4}'
}

i=0
for lane in "${LANES[@]}"; do
  read -r nat mode <<<"$lane"
  i=$((i + 1))
  mkdir -p "$WORK/agent$i"
  session=on; [ "$mode" = polling ] && session=off
  ip netns exec "$ID-a$i" env -i PATH="$PATH" EDGE_KEY="$(cat "$WORK/key$i")" DATA_PATH="$WORK/agent$i" EDGE_SESSION=$session \
    EDGE_SESSION_KEEPALIVE="$START" EDGE_POLL_TIMEOUT=5 LOG_LEVEL=info DOCKER_HOST="$AGENT_DOCKER_HOST" "$TERN" agent >"$WORK/agent$i.log" 2>&1 &
  pids+=($!)
done
# First contact, then the day.
sleep 10
i=0
for _ in "${LANES[@]}"; do
  i=$((i + 1))
  read_link "$ID-a$i" "$ID-x$i" >"$WORK/start$i"
  syns "$ID-r$i" >"$WORK/syn$i"
  api "https://127.0.0.1:$port/api/environments/$i/usage?days=1" | python3 -c 'import sys,json; print(json.load(sys.stdin)["total"]["polls"])' >"$WORK/polls$i"
done
echo "SCALE $SCALE: one day is $DAY s here; NAT timeouts $NATS s (field), first keepalive ${START} s here ($((START * SCALE)) s in the field)" >&2
sleep "$MEASURE"
lane() { # lane number: bytes polls syns keepalive_s mode
  local i=$1
  read -r b0 _ <"$WORK/start$i"
  read -r b1 _ < <(read_link "$ID-a$i" "$ID-x$i")
  local polls0 polls1 env
  polls0=$(cat "$WORK/polls$i")
  polls1=$(api "https://127.0.0.1:$port/api/environments/$i/usage?days=1" | python3 -c 'import sys,json; print(json.load(sys.stdin)["total"]["polls"])')
  env=$(api "https://127.0.0.1:$port/api/environments/$i" | python3 -c 'import sys,json; e=json.load(sys.stdin); print(e.get("keepalive_s") or 0, e["mode"])')
  echo "$(( (b1 - b0) * DAY / MEASURE )) $(( (polls1 - polls0) * DAY / MEASURE )) $(( ($(syns "$ID-r$i") - $(cat "$WORK/syn$i")) * DAY / MEASURE )) $env"
}
echo
echo "| NAT timeout (field) | held session: bytes per idle day | keepalives per day | new connections per day | keepalive learned (field) | polling at 60 s: bytes per idle day | polls per day | new connections per day |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|"
i=0
rows=()
for nat in $NATS; do
  i=$((i + 1))
  read -r sb sp ss sk smode < <(lane "$i")
  read -r pb pp ps _ _ < <(lane "$((i + N))")
  if [ $((nat % 3600)) = 0 ]; then shown="$((nat / 3600)) h"; else shown="$((nat / 60)) min"; fi
  printf '| %s | %s B | %s | %s | %s s (%s) | %s B | %s | %s |\n' "$shown" "$sb" "$sp" "$ss" "$((sk * SCALE))" "$smode" "$pb" "$pp" "$ps"
  rows+=("{\"nat_s\":$nat,\"session\":{\"bytes_per_day\":$sb,\"keepalives_per_day\":$sp,\"connections_per_day\":$ss,\"keepalive_s\":$((sk * SCALE)),\"mode\":\"$smode\"},\"polling\":{\"bytes_per_day\":$pb,\"polls_per_day\":$pp,\"connections_per_day\":$ps}}")
done
# For scripts/session-nat-chart.py.
if [ -n "${JSON:-}" ]; then
  (IFS=,; echo "{\"scale\":$SCALE,\"measured_s\":$MEASURE,\"rows\":[${rows[*]}]}") >"$JSON"
fi
