#!/usr/bin/env bash
# Installs what valkey-dr's demo and tests need and the machine lacks:
#   valkey-server + valkey-cli (Valkey 8, Debian bookworm-backports), dig + nsupdate (dnsutils),
#   etcd (Debian's etcd-server: the lab runs three members, one per site) and protoc
#   (protobuf-compiler: the etcd client's build generates its gRPC code);
#   with --test also python3 + venv (for the pinned moto server the AWS tests run against),
#   openssl (the TLS client test makes its own certificates), chromium (the status page test),
#   for the client-library drill nodejs + npm (ioredis, iovalkey), php-cli + php-redis + php-predis
#   and iproute2 (its network namespace; the three-host guide test's namespaces),
#   nftables (the chaos nemesis's real packet cuts between the namespaced sites), and
#   for the RFC 2136 tests and bench/dns BIND 9, Knot, PowerDNS (SQLite backend), sqlite3, dnsperf,
#   Prometheus (promtool checks and unit-tests the alert rules, Prometheus scrapes a lab), and
#   systemd-analyze (the package test verifies the service unit).
# Needs root or sudo for apt. Does nothing when everything is present.
set -euo pipefail

missing=()
command -v valkey-server >/dev/null || missing+=(valkey-server)
command -v valkey-cli >/dev/null || missing+=(valkey-tools)
command -v dig >/dev/null || missing+=(dnsutils)
command -v nsupdate >/dev/null || missing+=(dnsutils)
command -v etcd >/dev/null || missing+=(etcd-server)
command -v protoc >/dev/null || missing+=(protobuf-compiler)
if [ "${1:-}" = "--test" ]; then
  command -v python3 >/dev/null || missing+=(python3)
  python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v chromium >/dev/null || missing+=(chromium)
  command -v ip >/dev/null || missing+=(iproute2)
  command -v nft >/dev/null || missing+=(nftables)
  command -v node >/dev/null || missing+=(nodejs)
  command -v npm >/dev/null || missing+=(npm)
  # The client-library drill's PHP writers: phpredis and Predis as Debian packages them.
  command -v php >/dev/null || missing+=(php-cli)
  php -r 'exit(extension_loaded("redis") ? 0 : 1);' 2>/dev/null || missing+=(php-redis)
  [ -e /usr/share/php/Predis/autoload.php ] || missing+=(php-predis)
  # The RFC 2136 provider's tests run against each of these, started by the tests themselves.
  command -v named >/dev/null || missing+=(bind9)
  command -v knotd >/dev/null || missing+=(knot)
  command -v pdns_server >/dev/null || missing+=(pdns-server)
  [ -e /usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql ] || missing+=(pdns-backend-sqlite3)
  command -v sqlite3 >/dev/null || missing+=(sqlite3)
  command -v dnsperf >/dev/null || missing+=(dnsperf)
  command -v promtool >/dev/null || missing+=(prometheus)
  # The package test checks the service unit with systemd-analyze.
  command -v systemd-analyze >/dev/null || missing+=(systemd)
  command -v dpkg-deb >/dev/null || missing+=(dpkg)
fi
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then SUDO=(); elif command -v sudo >/dev/null; then SUDO=(sudo); else
  echo "install-deps: need root or sudo to install: ${missing[*]}" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
if [ "$codename" = bookworm ] && ! grep -rqs "bookworm-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
  # The same mirror and keyring as the machine's own bookworm source (a local mirror stays local).
  source=$(bash "$(dirname "$0")/backports-source.sh" bookworm)
  echo "install-deps: adding the bookworm-backports suite for Valkey 8 ($(echo "$source" | sed -n 's/^URIs: //p'))"
  echo "$source" | "${SUDO[@]}" tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null
fi
echo "install-deps: installing ${missing[*]}"
"${SUDO[@]}" apt-get update -qq
valkey_pkgs=()
for p in "${missing[@]}"; do case $p in valkey-*) valkey_pkgs+=("$p");; esac; done
if [ ${#valkey_pkgs[@]} -gt 0 ]; then
  if [ "$codename" = bookworm ]; then
    "${SUDO[@]}" apt-get install -y -qq -t bookworm-backports "${valkey_pkgs[@]}" >/dev/null
  else
    "${SUDO[@]}" apt-get install -y -qq "${valkey_pkgs[@]}" >/dev/null
  fi
fi
others=()
for p in "${missing[@]}"; do case $p in valkey-*) ;; *) others+=("$p");; esac; done
if [ ${#others[@]} -gt 0 ]; then
  # The DNS servers' packages would start system-wide services that all want port 53; the tests
  # start their own. A policy-rc.d that refuses service starts (Debian's mechanism) keeps them
  # from starting during this install, and is removed again.
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
    "${SUDO[@]}" chmod 755 "$policy"
    trap '"${SUDO[@]}" rm -f "$policy"' EXIT
  fi
  "${SUDO[@]}" apt-get install -y -qq "${others[@]}" >/dev/null
fi
# The Debian packages may start a system-wide valkey on 127.0.0.1:6379 and etcd on 127.0.0.1:2379;
# the lab and the tests do not need them and use their own addresses and ports, so they are left as
# the packages set them up.
valkey-server --version
