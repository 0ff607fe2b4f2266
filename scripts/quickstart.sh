#!/usr/bin/env bash
# Quickstart: builds partwarden, starts a throwaway PostgreSQL in a temporary directory, runs
# `partwarden --bootstrap` against it twice (the second run is a no-op) and a maintenance pass,
# shows the partitions it made and the --check report, then stops the server and removes
# everything. Nothing outside the temporary
# directory (and ./target) is touched.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-test-deps.sh

cargo build --release --quiet
bin="$PWD/target/release/partwarden"

dir=$(mktemp -d /tmp/partwarden-quickstart-XXXXXX)
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres: "$dir"
cleanup() {
  as_pg pg_ctl -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
as_pg initdb -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C >/dev/null
as_pg pg_ctl -D "$dir/data" -l "$dir/server.log" -w \
  -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null
psql() { command psql -X -q -h 127.0.0.1 -p "$port" -U postgres "$@"; }
psql -d postgres -c "CREATE DATABASE odds"

cat > "$dir/config.toml" <<TOML
[database]
url = "postgresql://postgres@127.0.0.1:$port/odds"

[maintenance]
archive_dir = "$dir/archive"

[[tables]]
name = "public.market_odds_history"
premake = 3
retention = "6 months"
TOML

echo "== partwarden --bootstrap (throwaway PostgreSQL on 127.0.0.1:$port)"
"$bin" --config "$dir/config.toml" --bootstrap
echo
echo "== partwarden --bootstrap again: a no-op"
"$bin" --config "$dir/config.toml" --bootstrap 2>/dev/null
echo
echo "== partwarden --run-once: a maintenance pass (nothing to expire on a fresh database)"
"$bin" --config "$dir/config.toml" --run-once 2>/dev/null
echo
echo "== partitions of market_odds_history, from the catalog"
psql -d odds -c "SELECT c.relname AS partition, pg_get_expr(c.relpartbound, c.oid) AS bounds
                 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = 'market_odds_history'::regclass ORDER BY 1"
psql -d odds -c "SELECT version, name, adopted, applied_at FROM partwarden.schema_migrations"
echo
echo "== partwarden --check: what on-call sees"
"$bin" --config "$dir/config.toml" --check || echo "(--check exit code $?)"
