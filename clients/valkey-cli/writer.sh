#!/usr/bin/env bash
# valkey-cli in a shell loop, one connection per write, for `valkey-dr drill --clients`
# (protocol: ../README.md). Every write resolves the name again. valkey-cli has no read timeout:
# the recommended setting bounds each write with coreutils' `timeout`.
set -u
now_ms() { local t=${EPOCHREALTIME/./}; echo $((t / 1000)); }
export REDISCLI_AUTH="${VALKEY_DR_PASSWORD:-}"
user=()
[ -n "${VALKEY_DR_USER:-}" ] && user=(--user "$VALKEY_DR_USER")
bound=()
[ "${VALKEY_DR_SETTINGS:-default}" = recommended ] && bound=(timeout 1)
reply_file=$(mktemp)
seq=0 acked=0 readonly=0 other=0 gaps="" first_error="" stopping=0
last_ack=$(now_ms)
deadline=$(( $(now_ms) + ${VALKEY_DR_SECONDS%.*} * 1000 ))
# The write in flight is ended with the writer: a write may hang forever (no read timeout), and
# a SIGTERM handled before it started (during the loop's own checks) would leave `wait` on it.
cli=""
trap 'stopping=1; [ -n "$cli" ] && kill "$cli" 2>/dev/null' TERM
while [ "$stopping" = 0 ] && [ "$(now_ms)" -lt "$deadline" ]; do
  # In the background, so that SIGTERM is handled even while a write hangs.
  "${bound[@]}" valkey-cli -h "$VALKEY_DR_HOST" -p "$VALKEY_DR_PORT" "${user[@]}" \
    --no-auth-warning RPUSH "$VALKEY_DR_KEY" "$seq" >"$reply_file" 2>&1 &
  cli=$!
  # Told to stop before `cli` named this write: the trap could not end it.
  if [ "$stopping" = 1 ]; then kill "$cli" 2>/dev/null; break; fi
  if ! wait "$cli" && [ "$stopping" = 1 ]; then kill "$cli" 2>/dev/null; break; fi
  reply=$(<"$reply_file")
  if [[ "$reply" =~ ^[0-9]+$ ]]; then
    at=$(now_ms)
    if [ $((at - last_ack)) -gt 20 ]; then gaps="$gaps${gaps:+,}[$last_ack,$at]"; fi
    last_ack=$at seq=$((seq + 1)) acked=$((acked + 1))
    [ "$acked" = 1 ] && echo ready
  else
    case "$reply" in READONLY*) readonly=$((readonly + 1)) ;; *) other=$((other + 1)) ;; esac
    [ -z "$first_error" ] && first_error=$(printf '%s' "${reply:-timed out}" | head -n1 | tr -d '"\\\000-\037')
    sleep 0.001
  fi
done
rm -f "$reply_file"
first_json=null
[ -n "$first_error" ] && first_json="\"$first_error\""
printf '{"acked":%d,"readonly_errors":%d,"other_errors":%d,"gaps":[%s],"last_ack_ms":%d,"stopped_ms":%d,"first_error":%s}\n' \
  "$acked" "$readonly" "$other" "$gaps" "$last_ack" "$(now_ms)" "$first_json"
