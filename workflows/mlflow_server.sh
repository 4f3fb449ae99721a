#!/usr/bin/env bash
# A tracking server for many jobs at once: `mlflow server` on 127.0.0.1 backed by a real
# PostgreSQL (Debian's package), artifacts served from a folder on shared disk. sqlite serves
# one process well and many badly ("database is locked" under parallel jobs; README, "Tracking").
#
#   workflows/mlflow_server.sh up [DIR]     # start; prints `export MLFLOW_TRACKING_URI=http://127.0.0.1:PORT`
#   workflows/mlflow_server.sh down [DIR]   # stop both servers and remove what `up` made in DIR
#   workflows/mlflow_server.sh status [DIR]
#
# DIR (default /tmp/simgan-mlflow) holds the database cluster, the logs, the password and the
# pid files. Settings from the environment:
#   SIMGAN_MLFLOW_PORT (5000), SIMGAN_PG_PORT (5433), SIMGAN_MLFLOW_WORKERS (4),
#   SIMGAN_ARTIFACTS (DIR/artifacts: put it on disk every job node sees),
#   MLFLOW (the mlflow executable; default the one on PATH; its Python needs psycopg 3,
#   the `server` extra).
# PostgreSQL listens on 127.0.0.1 only, with a password made at `up` (DIR/pgpass, mode 600);
# as root it runs as the `postgres` user, which Debian's package creates.
set -euo pipefail

cmd=${1:-}
dir=${2:-${SIMGAN_MLFLOW_DIR:-/tmp/simgan-mlflow}}
mport=${SIMGAN_MLFLOW_PORT:-5000}
pport=${SIMGAN_PG_PORT:-5433}
if [ "$cmd" != up ] && [ -f "$dir/ports" ]; then read -r mport pport < "$dir/ports"; fi  # as `up` chose
workers=${SIMGAN_MLFLOW_WORKERS:-4}
artifacts=${SIMGAN_ARTIFACTS:-$dir/artifacts}
mlflow_bin=${MLFLOW:-mlflow}

die() { echo "mlflow_server: $*" >&2; exit 2; }

pg_bin() {  # PostgreSQL's server programs: on PATH, or where Debian's package puts them
    local exe=$1 found
    if found=$(command -v "$exe"); then echo "$found"; return; fi
    found=$(ls -d /usr/lib/postgresql/*/bin/"$exe" 2>/dev/null | sort -V | tail -n 1)
    [ -n "$found" ] || die "$exe not found: install Debian's postgresql (apt-get install postgresql)"
    echo "$found"
}

as_db_user() {  # PostgreSQL refuses to run as root
    if [ "$(id -u)" = 0 ]; then
        id postgres >/dev/null 2>&1 || die "running as root needs the 'postgres' user (Debian's postgresql creates it)"
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

need() {
    command -v "$mlflow_bin" >/dev/null || die "$mlflow_bin not found (set MLFLOW to the mlflow executable)"
    local py
    py=$(head -n 1 "$(command -v "$mlflow_bin")" | sed 's/^#!//')
    "$py" -c "import psycopg" 2>/dev/null || die "the Python of $mlflow_bin lacks psycopg (3): pip install 'simgan[server]'"
    command -v curl >/dev/null || die "curl not found"
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# `up` marks DIR as its own; `down` removes only what `up` made, and only from a marked DIR
MARK=.simgan-mlflow-server
OWNED=(pg run log pgpass ports mlflow.pid "$MARK")

port_taken() {  # something already accepts connections on 127.0.0.1:$1
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

up() {
    need
    local initdb pg_ctl pw uri
    initdb=$(pg_bin initdb)
    pg_ctl=$(pg_bin pg_ctl)
    if running "$dir/mlflow.pid"; then
        echo "export MLFLOW_TRACKING_URI=http://127.0.0.1:$mport"
        return 0
    fi
    if [ -e "$dir" ] && [ ! -f "$dir/$MARK" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ]; then
        die "$dir holds files that are not a tracking server's (no $dir/$MARK): choose an empty or new DIR"
    fi
    port_taken "$mport" && die "port $mport on 127.0.0.1 is taken by another service: set SIMGAN_MLFLOW_PORT to a free port"
    if [ ! -f "$dir/pg/postmaster.pid" ]; then  # (a PostgreSQL of this DIR that runs already is reused)
        port_taken "$pport" && die "port $pport on 127.0.0.1 is taken by another service: set SIMGAN_PG_PORT to a free port"
    fi
    mkdir -p "$dir/run" "$dir/log" "$artifacts"
    touch "$dir/$MARK"
    chmod 700 "$dir"
    echo "$mport $pport" > "$dir/ports"
    if [ ! -f "$dir/pg/PG_VERSION" ]; then
        pw=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
        (umask 077; printf '%s\n' "$pw" > "$dir/pgpass")
        mkdir -p "$dir/pg"
        if [ "$(id -u)" = 0 ]; then
            chown postgres "$dir/pg" "$dir/run" "$dir/log" "$dir/pgpass"
            chmod 711 "$dir"
        fi
        as_db_user "$initdb" -D "$dir/pg" -U simgan --auth=scram-sha-256 --pwfile="$dir/pgpass" \
            --encoding=UTF8 --locale=C >"$dir/log/initdb.log" 2>&1 \
            || { tail -n 20 "$dir/log/initdb.log" >&2; die "initdb failed (log: $dir/log/initdb.log)"; }
    fi
    as_db_user "$pg_ctl" -D "$dir/pg" -l "$dir/log/postgres.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $pport -k $dir/run -c max_connections=200" start >/dev/null \
        || { tail -n 20 "$dir/log/postgres.log" >&2; die "PostgreSQL did not start (log: $dir/log/postgres.log)"; }
    pw=$(cat "$dir/pgpass")
    if ! PGPASSWORD=$pw "$(pg_bin psql)" -h 127.0.0.1 -p "$pport" -U simgan -d postgres -tAc \
            "SELECT 1 FROM pg_database WHERE datname = 'mlflow'" | grep -q 1; then
        PGPASSWORD=$pw "$(pg_bin createdb)" -h 127.0.0.1 -p "$pport" -U simgan mlflow
    fi
    uri="postgresql+psycopg://simgan:$pw@127.0.0.1:$pport/mlflow"
    # its own session, so that `down` stops the server and its workers together
    MLFLOW_DISABLE_TELEMETRY=true setsid "$mlflow_bin" server --backend-store-uri "$uri" \
        --artifacts-destination "$artifacts" --serve-artifacts --host 127.0.0.1 --port "$mport" \
        --workers "$workers" >"$dir/log/mlflow.log" 2>&1 &
    echo $! > "$dir/mlflow.pid"
    for _ in $(seq 180); do
        running "$dir/mlflow.pid" || break  # (a server that died answers no health check of ours)
        if curl -sf "http://127.0.0.1:$mport/health" >/dev/null; then
            echo "export MLFLOW_TRACKING_URI=http://127.0.0.1:$mport"
            return 0
        fi
        sleep 1
    done
    echo "mlflow_server: the tracking server did not come up; log: $dir/log/mlflow.log" >&2
    tail -n 20 "$dir/log/mlflow.log" >&2 || true
    down
    exit 1
}

down() {
    [ -f "$dir/$MARK" ] || die "$dir is not a tracking server made by \`up\` (no $dir/$MARK): nothing stopped or removed"
    if running "$dir/mlflow.pid"; then
        kill -- -"$(cat "$dir/mlflow.pid")" 2>/dev/null || kill "$(cat "$dir/mlflow.pid")" 2>/dev/null || true
        for _ in $(seq 20); do running "$dir/mlflow.pid" || break; sleep 0.5; done
    fi
    if [ -f "$dir/pg/postmaster.pid" ]; then
        as_db_user "$(pg_bin pg_ctl)" -D "$dir/pg" -m fast -w stop >/dev/null 2>&1 || true
    fi
    # what `up` made, by name; the artifacts stay unless they are DIR's own (the default)
    local f
    for f in "${OWNED[@]}"; do rm -rf "${dir:?}/$f"; done
    if [ "$artifacts" = "$dir/artifacts" ]; then rm -rf "${dir:?}/artifacts"; fi
    rmdir "$dir" 2>/dev/null || echo "mlflow_server: left $dir in place (it holds other files)" >&2
}

status() {
    running "$dir/mlflow.pid" || die "no tracking server from $dir"
    curl -sf "http://127.0.0.1:$mport/health" >/dev/null && echo "up: http://127.0.0.1:$mport (PostgreSQL on 127.0.0.1:$pport)"
}

case "$cmd" in
    up) up ;;
    down) down ;;
    status) status ;;
    *) die "usage: $0 up|down|status [DIR]" ;;
esac
