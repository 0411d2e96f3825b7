#!/usr/bin/env python3
"""Connects to the writer by its valkey-dr name over TLS and sends PING, verifying the server's
certificate against the writer's own endpoint name: the name's CNAME target.

ElastiCache's certificate names its endpoints (*.<id>.<region>.cache.amazonaws.com), never the
valkey-dr name, so a client that verifies against the name it was given fails. The recipe: resolve
the name to its CNAME target (one hop: the endpoint may itself be a CNAME to a node's name, which
would pin a node and never follow an in-region failover), connect to the target and verify against
it, and resolve again on every reconnect so that a promotion is followed. With redis-py and
dnspython:

    target = dns.resolver.resolve("demo.valkey-dr.internal", "CNAME")[0].target.to_text(True)
    writer = redis.Redis(host=target, port=6379, ssl=True, ssl_check_hostname=True)

Usage: connect-tls.py NAME [--port 6379] [--cacert FILE] [--verify-as HOST]
                           [--dns HOST:PORT] [--connect-to ADDRESS]
  --verify-as   verify against HOST instead of the CNAME target (shows the failure)
  --dns         ask this DNS server for the CNAME (default: the system's, through dig)
  --connect-to  dial ADDRESS instead of the target's address (tests on loopback)
Prints "PONG from <target>" and exits 0, or prints why and exits 1.
"""

import argparse
import socket
import ssl
import subprocess
import sys


def cname_target(name, dns):
    # Exactly one hop (a CNAME query), never the whole chain the system resolver would follow.
    server = []
    if dns is not None:
        host, port = dns.rsplit(":", 1)
        server = [f"@{host}", "-p", port]
    answer = subprocess.run(
        ["dig", "+short", *server, name, "CNAME"],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    if not answer:
        raise LookupError(f"{name} has no CNAME at {dns or 'the system resolver'}")
    return answer[0].rstrip(".")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name")
    parser.add_argument("--port", type=int, default=6379)
    parser.add_argument("--cacert")
    parser.add_argument("--verify-as")
    parser.add_argument("--dns")
    parser.add_argument("--connect-to")
    args = parser.parse_args()

    target = cname_target(args.name, args.dns)
    context = ssl.create_default_context(cafile=args.cacert)  # verifies chain and host name
    address = (args.connect_to or target, args.port)
    try:
        with socket.create_connection(address, timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname=args.verify_as or target) as tls:
                tls.sendall(b"PING\r\n")
                reply = tls.recv(64)
    except ssl.SSLCertVerificationError as e:
        print(f"refused: {e.verify_message} (verified as {args.verify_as or target})")
        return 1
    if not reply.startswith(b"+PONG"):
        print(f"unexpected reply {reply!r} from {target}")
        return 1
    print(f"PONG from {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
