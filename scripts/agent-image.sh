#!/usr/bin/env bash
# Builds the agent image, tern-agent:latest and tern-agent:<version>, on a
# machine with no registry: the agent binary built here (release, agent
# feature alone), on a runtime base made with `docker import` of a root
# filesystem holding exactly the shared libraries `ldd` lists for it, then
# the Dockerfile's `agent-prebuilt` target. Prints the image's size and the
# stripped binary's.
#
#   scripts/agent-image.sh                  build the binary, then the image
#   scripts/agent-image.sh --binary PATH    use a binary built already (with
#                                           the same cargo command)
#   scripts/agent-image.sh --compose        the variant with a compose tool:
#                                           tern-agent:compose, on a Debian
#                                           bookworm root filesystem made by
#                                           mmdebstrap with Debian's
#                                           docker-compose (needs mmdebstrap
#                                           and Debian's package mirror)
#   scripts/agent-image.sh --server         the server image instead:
#                                           tern-server:latest, the server
#                                           role alone (--features server),
#                                           target `server-prebuilt`
#   scripts/agent-image.sh --server --compose
#                                           tern-server:compose, on Debian
#                                           bookworm with PostgreSQL and
#                                           HAProxy too: one image for every
#                                           service of deploy/compose.yaml
#   ... --compose --rootfs-only TAR         make the Debian root filesystem
#                                           of that variant into TAR and
#                                           stop (no binary needed): CI
#                                           makes both while it compiles
#   ... --compose --rootfs TAR              use that root filesystem
#                                           instead of running mmdebstrap
#
# Needs: docker, ldd, tar, gzip; cargo unless --binary is given. The base is
# tagged tern-agent-runtime:local (tern-agent-compose-runtime:local for
# --compose); the images they replace are removed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGE=tern-agent
BASE=tern-agent-runtime:local
# The image's user (the Dockerfile's USER): not root, and no name clash
# with a host user; the engine socket is reached through its group.
AGENT_UID=65532

die() { echo "agent-image: $*" >&2; exit 1; }
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }

binary=
compose=
server=
rootfs=
rootfs_only=
while [ $# -gt 0 ]; do
  case $1 in
    --compose) compose=1; shift ;;
    --server) server=1; shift ;;
    --rootfs) [ $# -ge 2 ] || die "--rootfs needs a path"; rootfs=$2; shift 2 ;;
    --rootfs-only) [ $# -ge 2 ] || die "--rootfs-only needs a path"; rootfs_only=$2; shift 2 ;;
    --binary) [ $# -ge 2 ] || die "--binary needs a path"; binary=$2; shift 2 ;;
    --binary=*) binary=${1#--binary=}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

TAG=latest
ROLE=agent
TARGET=agent-prebuilt
PACKAGES=docker-compose
if [ -n "$server" ]; then
  IMAGE=tern-server
  BASE=tern-server-runtime:local
  ROLE=server
  TARGET=server-prebuilt
  PACKAGES=postgresql,haproxy
fi
if [ -n "$compose" ]; then
  BASE=$IMAGE-compose-runtime:local
  TAG=compose
  command -v mmdebstrap >/dev/null 2>&1 || die "--compose needs mmdebstrap (apt-get install mmdebstrap)"
fi

if [ -n "$rootfs$rootfs_only" ] && [ -z "$compose" ]; then
  die "--rootfs and --rootfs-only are for the --compose variants (the others' base is made from the binary)"
fi

# The Debian root filesystem of a --compose variant: essential packages and
# the variant's, without recommends, documentation or translations.
debian_rootfs() {
  echo "agent-image: making a bookworm root filesystem with $PACKAGES (mmdebstrap)" >&2
  mmdebstrap --quiet --variant=essential --include="$PACKAGES" \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook="echo 'nonroot:x:$AGENT_UID:$AGENT_UID:nonroot:/home/nonroot:/sbin/nologin' >>\"\$1/etc/passwd\"" \
    --customize-hook="echo 'nonroot:x:$AGENT_UID:' >>\"\$1/etc/group\"" \
    --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*' \
    --customize-hook="mkdir -p \"\$1/data\" && chown $AGENT_UID:$AGENT_UID \"\$1/data\" && chmod 0700 \"\$1/data\"" \
    bookworm "$1" >&2 || die "mmdebstrap failed"
}
if [ -n "$rootfs_only" ]; then
  start=$(date +%s)
  debian_rootfs "$rootfs_only"
  echo "agent-image: $rootfs_only: $(stat -c %s "$rootfs_only") B, $(( $(date +%s) - start )) s" >&2
  exit 0
fi
[ -z "$rootfs" ] || [ -f "$rootfs" ] || die "--rootfs $rootfs: no such file"

start=$(date +%s)
for tool in docker ldd tar gzip; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done
docker version --format '{{.Server.Version}}' >/dev/null 2>&1 || die "the Docker engine is not reachable"

if [ -z "$binary" ]; then
  command -v cargo >/dev/null 2>&1 || die "cargo is not installed (or pass --binary PATH)"
  echo "agent-image: building the $ROLE binary (cargo build --release --no-default-features --features $ROLE --bin tern)" >&2
  (cd "$ROOT" && cargo build --release --quiet --no-default-features --features "$ROLE" --bin tern)
  binary=${CARGO_TARGET_DIR:-$ROOT/target}/release/tern
fi
[ -f "$binary" ] || die "$binary: no such file"
[ -x "$binary" ] || die "$binary: not executable"
[ "$(head -c 4 "$binary" | od -An -c | tr -d ' ')" = '177ELF' ] || die "$binary: not an ELF executable"

work=$(mktemp -d "${TMPDIR:-/tmp}/tern-agent-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/ctx" "$work/rootfs" "$work/data/data"

# The context: the binary alone, stripped (the release profile strips
# symbols already; a binary given with --binary may not be).
if command -v strip >/dev/null 2>&1; then
  strip -o "$work/ctx/tern" "$binary"
else
  cp "$binary" "$work/ctx/tern"
fi
chmod 0755 "$work/ctx/tern"
version=$("$work/ctx/tern" --version | awk '{print $2}')
[ -n "$version" ] || die "$binary --version printed no version"
if [ -z "$server" ] && "$work/ctx/tern" --help | grep -qE '^  server '; then
  echo "agent-image: warning: $binary has the server role too (built without --no-default-features --features agent)" >&2
fi

# The runtime base: the libraries ldd lists (the dynamic loader among them,
# linux-vdso is the kernel's), at the paths it lists; or, for --compose, a
# Debian system holding Debian's docker-compose (its Python with it) and
# the same glibc as this build host's bookworm.
libs=$(ldd "$work/ctx/tern" 2>&1) || die "ldd $binary: $libs"
if grep -q 'not found' <<<"$libs"; then
  die "ldd: libraries missing on this host: $(grep 'not found' <<<"$libs" | tr -s ' \t' ' ')"
fi
paths=$(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$libs" | sort -u)
[ -n "$paths" ] || die "ldd lists no shared library for $binary (a static binary needs no base: use FROM scratch)"
for p in $paths; do
  mkdir -p "$work/rootfs$(dirname "$p")"
  cp -L "$p" "$work/rootfs$p"
done
mkdir -p "$work/rootfs/etc" "$work/rootfs/tmp"
chmod 1777 "$work/rootfs/tmp"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:%s:%s:nonroot:/home/nonroot:/sbin/nologin\n' \
  "$AGENT_UID" "$AGENT_UID" >"$work/rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:%s:\n' "$AGENT_UID" >"$work/rootfs/etc/group"
# /etc/hosts first (docker writes it), then DNS; glibc 2.34+ has both built in.
printf 'hosts: files dns\n' >"$work/rootfs/etc/nsswitch.conf"
chmod 0700 "$work/data/data"
# Owners set in the archive, so this runs without root.
tar_opts=(--numeric-owner --sort=name --mtime=@0)
tar -C "$work/rootfs" -cf "$work/base.tar" "${tar_opts[@]}" --owner=0 --group=0 .
tar -C "$work/data" -rf "$work/base.tar" "${tar_opts[@]}" --owner="$AGENT_UID" --group="$AGENT_UID" ./data

if [ -n "$compose" ]; then
  rm -f "$work/base.tar"
  if [ -n "$rootfs" ]; then
    cp "$rootfs" "$work/base.tar"
  else
    debian_rootfs "$work/base.tar"
  fi
  paths="Debian bookworm with $PACKAGES"
fi

old_base=$(docker image inspect --format '{{.Id}}' "$BASE" 2>/dev/null || true)
old_image=$(docker image inspect --format '{{.Id}}' "$IMAGE:$TAG" 2>/dev/null || true)
docker import --message "tern $ROLE runtime: $(echo $paths)" "$work/base.tar" "$BASE" >/dev/null

log=$work/build.log
if ! docker build --force-rm -f "$ROOT/Dockerfile" --target "$TARGET" \
  --build-arg RUNTIME_IMAGE="$BASE" --build-arg AGENT_BINARY=tern \
  -t "$IMAGE:$TAG" -t "$IMAGE:$version${compose:+-compose}" "$work/ctx" >"$log" 2>&1; then
  cat "$log" >&2
  die "docker build failed"
fi
# The binary's stage (the context's copy of it): the image does not need
# it, and a new binary would leave it dangling.
stage=$(awk '/^Step [0-9]+\/[0-9]+ : COPY \$\{AGENT_BINARY\} \/tern$/ { f = 1; next }
  f && /^ ---> [0-9a-f]+$/ { print $2; exit }' "$log")
[ -z "$stage" ] || docker rmi "$stage" >/dev/null 2>&1 || true
# What this run replaced, when nothing else uses it (a running agent keeps its image).
for id in $old_image $old_base; do
  if [ "$id" != "$(docker image inspect --format '{{.Id}}' "$IMAGE:$TAG")" ] &&
    [ "$id" != "$(docker image inspect --format '{{.Id}}' "$BASE")" ]; then
    docker rmi "$id" >/dev/null 2>&1 || true
  fi
done

image_size=$(docker image inspect --format '{{.Size}}' "$IMAGE:$TAG")
binary_size=$(stat -c %s "$work/ctx/tern")
# What a pull costs: registries serve gzip'd layers.
pull_size=$(docker save "$IMAGE:$TAG" | gzip -6 | wc -c)
mb() { awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1e6 }'; }
echo "$IMAGE:$TAG ($IMAGE:$version${compose:+-compose}): image $image_size B ($(mb "$image_size")), gzip'd $pull_size B ($(mb "$pull_size")); stripped $ROLE binary $binary_size B ($(mb "$binary_size")); $(( $(date +%s) - start )) s"
