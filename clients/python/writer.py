"""Writer for `valkey-dr drill --clients` (protocol: ../README.md) on a Python client:
`writer.py redis` (redis-py), `writer.py valkey` (valkey-py, its fork: same API) or
`writer.py glide` (valkey-glide's asyncio client). Each library sits behind `push(key, value)`."""

import importlib
import json
import os
import signal
import sys
import time


def now_ms():
    return int(time.time() * 1000)


# What the summary reports; SIGTERM prints it from wherever the writer is (a library may be
# blocked on a hung node, or swallow an exception raised inside its own code) and exits.
counts = dict(acked=0, readonly_errors=0, other_errors=0, gaps=[], last_ack_ms=now_ms(),
              first_error=None)


def summary():
    print(json.dumps(dict(counts, stopped_ms=now_ms())), flush=True)


def on_term(*_):
    summary()
    os._exit(0)


ENDPOINT = dict(
    host=os.environ["VALKEY_DR_HOST"],
    port=int(os.environ["VALKEY_DR_PORT"]),
    username=os.environ.get("VALKEY_DR_USER") or None,
    password=os.environ.get("VALKEY_DR_PASSWORD") or None,
)


CLUSTER = os.environ.get("VALKEY_DR_CLUSTER") == "1"


def redis_py(module, recommended):
    lib = importlib.import_module(module)
    exceptions = importlib.import_module(module + ".exceptions")
    failure = getattr(exceptions, "ValkeyError", None) or exceptions.RedisError
    if CLUSTER:
        # The endpoint is a seed: the library reads the slots from it and follows MOVED.
        cluster = importlib.import_module(module + ".cluster")
        client_class = getattr(cluster, "ValkeyCluster", None) or cluster.RedisCluster
        settings = dict(socket_timeout=1.0, socket_connect_timeout=1.0) if recommended else {}
        client = client_class(**ENDPOINT, **settings)
        return (lambda key, value: client.rpush(key, value)), failure
    if not recommended:
        client = lib.Redis(**ENDPOINT)
    else:
        backoff = importlib.import_module(module + ".backoff")
        retry = importlib.import_module(module + ".retry")
        # A demoted primary answers READONLY on a connection that still works: listing
        # ReadOnlyError among the retried errors makes the library drop that connection and
        # connect again, which resolves the name again. Timeouts bound a stalled node.
        client = lib.Redis(
            **ENDPOINT,
            socket_timeout=1.0,
            socket_connect_timeout=1.0,
            retry=retry.Retry(backoff.ExponentialBackoff(cap=0.5, base=0.01), retries=20),
            retry_on_error=[exceptions.ReadOnlyError, exceptions.ConnectionError,
                            exceptions.TimeoutError],
        )
    return (lambda key, value: client.rpush(key, value)), failure


def glide(recommended):
    import asyncio

    import glide as lib

    loop = asyncio.new_event_loop()
    credentials = None
    if ENDPOINT["password"]:
        credentials = lib.ServerCredentials(ENDPOINT["password"], ENDPOINT["username"])
    settings = {}
    if recommended:
        # Bound a hung node and retry connecting quickly (GLIDE's own defaults: 250 ms per
        # request, its own reconnection backoff).
        settings = dict(request_timeout=1000,
                        reconnect_strategy=lib.BackoffStrategy(num_of_retries=5, factor=10,
                                                               exponent_base=2))
    configuration, client_class = (
        (lib.GlideClusterClientConfiguration, lib.GlideClusterClient) if CLUSTER
        else (lib.GlideClientConfiguration, lib.GlideClient))
    config = configuration(
        [lib.NodeAddress(ENDPOINT["host"], ENDPOINT["port"])], credentials=credentials,
        **settings)
    client = None

    def push(key, value):
        nonlocal client
        try:
            if client is None:
                client = loop.run_until_complete(client_class.create(config))
            loop.run_until_complete(client.rpush(key, [str(value)]))
        except lib.GlideError as e:
            # GLIDE keeps a connection that answers READONLY (its standalone client does not
            # look for a new primary): with the recommended settings, a new client after any
            # error connects again, which resolves the name again.
            if recommended and client is not None:
                stale, client = client, None
                try:
                    loop.run_until_complete(asyncio.wait_for(stale.close(), 1.0))
                except Exception:
                    pass
            raise e

    return push, lib.GlideError


def main():
    signal.signal(signal.SIGTERM, on_term)
    library = sys.argv[1] if len(sys.argv) > 1 else "redis"
    recommended = os.environ.get("VALKEY_DR_SETTINGS", "default") == "recommended"
    push, failure = glide(recommended) if library == "glide" else redis_py(library, recommended)
    key = os.environ["VALKEY_DR_KEY"]
    deadline = time.monotonic() + float(os.environ["VALKEY_DR_SECONDS"])
    seq = 0
    while time.monotonic() < deadline:
        try:
            push(key, seq)
        except failure as e:
            # redis-py strips the READONLY prefix and raises its ReadOnlyError.
            if type(e).__name__ == "ReadOnlyError" or "READONLY" in str(e):
                counts["readonly_errors"] += 1
            else:
                counts["other_errors"] += 1
            counts["first_error"] = counts["first_error"] or f"{type(e).__name__}: {e}"
            time.sleep(0.001)
            continue
        at = now_ms()
        if at - counts["last_ack_ms"] > 20:
            counts["gaps"].append([counts["last_ack_ms"], at])
        counts["last_ack_ms"] = at
        seq += 1
        counts["acked"] += 1
        if counts["acked"] == 1:
            print("ready", flush=True)
        time.sleep(0.001)
    summary()


if __name__ == "__main__":
    sys.exit(main())
