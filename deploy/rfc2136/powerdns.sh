#!/usr/bin/env bash
# PowerDNS Authoritative (4.x, any backend that stores TSIG keys and metadata, e.g. gsqlite3).
# Updates are off by default: pdns.conf needs
#   dnsupdate=yes
#   allow-dnsupdate-from=<the controllers' addresses>
# PowerDNS grants a key a whole zone, not names: give valkey-dr a zone of its own (a delegated
# subzone such as valkey-dr.example), as below. Reads follow updates only as fast as the packet
# cache: keep cache-ttl at or below dns.ttl, or a compare-and-swap may see a stale value (it is
# then refused, reported and retried on the next pass — never applied blindly).
set -euo pipefail
zone=valkey-dr.example
pdnsutil create-zone "$zone" "ns1.$zone"
pdnsutil generate-tsig-key valkey-dr hmac-sha256     # prints the base64 secret for tsig-secret
pdnsutil set-meta "$zone" TSIG-ALLOW-DNSUPDATE valkey-dr
pdnsutil set-meta "$zone" ALLOW-DNSUPDATE-FROM 192.0.2.0/24
