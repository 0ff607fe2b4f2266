#!/usr/bin/env bash
# The Debian package, end to end: build it (scripts/build-deb.sh), check its contents and
# control files, lint it (no lintian error), install it with dpkg on this machine (which runs
# no systemd), run the installed binary, check that the service was neither enabled nor
# started and the configuration is 0640 root:partwarden, then purge it. Run by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "package-test: $*" >&2; exit 1; }

deb=$(scripts/build-deb.sh | tail -n 1)
[ -f "$deb" ] || fail "no package built"
echo "package-test: $deb" >&2
contents=$(dpkg-deb -c "$deb")
for f in ./usr/bin/partwarden \
         ./lib/systemd/system/partwarden.service \
         ./lib/systemd/system/partwarden-bootstrap.service \
         ./lib/systemd/system/partwarden-check.service \
         ./lib/systemd/system/partwarden-check.timer \
         ./etc/partwarden/config.toml \
         ./usr/lib/sysusers.d/partwarden.conf \
         ./usr/share/man/man1/partwarden.1.gz \
         ./usr/share/bash-completion/completions/partwarden \
         ./usr/share/zsh/vendor-completions/_partwarden \
         ./usr/share/fish/vendor_completions.d/partwarden.fish \
         ./usr/share/doc/partwarden/copyright \
         ./usr/share/doc/partwarden/changelog.Debian.gz \
         ./usr/share/partwarden/monitoring/partwarden.rules.yml \
         ./usr/share/partwarden/monitoring/partwarden.dashboard.json; do
    grep -q " $f\$" <<<"$contents" || fail "$f is not in the package"
done
grep -q -- '-rw-r----- 0/0 .* ./etc/partwarden/config.toml$' <<<"$contents" \
    || fail "config.toml is not 0640 in the package"
ctrl=$(mktemp -d)
trap 'rm -rf "$ctrl"' EXIT
dpkg-deb -e "$deb" "$ctrl"
grep -qx /etc/partwarden/config.toml "$ctrl/conffiles" || fail "config.toml is not a conffile"
# Read each file whole before grep looks at it: `grep -q` exits at its first match, and with
# pipefail a writer still writing into the closed pipe (tar, then dpkg-deb) failed the test
# (62 of 300 runs of the piped form did, on one built package).
unit=$(dpkg-deb --fsys-tarfile "$deb" | tar -xO ./lib/systemd/system/partwarden.service)
grep -q '^ExecStart=/usr/bin/partwarden ' <<<"$unit" || fail "the unit does not run /usr/bin/partwarden"
man=$(dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/share/man/man1/partwarden.1.gz | zcat)
grep -qF -- '\-\-bootstrap' <<<"$man" || fail "the man page does not document --bootstrap"

lintian --fail-on error --suppress-tags initial-upload-closes-no-bugs "$deb" 2>&1 \
    | grep -v 'running with root privileges' || true
lintian --fail-on error "$deb" >/dev/null 2>&1 || fail "lintian reports errors"

if [ "$(id -u)" != 0 ]; then
    echo "package-test: not root: built, listed and linted; install test skipped" >&2
    exit 0
fi
[ ! -d /run/systemd/system ] || echo "package-test: note: systemd runs here" >&2
dpkg -i "$deb" >/dev/null
[ "$(stat -c '%a %U:%G' /etc/partwarden/config.toml)" = "640 root:partwarden" ] \
    || fail "installed config.toml is $(stat -c '%a %U:%G' /etc/partwarden/config.toml)"
getent passwd partwarden >/dev/null || fail "no partwarden user"
version=$(/usr/bin/partwarden --version)
grep -Eq '^partwarden [0-9.]+ \(commit [0-9a-f]+' <<<"$version" || fail "--version: $version"
help=$(/usr/bin/partwarden --help)
grep -q -- '--bootstrap' <<<"$help" || fail "--help lacks --bootstrap"
[ ! -e /etc/systemd/system/multi-user.target.wants/partwarden.service ] \
    || fail "the service was enabled"
! pgrep -x partwarden >/dev/null || fail "partwarden is running after install"
# An administrator's own group and mode survive a reinstall (the postinst applies its own on
# the first install only).
chgrp root /etc/partwarden/config.toml
chmod 0600 /etc/partwarden/config.toml
dpkg -i "$deb" >/dev/null
[ "$(stat -c '%a %U:%G' /etc/partwarden/config.toml)" = "600 root:root" ] \
    || fail "a reinstall changed config.toml to $(stat -c '%a %U:%G' /etc/partwarden/config.toml)"
dpkg --purge partwarden >/dev/null
[ ! -e /usr/bin/partwarden ] || fail "the binary is still there after purge"
[ ! -e /etc/partwarden/config.toml ] || fail "the configuration is still there after purge"
echo "package-test: ok ($(dpkg-deb -f "$deb" Package) $(dpkg-deb -f "$deb" Version), $(stat -c %s "$deb") bytes)" >&2
