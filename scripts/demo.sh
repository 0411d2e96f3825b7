#!/usr/bin/env bash
# The valkey-dr story in one run: two regions, one DNS name, a planned promotion that moves the
# name while writes continue — checked with dig and valkey-cli, the tools an operator would use.
set -euo pipefail

VDR=${VALKEY_DR:-target/release/valkey-dr}
LAB_DIR=${LAB_DIR:-.valkey-dr-lab}
DNS=(@127.0.0.1 -p 5353)
NAME=demo.valkey-dr.live
KEYS=1000

bold() { printf '\n\033[1m%s\033[0m\n' "$*"; }
# valkey-cli over TLS with the lab's CA; the password goes through REDISCLI_AUTH, never argv.
vcli() { REDISCLI_AUTH=$(cat "$LAB_DIR/secrets/valkey-password") valkey-cli --tls --cacert "$LAB_DIR/tls/ca.pem" "$@"; }
run() { printf '\033[2m$ %s\033[0m\n' "$*" >&2; "$@"; }
writer_ip() { dig "${DNS[@]}" +short "$NAME" | tail -n1; }

bold "1. Start the lab: us-east-1 (primary region) and us-east-2, two Valkey nodes each, a 7 ms region link; three sites (us-east-1, us-east-2, witness), each with an etcd member and a controller serving DNS"
"$VDR" lab down --dir "$LAB_DIR" >/dev/null 2>&1 || true
run "$VDR" lab up --dir "$LAB_DIR"

echo "  (every node is TLS-only with the lab's own CA, and requires AUTH; below, vcli = valkey-cli --tls"
echo "   --cacert $LAB_DIR/tls/ca.pem with the password from $LAB_DIR/secrets/valkey-password via REDISCLI_AUTH)"

bold "2. Ask our DNS server where the global name leads (every site answers the same)"
run dig "${DNS[@]}" "$NAME" +noall +answer
run dig "${DNS[@]}" "_valkey-dr.$NAME" TXT +short
run dig @127.0.2.53 -p 5353 "$NAME" +short
run dig "${DNS[@]}" valkey-dr.live NS +short

target=$(writer_ip)
bold "3. Write $KEYS keys through the name (it resolves to $target)"
seq 1 "$KEYS" | sed 's/.*/SET demo:key:& value-&/' | vcli -h "$target" >/dev/null
run vcli -h "$target" GET demo:key:1
run vcli -h 127.0.2.1 INFO replication | grep -E '^(role|master_host|master_link_status|slave_repl_offset)'

bold "4. Promote us-east-2 while a writer keeps writing through the name (pause → catch up → promote → DNS → release → repoint)"
writer_out=$(mktemp)
"$VDR" lab writer --dir "$LAB_DIR" --seconds 3 --prefix demo:writer >"$writer_out" &
writer_pid=$!
sleep 1
run "$VDR" promote us-east-2
wait "$writer_pid"
cat "$writer_out"
rm -f "$writer_out"

bold "5. Ask DNS again: the name now leads to the new writer, and the epoch went up"
run dig "${DNS[@]}" "$NAME" +noall +answer
run dig "${DNS[@]}" "_valkey-dr.$NAME" TXT +short
run dig @127.0.1.53 -p 5353 "$NAME" +short

target=$(writer_ip)
bold "6. Write and read through the name (it resolves to $target)"
run vcli -h "$target" SET demo:after-promotion yes
run vcli -h "$target" GET demo:key:1
present=$(seq 1 "$KEYS" | sed 's/.*/EXISTS demo:key:&/' | vcli -h "$target" | grep -c '^1$' || true)
echo "$present of $KEYS keys written before the promotion are readable through $NAME"
run vcli -h 127.0.1.1 INFO replication | grep -E '^(role|master_host|master_link_status)'

bold "7. The whole picture"
run "$VDR" status --config "$LAB_DIR/valkey-dr.toml"

bold "Look around"
cat <<EOT
  $VDR status --config $LAB_DIR/valkey-dr.toml      roles, links, lag, epoch, DNS
  $VDR events --config $LAB_DIR/valkey-dr.toml -f   the controller's event stream (JSON lines)
  http://127.0.0.1:5354/                            the status page (and /metrics, /api/status, /api/events)
  $VDR promote us-east-1 --config $LAB_DIR/valkey-dr.toml   move the writer back
  dig @127.0.0.1 -p 5353 $NAME                       (the witness's DNS; us-east-1's: @127.0.1.53, us-east-2's: @127.0.2.53)
  REDISCLI_AUTH=\$(cat $LAB_DIR/secrets/valkey-password) valkey-cli --tls --cacert $LAB_DIR/tls/ca.pem -h 127.0.2.1 INFO replication
  $VDR lab down --dir $LAB_DIR                        stop the lab (or: make lab-down)
EOT
if [ "$present" -ne "$KEYS" ]; then
  echo "demo: $((KEYS - present)) keys missing after the promotion" >&2
  exit 1
fi
