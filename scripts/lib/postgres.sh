# shellcheck shell=bash
# Throwaway PostgreSQL for tests, the demo and benchmarks. Source this file, then call
# `start_throwaway_postgres`: it installs PostgreSQL with apt when missing, starts a private cluster on a
# free loopback port (as the postgres user when running as root, since postgres refuses to run as root),
# exports DATABASE_URL, and stops and deletes the cluster when the calling script exits.

postgres_bindir() {
    local dir
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$dir/postgres" ] && [ -x "$dir/initdb" ]; then echo "$dir"; return 0; fi
    done
    if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/postgres" ]; then
        pg_config --bindir; return 0
    fi
    return 1
}

ensure_postgres_installed() {
    if postgres_bindir >/dev/null; then return 0; fi
    echo "PostgreSQL server not found; installing it with apt-get (needs root)..." >&2
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: PostgreSQL is not installed and this is not root: run 'sudo apt-get install -y postgresql'," >&2
        echo "       or set DATABASE_URL to an existing server." >&2
        return 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
    postgres_bindir >/dev/null
}

# Installs a Debian package with apt-get (root only), for a tool the tests or scripts need.
install_package() {
    echo "$1 not found; installing it with apt-get (needs root)..." >&2
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: $1 is not installed and this is not root: run 'sudo apt-get install -y $1'." >&2
        return 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >&2 \
        || { DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >&2; }
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()' 2>/dev/null \
        || echo $((20000 + RANDOM % 20000))
}

# Runs a command as the postgres user when we are root, else as ourselves.
as_postgres() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_throwaway_postgres() {
    ensure_postgres_installed || return 1
    local bindir port
    bindir="$(postgres_bindir)"
    ENRICH_PG_DIR="$(mktemp -d /tmp/enrich-pg.XXXXXX)"
    chmod 755 "$ENRICH_PG_DIR"
    if [ "$(id -u)" -eq 0 ]; then chown postgres:postgres "$ENRICH_PG_DIR"; fi
    as_postgres "$bindir/initdb" -D "$ENRICH_PG_DIR/data" -U postgres -A trust --no-sync -E UTF8 >"$ENRICH_PG_DIR/initdb.log" 2>&1 \
        || { cat "$ENRICH_PG_DIR/initdb.log" >&2; return 1; }
    for attempt in 1 2 3 4 5; do
        port="$(free_port)"
        # Throwaway cluster: durability off for speed; never use these settings for real data.
        ENRICH_PG_OPTS="-p $port -k $ENRICH_PG_DIR -c listen_addresses=127.0.0.1 -c max_connections=400 \
-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=256MB"
        if as_postgres "$bindir/pg_ctl" -D "$ENRICH_PG_DIR/data" -l "$ENRICH_PG_DIR/server.log" -w -t 60 start \
            -o "$ENRICH_PG_OPTS" >/dev/null; then
            break
        fi
        port=""
    done
    if [ -z "$port" ]; then cat "$ENRICH_PG_DIR/server.log" >&2; return 1; fi
    # ENRICH_PG_OPTS lets a script stop and start the same server again (scripts/chaos).
    export ENRICH_PG_BINDIR="$bindir" ENRICH_PG_DIR ENRICH_PG_OPTS
    export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable"
    trap stop_throwaway_postgres EXIT
    echo "throwaway PostgreSQL on 127.0.0.1:$port (data in $ENRICH_PG_DIR)" >&2
}

stop_throwaway_postgres() {
    if [ -n "${ENRICH_PG_DIR:-}" ] && [ -d "$ENRICH_PG_DIR/data" ]; then
        as_postgres "$ENRICH_PG_BINDIR/pg_ctl" -D "$ENRICH_PG_DIR/data" -m immediate stop >/dev/null 2>&1 || true
        rm -rf "$ENRICH_PG_DIR"
    fi
}
