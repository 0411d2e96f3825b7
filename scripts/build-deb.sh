#!/usr/bin/env bash
# Builds the Debian package target/debian/valkey-dr_<version>_<arch>.deb from a built binary
# (default target/release/valkey-dr): the binary, the hardened service unit, the example config
# as /etc/valkey-dr/valkey-dr.toml (a conffile), the docs and the alert rules, dashboard and
# scrape config. dpkg-deb only: no packaging tool to install.
#   scripts/build-deb.sh [BINARY [OUT_DIR]]   (OUT_DIR: default target/debian)
set -euo pipefail
cd "$(dirname "$0")/.."
binary=${1:-target/release/valkey-dr}
[ -x "$binary" ] || { echo "build-deb: no binary at $binary (make build)" >&2; exit 1; }
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
arch=$(dpkg --print-architecture)
stage=${2:-target/debian}/valkey-dr_${version}_${arch}
rm -rf "$stage"
install -D -m 0755 "$binary" "$stage/usr/bin/valkey-dr"
strip --strip-debug "$stage/usr/bin/valkey-dr" 2>/dev/null || true
install -D -m 0644 deploy/debian/valkey-dr.service "$stage/lib/systemd/system/valkey-dr.service"
install -D -m 0640 valkey-dr.toml "$stage/etc/valkey-dr/valkey-dr.toml"
doc=$stage/usr/share/doc/valkey-dr
install -D -m 0644 README.md "$doc/README.md"
install -D -m 0644 ARCHITECTURE.md "$doc/ARCHITECTURE.md"
install -d "$doc/docs" "$doc/examples"
install -m 0644 docs/*.md "$doc/docs/"
install -m 0644 deploy/prometheus/rules.yml deploy/prometheus/prometheus.yml \
  deploy/grafana/valkey-dr.json "$doc/examples/"
# The manual page: every command's --help, as the binary prints it.
man=$stage/usr/share/man/man1
install -d "$man"
{
  echo '.TH VALKEY-DR 1 "" "valkey-dr '"$version"'" "User Commands"'
  echo '.SH NAME'
  echo 'valkey-dr \- one DNS name for the writable Valkey primary across regions'
  echo '.SH DESCRIPTION'
  echo '.nf'
  "$binary" --help | sed 's/\\/\\\\/g; s/^\./\\\&./'
  # Every command the binary lists (its --help "Commands:" section), so the page never lags it.
  for command in $("$binary" --help | awk '/^Commands:/ {on = 1; next} /^$/ {on = 0} on && $1 != "help" {print $1}'); do
    echo
    echo "valkey-dr $command"
    "$binary" "$command" --help | sed 's/\\/\\\\/g; s/^\./\\\&./'
  done
  echo '.fi'
  echo '.SH SEE ALSO'
  echo '/usr/share/doc/valkey-dr/README.md, /usr/share/doc/valkey-dr/docs/'
} | gzip -9n > "$man/valkey-dr.1.gz"
install -d "$stage/DEBIAN"
install -m 0755 deploy/debian/postinst "$stage/DEBIAN/postinst"
echo /etc/valkey-dr/valkey-dr.toml > "$stage/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
cat > "$stage/DEBIAN/control" <<CONTROL
Package: valkey-dr
Version: $version
Architecture: $arch
Maintainer: valkey-dr maintainers <maintainers@valkey-dr.invalid>
Installed-Size: $size
Depends: libc6 (>= 2.34), adduser
Recommends: valkey-server
Section: database
Priority: optional
Description: one DNS name for the writable Valkey primary across regions
 A controller that keeps one DNS name on the writable Valkey (or Redis OSS) primary of a
 cache replicated across two or three regions, moves that primary without losing a write
 (switchover) or after a regional failure (failover), and fences the old one. Runs alone or
 as three controllers on etcd; serves the zone itself or updates BIND, Knot or PowerDNS.
CONTROL
dpkg-deb --root-owner-group --build "$stage" "$stage.deb" >/dev/null
echo "$stage.deb"
