#!/bin/sh
# Entrypoint of the local PostgreSQL stand-in (docker/local/postgres.Dockerfile). What it shares
# with the official image, and all that docker/compose.yaml uses: on an empty PGDATA it makes a
# cluster whose superuser is POSTGRES_USER (default postgres) with POSTGRES_PASSWORD (required),
# creates POSTGRES_DB (default: the user's name), accepts password (scram-sha-256) logins from
# any address and listens on every interface; the server runs as the postgres user.
set -eu

if [ "${1:-}" = postgres ]; then
  if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
  fi

  if [ ! -s "$PGDATA/PG_VERSION" ]; then
    : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set}"
    user=${POSTGRES_USER:-postgres}
    db=${POSTGRES_DB:-$user}
    pwfile=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    initdb --username="$user" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
      --encoding=UTF8 --locale=C.UTF-8 -D "$PGDATA" >/dev/null
    rm -f "$pwfile"
    printf '\nhost all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
    printf "\nlisten_addresses = '*'\n" >>"$PGDATA/postgresql.conf"
    if [ "$db" != postgres ]; then
      # A server on the Unix socket only, so that nothing (nor pg_isready over TCP) sees it.
      pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
      echo 'CREATE DATABASE :"db";' | psql -v ON_ERROR_STOP=1 -v db="$db" -q \
        --username="$user" --dbname=postgres
      pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
    fi
    echo "postgres stand-in: cluster made in $PGDATA (user $user, database $db)"
  fi
fi

exec "$@"
