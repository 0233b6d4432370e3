#!/usr/bin/env bash
# Build realistic Docker hosts in the local engine and record the engine's raw
# API responses into tests/fixtures/ (see tests/fixtures/README.md).
#
#   bash scripts/make-fixtures.sh [host40|train|all]   (default: all)
#   bash scripts/make-fixtures.sh clean                 (remove leftovers of a failed run)
#   bash scripts/make-fixtures.sh host40-up             (only bring host40 up and wait until it is quiet:
#                                                         the on-wire benchmark's host, in its own engine)
#
# Needs: docker engine (API 1.41), docker-compose v1, python3, busybox-static
# (/bin/busybox). No registry access is needed: every image is built locally
# FROM a busybox rootfs imported as tern-fixture-base:1.
# Everything created is removed again at the end (and at the start, in case a
# previous run failed).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FX=$ROOT/scripts/fixtures
OUT=$ROOT/tests/fixtures
WORK=${FIXTURE_WORK:-/tmp/tern-fixtures}
BASE=tern-fixture-base:1
EVENT_GAP=${EVENT_GAP:-2}
# Image builds and compose projects at once (host40-up); 1 = one after the other.
BUILD_JOBS=${BUILD_JOBS:-1}
export COMPOSE_HTTP_TIMEOUT=120 DOCKER_API_VERSION=1.41 FIXTURE_WORK=$WORK

HOST40_PROJECTS=(shop monitoring iot logging wiki backup)
HOST40_CONTAINERS=(portainer_agent watchtower autoheal debug-shell ota-staged iot-diag)
HOST40_VOLUMES=(edge-config certs-backup scratch firmware-cache iot_backup-staging)
HOST40_NETWORKS=(proxy diag)
TRAIN_PROJECTS=(cms git media home metrics)
TRAIN_CONTAINERS=(dozzle netdata speedtest-once)
TRAIN_VOLUMES=(site-backups music-cache)
TRAIN_NETWORKS=(edge lab)

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

# img TAG  (Dockerfile body without FROM on stdin)
img() {
  local tag=$1
  { echo "FROM $BASE"; cat; } | docker build -q --force-rm -t "$tag" - 2> >(grep -v -e DEPRECATED -e "Install the buildx" -e "docs.docker.com/go/buildx" -e "^$" >&2) >/dev/null
  log "built $tag"
}

# par CMD...: runs CMD in the background, at most BUILD_JOBS at once (now, when
# BUILD_JOBS is 1); par_wait waits for them all and fails if one did.
BG_PIDS=()
par() {
  if ((BUILD_JOBS <= 1)); then "$@"; return; fi
  while (($(jobs -rp | wc -l) >= BUILD_JOBS)); do sleep 0.1; done
  "$@" &
  BG_PIDS+=($!)
}
par_wait() {
  local p failed=0
  for p in "${BG_PIDS[@]}"; do wait "$p" || failed=1; done
  BG_PIDS=()
  return "$failed"
}

# compose HOST PROJECT ARGS...
compose() {
  local host=$1 p=$2; shift 2
  docker-compose --ansi never -p "$p" -f "$FX/$host/$p/docker-compose.yml" "$@" 2>&1 | sed "s/^/    [$p] /" >&2
  return "${PIPESTATUS[0]}"
}

MANIFEST=
rec_init() { MANIFEST=$1; python3 "$FX/record.py" "$MANIFEST" init "$2"; }
# ev "what happened": wait a moment, then record a full snapshot
ev() { sleep "$EVENT_GAP"; python3 "$FX/record.py" "$MANIFEST" step "$1"; }

# crash NAME: SIGKILL the container's main process from the host, like the OOM
# killer or a segfault would. (`docker kill` would mark the container as
# manually stopped, so its restart policy would not apply.)
crash() {
  local pid
  pid=$(docker inspect -f '{{.State.Pid}}' "$1")
  [ "$pid" -gt 0 ] && kill -9 "$pid"
}

# wait until a container with an on-failure policy has stopped restarting
wait_given_up() {
  local deadline=$((SECONDS + 120)) quiet=0
  while ((SECONDS < deadline)); do
    if [ "$(docker inspect -f '{{.State.Status}}' "$1")" = exited ]; then
      quiet=$((quiet + 1)); ((quiet >= 3)) && return 0
    else
      quiet=0
    fi
    sleep 2
  done
  log "warning: $1 is still restarting"
}

wait_exit() { for c in "$@"; do docker wait "$c" >/dev/null; done; }

# wait until no container is in health "starting" (crash loops excluded)
wait_healthy() {
  local deadline=$((SECONDS + ${1:-150})) s
  while ((SECONDS < deadline)); do
    s=$(docker ps -q | xargs -r docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' | grep -c starting || true)
    ((s == 0)) && return 0
    sleep 2
  done
  log "warning: some healthchecks still starting"
}

remove_all() { # projects-array-name containers-array-name volumes-array-name networks-array-name host
  local -n projects=$1 containers=$2 volumes=$3 networks=$4
  local host=$5 p ids
  for p in "${projects[@]}"; do
    ids=$(docker ps -aq --filter "label=com.docker.compose.project=$p")
    [ -n "$ids" ] && docker rm -f $ids >/dev/null
  done
  for p in "${containers[@]}"; do docker rm -f "$p" >/dev/null 2>&1 || true; done
  for p in "${projects[@]}"; do
    ids=$(docker volume ls -q --filter "label=com.docker.compose.project=$p")
    [ -n "$ids" ] && docker volume rm $ids >/dev/null
    ids=$(docker network ls -q --filter "label=com.docker.compose.project=$p")
    [ -n "$ids" ] && docker network rm $ids >/dev/null
  done
  for p in "${volumes[@]}"; do docker volume rm "$p" >/dev/null 2>&1 || true; done
  for p in "${networks[@]}"; do docker network rm "$p" >/dev/null 2>&1 || true; done
  rm -rf "${WORK:?}/$host"
}

# remove every image built on top of the fixture base (by its root layer), then the base
remove_images() {
  local layer ref l refs=()
  layer=$(docker image inspect -f '{{index .RootFS.Layers 0}}' "$BASE" 2>/dev/null) || return 0
  while read -r ref; do
    [ "$ref" = "$BASE" ] && continue
    l=$(docker image inspect -f '{{index .RootFS.Layers 0}}' "$ref" 2>/dev/null) || continue
    [ "$l" = "$layer" ] && refs+=("$ref")
  done < <(docker images --format '{{.Repository}}:{{.Tag}}' | grep -v '<none>')
  ((${#refs[@]})) && docker rmi "${refs[@]}" >/dev/null
  # untagged leftovers (e.g. replaced tags) of ours
  while read -r ref; do
    l=$(docker image inspect -f '{{index .RootFS.Layers 0}}' "$ref" 2>/dev/null) || continue
    [ "$l" = "$layer" ] && docker rmi -f "$ref" >/dev/null 2>&1 || true
  done < <(docker images -q --filter dangling=true)
  docker rmi "$BASE" >/dev/null
}

cleanup_everything() {
  log "cleaning up"
  remove_all HOST40_PROJECTS HOST40_CONTAINERS HOST40_VOLUMES HOST40_NETWORKS host40
  remove_all TRAIN_PROJECTS TRAIN_CONTAINERS TRAIN_VOLUMES TRAIN_NETWORKS train
  remove_images
  rm -rf "$WORK"
}

build_base() {
  local rootfs a
  rootfs=$(mktemp -d)
  mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,etc,tmp,root,var/www/api,var/www/-,var/log,run,home/node,data}
  chmod 1777 "$rootfs/tmp"
  cp /bin/busybox "$rootfs/bin/busybox"
  for a in $(/bin/busybox --list); do
    [ "$a" = busybox ] || ln -s busybox "$rootfs/bin/$a"
  done
  install -m 0755 "$FX/fake-service.sh" "$rootfs/usr/local/bin/fake-service"
  cat > "$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin
postgres:x:999:999::/var/lib/postgresql:/bin/sh
grafana:x:472:0::/home/grafana:/sbin/nologin
node:x:1000:1000::/home/node:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
EOF
  cat > "$rootfs/etc/group" <<'EOF'
root:x:0:
daemon:x:1:
www-data:x:33:
postgres:x:999:
node:x:1000:
nogroup:x:65534:
nobody:x:65534:
EOF
  printf 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\nID=debian\n' > "$rootfs/etc/os-release"
  echo '<html><body>ok</body></html>' > "$rootfs/var/www/index.html"
  for a in health healthz ping metrics api/health -/healthy -/ready; do echo ok > "$rootfs/var/www/$a"; done
  chown 1000:1000 "$rootfs/home/node"
  tar -C "$rootfs" --numeric-owner -c . | docker import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'CMD ["sh"]' -m 'tern fixture base (busybox)' - "$BASE" >/dev/null
  rm -rf "$rootfs"
  log "imported $BASE"
}

finish_manifest() {
  python3 - "$MANIFEST" <<'EOF'
import gzip, json, os, sys
m = sys.argv[1]
d = json.load(open(m))
objdir = os.path.join(os.path.dirname(m), "objects")
n = 0
for s in d["steps"]:
    for k, v in s.items():
        if k == "event":
            continue
        for o in (v if isinstance(v, list) else [v]):
            with gzip.open(os.path.join(objdir, o)) as f:
                json.load(f)
            n += 1
print(f"[verify] {os.path.basename(m)}: {len(d['steps'])} steps, {n} object refs OK", file=sys.stderr)
EOF
}

source "$FX/host40/scenario.sh"
source "$FX/train/scenario.sh"

main() {
  local which=${1:-all}
  command -v busybox >/dev/null || [ -x /bin/busybox ] || { echo "need busybox-static (/bin/busybox)" >&2; exit 1; }
  cleanup_everything
  mkdir -p "$OUT/objects"
  if [ "$which" = all ]; then
    rm -rf "$OUT/objects" "$OUT/host40.json" "$OUT/train.json"
    mkdir -p "$OUT/objects"
  fi
  build_base
  case "$which" in
    host40) run_host40 ;;
    train) run_train ;;
    all) run_host40; run_train ;;
    *) echo "usage: $0 [host40|train|all]" >&2; exit 2 ;;
  esac
  cleanup_everything
  log "done; fixtures: $(du -sh "$OUT" | cut -f1)"
}

# `clean` only removes what a previous (failed) run left behind.
if [ "${1:-}" = clean ]; then cleanup_everything; exit 0; fi
# `host40-up` builds and starts host40 in an empty engine (DOCKER_HOST) and
# leaves it running: whoever started the engine removes it.
if [ "${1:-}" = host40-up ]; then
  command -v busybox >/dev/null || [ -x /bin/busybox ] || { echo "need busybox-static (/bin/busybox)" >&2; exit 1; }
  build_base
  host40_up
  exit 0
fi
main "$@"
