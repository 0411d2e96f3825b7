#!/usr/bin/env bash
# The AWS shape's event handling end to end on a local moto server (loopback only): a global
# datastore across us-east-1, us-east-2 and us-west-2 (moto's replication groups + scripts/moto_server.py's
# stand-in for the global datastore calls), a Route 53 zone, and `valkey-dr aws handle-event`
# following a promotion. Needs target/venv (make test creates it) and the binary built with
# `--features aws`.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${VALKEY_DR_BIN:-target/debug/valkey-dr}
work=$(mktemp -d)
port=$(target/venv/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
target/venv/bin/python3 scripts/moto_server.py -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
moto_pid=$!
trap 'kill $moto_pid 2>/dev/null; rm -rf "$work"' EXIT
export AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

aws_py() { target/venv/bin/python3 -c "import boto3, sys; $1"; }
zone_id=$(aws_py "
e = lambda r: boto3.client('elasticache', region_name=r)
e('us-east-1').create_replication_group(ReplicationGroupId='vdr-east-1', ReplicationGroupDescription='demo', Engine='valkey', CacheNodeType='cache.r7g.large', NumCacheClusters=2)
e('us-east-1').create_global_replication_group(GlobalReplicationGroupIdSuffix='valkey-dr', PrimaryReplicationGroupId='vdr-east-1')
e('us-east-2').create_replication_group(ReplicationGroupId='vdr-east-2', ReplicationGroupDescription='demo', GlobalReplicationGroupId='ldgnf-valkey-dr', NumCacheClusters=2)
e('us-west-2').create_replication_group(ReplicationGroupId='vdr-west-2', ReplicationGroupDescription='demo', GlobalReplicationGroupId='ldgnf-valkey-dr', NumCacheClusters=2)
z = boto3.client('route53').create_hosted_zone(Name='valkey-dr.internal', CallerReference='demo')
print(z['HostedZone']['Id'].split('/')[-1])")
cat >"$work/aws.toml" <<TOML
global_replication_group_id = "ldgnf-valkey-dr"
hosted_zone_id = "$zone_id"
zone = "valkey-dr.internal"
global_name = "demo"
insync_timeout_secs = 5
TOML
echo '{"Records":[{"EventSource":"aws:sns","Sns":{"Message":"ElastiCache:FailoverComplete : vdr-east-2"}}]}' >"$work/failover.json"
records() {
  aws_py "
for r in boto3.client('route53').list_resource_record_sets(HostedZoneId='$zone_id')['ResourceRecordSets']:
    if r['Type'] in ('CNAME', 'TXT'): print('  ', r['Name'], r['Type'], r['ResourceRecords'][0]['Value'])"
}
step() { printf '\n\033[1m%s\033[0m\n' "$*"; }

step "1. The schedule's reconcile: us-east-1 is primary"
echo "\$ valkey-dr aws reconcile --once --config aws.toml"
"$bin" aws reconcile --once --config "$work/aws.toml" | grep -E '"(reconciled|primary_region|primary_endpoint|epoch|applied)"'
records

step "2. Promote us-east-2 (FailoverGlobalReplicationGroup), then SNS delivers FailoverComplete"
aws_py "boto3.client('elasticache').failover_global_replication_group(GlobalReplicationGroupId='ldgnf-valkey-dr', PrimaryRegion='us-east-2', PrimaryReplicationGroupId='vdr-east-2')"
# ElastiCache sends FailoverComplete once the datastore is available again (the stand-in: 1 s).
aws_py "import time
while boto3.client('elasticache').describe_global_replication_groups(GlobalReplicationGroupId='ldgnf-valkey-dr')['GlobalReplicationGroups'][0]['Status'] != 'available': time.sleep(0.1)"
echo "\$ valkey-dr aws handle-event failover.json --config aws.toml"
"$bin" aws handle-event "$work/failover.json" --config "$work/aws.toml" | grep -E '"(kind|event|source|reconciled|primary_region|primary_endpoint|epoch|applied)"'
records

step "3. The same event again: DNS is already right, nothing changes"
"$bin" aws handle-event "$work/failover.json" --config "$work/aws.toml" | grep -E '"(epoch|applied)"'

# A third region: moto refuses to re-CREATE a record value its journal has seen even when the same
# batch DELETEs the current one (Route 53 itself accepts it), so the demo never flips back.
step "4. Planned promotion to the third region with valkey-dr itself: failover, wait, move the name"
echo "\$ valkey-dr aws promote us-west-2 --config aws.toml"
"$bin" aws promote us-west-2 --config "$work/aws.toml"

step "5. The whole picture"
echo "\$ valkey-dr aws status --config aws.toml"
"$bin" aws status --config "$work/aws.toml"
