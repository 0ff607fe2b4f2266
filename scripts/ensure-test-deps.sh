#!/usr/bin/env bash
# Makes sure what the tests need is here: the PostgreSQL server binaries (initdb, pg_ctl,
# postgres) on PATH, installing Debian's postgresql package when they are missing; a `postgres`
# OS user when running as root (PostgreSQL refuses to run as root); systemd-analyze, to verify
# the unit files; faketime (libfaketime), to run the binary with a host clock that is wrong;
# moto's S3 server (`moto[server]` from PyPI, pinned), the real S3 API of the archive tests;
# DuckDB's Python package (pinned), which reads the Parquet archives in a test; Prometheus
# and promtool (Debian's prometheus package), for the alert rules and the scrape test;
# cargo-deb (crates.io, pinned) and lintian, for the package test.
# Prints what it found.
set -euo pipefail
if ! command -v initdb >/dev/null 2>&1; then
  bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -z "$bindir" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "ensure-test-deps: installing PostgreSQL server binaries" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  fi
  if [ -z "$bindir" ]; then
    echo "ensure-test-deps: no initdb on PATH and cannot install PostgreSQL" >&2
    exit 1
  fi
  # Link into /usr/local/bin so that every later process (cargo test) finds them.
  for b in initdb pg_ctl postgres; do
    ln -sf "$bindir/$b" "/usr/local/bin/$b"
  done
fi
if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
  useradd --system --home-dir /var/lib/postgresql --shell /bin/sh postgres
fi
if ! command -v systemd-analyze >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "ensure-test-deps: installing systemd (for systemd-analyze)" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd >/dev/null
fi
if ! command -v faketime >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "ensure-test-deps: installing faketime" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime >/dev/null
fi
if ! command -v moto_server >/dev/null 2>&1; then
  echo "ensure-test-deps: installing moto[server] (an S3-compatible server) from PyPI" >&2
  python3 -m pip install -q --disable-pip-version-check 'moto[server]==5.2.1' >/dev/null
  hash -r
  if ! command -v moto_server >/dev/null 2>&1; then
    # pip's script directory may not be on PATH: link the script where later processes look.
    bin=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
    ln -sf "$bin/moto_server" /usr/local/bin/moto_server
  fi
fi
if ! command -v promtool >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "ensure-test-deps: installing prometheus (prometheus, promtool)" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  # The package starts its own server; the tests start theirs.
  (systemctl disable --now prometheus || service prometheus stop || pkill -x prometheus) >/dev/null 2>&1 || true
fi
if ! command -v lintian >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "ensure-test-deps: installing lintian" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends lintian >/dev/null
fi
if ! cargo deb --version >/dev/null 2>&1; then
  echo "ensure-test-deps: installing cargo-deb 3.8.0 from crates.io" >&2
  cargo install --quiet --locked cargo-deb --version 3.8.0
fi
if ! python3 -c 'import duckdb' >/dev/null 2>&1; then
  echo "ensure-test-deps: installing duckdb (Python) from PyPI" >&2
  python3 -m pip install -q --disable-pip-version-check 'duckdb==1.4.2' >/dev/null
fi
echo "ensure-test-deps: $(initdb --version); $(systemd-analyze --version | head -n 1); moto $(python3 -c 'import moto; print(moto.__version__)'); duckdb $(python3 -c 'import duckdb; print(duckdb.__version__)'); $(promtool --version 2>&1 | head -n 1)" >&2
