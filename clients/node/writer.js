// Writer for `valkey-dr drill --clients` (protocol: ../README.md) on ioredis or its fork
// iovalkey: `node writer.js ioredis` or `node writer.js iovalkey` (the package; same API).
"use strict";
const Redis = require(process.argv[2] || "ioredis");

const env = process.env;
const settings = env.VALKEY_DR_SETTINGS || "default";
const common = {
  host: env.VALKEY_DR_HOST,
  port: Number(env.VALKEY_DR_PORT),
  username: env.VALKEY_DR_USER || undefined,
  password: env.VALKEY_DR_PASSWORD || undefined,
};
const options =
  settings === "default"
    ? common
    : {
        ...common,
        // A demoted primary answers READONLY on a working connection: reconnect (which
        // resolves the name again) and resend the command (2).
        reconnectOnError: (err) => (err.message.startsWith("READONLY") ? 2 : false),
        retryStrategy: (times) => Math.min(times * 20, 500),
        connectTimeout: 1000,
        commandTimeout: 1000,
      };
// ioredis (and iovalkey) does not drop a connection whose command timed out (a hung node keeps it open and
// silent): with the recommended settings the writer reconnects, which resolves the name again.
const reconnectOnTimeout = settings !== "default";

const redis = new Redis(options);
redis.on("error", () => {}); // counted per command below
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
      await redis.rpush(key, seq);
      const at = Date.now();
      if (at - lastAck > 20) gaps.push([lastAck, at]);
      lastAck = at;
      seq += 1;
      acked += 1;
      if (acked === 1) process.stdout.write("ready\n");
    } catch (err) {
      if (String(err.message).startsWith("READONLY")) readonly += 1;
      else other += 1;
      if (reconnectOnTimeout && err.message === "Command timed out") redis.disconnect(true);
      firstError = firstError || String(err.message);
    }
    await sleep(1);
  }
  if (!stopping) finish();
})();
