// Writer for `valkey-dr drill --clients` (protocol: ../README.md) on a Node.js client:
// `node writer.js ioredis`, `node writer.js iovalkey` (ioredis' fork, same API),
// `node writer.js redis` (node-redis) or `node writer.js @valkey/valkey-glide`. Each library's
// connection sits behind `push(key, value)`.
"use strict";

const env = process.env;
const library = process.argv[2] || "ioredis";
const recommended = (env.VALKEY_DR_SETTINGS || "default") !== "default";
const endpoint = {
  host: env.VALKEY_DR_HOST,
  port: Number(env.VALKEY_DR_PORT),
  username: env.VALKEY_DR_USER || undefined,
  password: env.VALKEY_DR_PASSWORD || undefined,
};
const isReadonly = (err) => String(err && err.message).startsWith("READONLY");
// Cluster mode: the endpoint is a seed; the library reads the slots from it and follows MOVED.
const cluster = env.VALKEY_DR_CLUSTER === "1";
const seed = { host: endpoint.host, port: endpoint.port };
const auth = { username: endpoint.username, password: endpoint.password };

function ioredisCluster(name) {
  const { Cluster } = require(name);
  const redisOptions = recommended ? { ...auth, connectTimeout: 1000, commandTimeout: 1000 } : auth;
  const client = new Cluster([seed], { redisOptions });
  client.on("error", () => {}); // counted per command
  return async (key, value) => client.rpush(key, value);
}

function nodeRedisCluster() {
  const { createCluster } = require("redis");
  const socket = recommended ? { connectTimeout: 1000, socketTimeout: 1000 } : {};
  const client = createCluster({
    rootNodes: [{ socket: { ...seed, ...socket } }],
    defaults: { ...auth, socket },
  });
  client.on("error", () => {}); // counted per command
  const ready = client.connect();
  ready.catch(() => {}); // reported by the push that awaits it
  return async (key, value) => {
    await ready;
    await client.rPush(key, String(value));
  };
}

function ioredis(name) {
  const Redis = require(name);
  const options = recommended
    ? {
        ...endpoint,
        // A demoted primary answers READONLY on a working connection: reconnect (which
        // resolves the name again) and resend the command (2).
        reconnectOnError: (err) => (isReadonly(err) ? 2 : false),
        retryStrategy: (times) => Math.min(times * 20, 500),
        connectTimeout: 1000,
        commandTimeout: 1000,
      }
    : endpoint;
  const redis = new Redis(options);
  redis.on("error", () => {}); // counted per command
  return async (key, value) => {
    try {
      await redis.rpush(key, value);
    } catch (err) {
      // ioredis does not drop a connection whose command timed out (a hung node keeps it open
      // and silent): with the recommended settings, reconnect, which resolves the name again.
      if (recommended && err.message === "Command timed out") redis.disconnect(true);
      throw err;
    }
  };
}

function nodeRedis() {
  const { createClient } = require("redis");
  const options = {
    username: endpoint.username,
    password: endpoint.password,
    socket: recommended
      ? {
          host: endpoint.host,
          port: endpoint.port,
          connectTimeout: 1000,
          // Closes a socket that stays silent this long (a hung node), which reconnects.
          socketTimeout: 1000,
          reconnectStrategy: (retries) => Math.min(retries * 20, 500),
        }
      : { host: endpoint.host, port: endpoint.port },
  };
  let client = null;
  const connect = () => {
    const fresh = createClient(options);
    fresh.on("error", () => {}); // counted per command
    client = fresh;
    const connected = fresh.connect().then(() => fresh);
    connected.catch(() => {}); // reported by the push that awaits it
    return connected;
  };
  let ready = connect();
  return async (key, value) => {
    let current;
    try {
      current = await ready;
    } catch (err) {
      ready = connect(); // a first connection that failed is tried again
      throw err;
    }
    try {
      await current.rPush(key, String(value));
    } catch (err) {
      // node-redis keeps a connection that answers READONLY: with the recommended settings,
      // drop it and connect again, which resolves the name again.
      if (recommended && isReadonly(err) && client === current) {
        current.destroy();
        ready = connect();
      }
      throw err;
    }
  };
}

function glide() {
  const glideLib = require("@valkey/valkey-glide");
  const GlideClient = cluster ? glideLib.GlideClusterClient : glideLib.GlideClient;
  const config = {
    addresses: [{ host: endpoint.host, port: endpoint.port }],
    credentials: endpoint.password
      ? { username: endpoint.username, password: endpoint.password }
      : undefined,
    // Bound a hung node and retry connecting quickly (GLIDE's own defaults: 250 ms per
    // request, its own reconnection backoff).
    ...(recommended
      ? { requestTimeout: 1000, connectionBackoff: { numberOfRetries: 5, factor: 10, exponentBase: 2 } }
      : {}),
  };
  let client = null;
  return async (key, value) => {
    const current = client || (client = GlideClient.createClient(config));
    try {
      await (await current).rpush(key, [String(value)]);
    } catch (err) {
      // GLIDE keeps a connection that answers READONLY (its standalone client does not look for
      // a new primary); a client whose first connection failed stays failed. A new client
      // after an error connects again, which resolves the name again: always for a failed
      // first connection, after any error with the recommended settings.
      const connected = await current.then(() => true, () => false);
      if (client === current && (recommended || !connected)) {
        client = null;
        if (connected) current.then((c) => c.close()).catch(() => {});
      }
      throw err;
    }
  };
}

const push =
  library === "redis"
    ? cluster ? nodeRedisCluster() : nodeRedis()
    : library === "@valkey/valkey-glide"
      ? glide()
      : cluster ? ioredisCluster(library) : ioredis(library);

const key = env.VALKEY_DR_KEY;
const deadline = Date.now() + Number(env.VALKEY_DR_SECONDS) * 1000;
let seq = 0, acked = 0, readonly = 0, other = 0, lastAck = Date.now(), stopping = false;
let firstError = null;
const gaps = [];
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function finish() {
  const summary = {
    acked, readonly_errors: readonly, other_errors: other, gaps,
    last_ack_ms: lastAck, stopped_ms: Date.now(), first_error: firstError,
  };
  process.stdout.write(JSON.stringify(summary) + "\n", () => process.exit(0));
}
process.on("SIGTERM", () => { stopping = true; finish(); });

(async () => {
  while (!stopping && Date.now() < deadline) {
    try {
      await push(key, seq);
      const at = Date.now();
      if (at - lastAck > 20) gaps.push([lastAck, at]);
      lastAck = at;
      seq += 1;
      acked += 1;
      if (acked === 1) process.stdout.write("ready\n");
    } catch (err) {
      if (isReadonly(err)) readonly += 1;
      else other += 1;
      firstError = firstError || String(err && err.message);
    }
    await sleep(1);
  }
  if (!stopping) finish();
})();
