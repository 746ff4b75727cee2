#!/bin/sh
# Entry point of the e2e's stand-in for the official postgres image (Debian's
# postgresql-15 on a debootstrapped bookworm). It honours what docker-compose.yml uses:
# POSTGRES_USER, POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE, POSTGRES_DB, PGDATA, and
# PGPORT; host connections need a password (scram-sha-256). Like the official image, a
# first argument other than "postgres" (or an option) is run as a command instead.
set -eu

PGBIN=/usr/lib/postgresql/15/bin
export PATH="$PGBIN:$PATH"
export PGDATA="${PGDATA:-/var/lib/postgresql/data}"

case "${1:-postgres}" in
    postgres) [ "$#" -gt 0 ] && shift ;;
    -*) ;;
    *) exec "$@" ;;
esac

if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown -R postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 0700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" postgres "$@"
fi

if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
    POSTGRES_PASSWORD="$(cat "$POSTGRES_PASSWORD_FILE")"
fi
POSTGRES_USER="${POSTGRES_USER:-postgres}"
POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"
PGPORT="${PGPORT:-5432}"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        echo "stand-in postgres: set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE" >&2
        exit 1
    fi
    pwfile="$(mktemp)"
    printf '%s' "$POSTGRES_PASSWORD" > "$pwfile"
    initdb --username="$POSTGRES_USER" --pwfile="$pwfile" --encoding=UTF8 --locale=C.UTF-8 \
        --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    if [ "$POSTGRES_DB" != postgres ]; then
        echo "CREATE DATABASE \"$POSTGRES_DB\" OWNER \"$POSTGRES_USER\"" \
            | postgres --single -D "$PGDATA" postgres >/dev/null
    fi
    echo "stand-in postgres: initialised $PGDATA (user $POSTGRES_USER, database $POSTGRES_DB)"
fi

exec postgres -D "$PGDATA" -c listen_addresses='*' -p "$PGPORT" "$@"
