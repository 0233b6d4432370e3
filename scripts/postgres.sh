#!/usr/bin/env bash
# A PostgreSQL cluster of its own for tests, benchmarks and trying
# `tern server --database`: Debian's postgresql package, a new cluster in a
# directory, on 127.0.0.1 and a Unix socket in that directory, superuser
# `tern` with trust authentication (loopback and socket only).
#
#   scripts/postgres.sh start DIR [PORT]   prints the admin URL
#   scripts/postgres.sh stop DIR
#
# The test cluster trades durability for speed (fsync off): it is thrown
# away after the run. Don't point a real server at it.
set -euo pipefail

cmd=${1:?start|stop}
dir=$(realpath -m "${2:?directory}")
port=${3:-55432}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$bin/initdb" ] || { echo "postgresql is not installed (apt-get install postgresql)" >&2; exit 1; }

# PostgreSQL refuses to run as root: as root, run it as the package's
# `postgres` user.
as=()
if [ "$(id -u)" = 0 ]; then
  as=(runuser -u postgres --)
fi

case $cmd in
start)
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres: "$dir"
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    "${as[@]}" "$bin/initdb" -D "$dir/data" -U tern --auth=trust -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; exit 1; }
  fi
  "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start \
    -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir \
        -c max_connections=400 -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
        -c shared_buffers=256MB" >/dev/null \
    || { cat "$dir/server.log" >&2; exit 1; }
  echo "postgres://tern@127.0.0.1:$port/postgres"
  ;;
stop)
  [ -f "$dir/data/postmaster.pid" ] && "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
  ;;
*)
  echo "usage: $0 start|stop DIR [PORT]" >&2
  exit 2
  ;;
esac
