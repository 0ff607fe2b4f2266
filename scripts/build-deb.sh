#!/usr/bin/env bash
# Builds the Debian package: the release binary, its man page and shell completions (from
# the binary's own CLI definition), the systemd units with the packaged binary's path, then
# `cargo deb --no-build`. Prints the path of the .deb.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked >&2
assets=target/deb-assets
rm -rf "$assets"
mkdir -p "$assets/units"
bin=target/release/partwarden
"$bin" --generate man | gzip -9n > "$assets/partwarden.1.gz"
gzip -9n < packaging/changelog > "$assets/changelog.Debian.gz"
"$bin" --generate bash > "$assets/partwarden.bash"
"$bin" --generate zsh > "$assets/_partwarden"
"$bin" --generate fish > "$assets/partwarden.fish"
for u in systemd/*.service systemd/*.timer; do
    sed 's#/usr/local/bin/partwarden#/usr/bin/partwarden#g' "$u" > "$assets/units/$(basename "$u")"
done
cargo deb --no-build 2>&1 | tail -n 1
