"""Writer for `valkey-dr drill --clients` (protocol: ../README.md) on redis-py or its fork
valkey-py: `writer.py redis` or `writer.py valkey` (the module to import; same API)."""

import importlib
import json
import os
import signal
import sys
import time

lib = importlib.import_module(sys.argv[1] if len(sys.argv) > 1 else "redis")
ExponentialBackoff = importlib.import_module(lib.__name__ + ".backoff").ExponentialBackoff
Retry = importlib.import_module(lib.__name__ + ".retry").Retry
exceptions = importlib.import_module(lib.__name__ + ".exceptions")
ConnectionError, ReadOnlyError, TimeoutError = (
    exceptions.ConnectionError, exceptions.ReadOnlyError, exceptions.TimeoutError)
ClientError = getattr(exceptions, "ValkeyError", None) or exceptions.RedisError


def now_ms():
    return int(time.time() * 1000)


class Stop(Exception):
    pass


def on_term(*_):
    raise Stop()


def client(settings):
    common = dict(
        host=os.environ["VALKEY_DR_HOST"],
        port=int(os.environ["VALKEY_DR_PORT"]),
        username=os.environ.get("VALKEY_DR_USER") or None,
        password=os.environ.get("VALKEY_DR_PASSWORD") or None,
    )
    if settings == "default":
        return lib.Redis(**common)
    # A demoted primary answers READONLY on a connection that still works: listing ReadOnlyError
    # among the retried errors makes the library drop that connection and connect again, which
    # resolves the name again. Timeouts bound a stalled node.
    return lib.Redis(
        **common,
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.01), retries=20),
        retry_on_error=[ReadOnlyError, ConnectionError, TimeoutError],
    )


def main():
    signal.signal(signal.SIGTERM, on_term)
    key = os.environ["VALKEY_DR_KEY"]
    deadline = time.monotonic() + float(os.environ["VALKEY_DR_SECONDS"])
    r = client(os.environ.get("VALKEY_DR_SETTINGS", "default"))
    seq = acked = readonly = other = 0
    gaps, first_error = [], None
    last_ack = now_ms()
    try:
        while time.monotonic() < deadline:
            try:
                r.rpush(key, seq)
            except ReadOnlyError as e:
                readonly += 1
                first_error = first_error or str(e)
                time.sleep(0.001)
                continue
            except ClientError as e:
                other += 1
                first_error = first_error or f"{type(e).__name__}: {e}"
                time.sleep(0.001)
                continue
            at = now_ms()
            if at - last_ack > 20:
                gaps.append([last_ack, at])
            last_ack = at
            seq += 1
            acked += 1
            if acked == 1:
                print("ready", flush=True)
            time.sleep(0.001)
    except Stop:
        pass
    summary = dict(acked=acked, readonly_errors=readonly, other_errors=other, gaps=gaps,
                   last_ack_ms=last_ack, stopped_ms=now_ms(), first_error=first_error)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    sys.exit(main())
