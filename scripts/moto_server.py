"""moto's server plus the ElastiCache global datastore calls moto does not implement.

valkey-dr's AWS tests and local runs use moto for Route 53, SNS, EC2 and replication groups. moto
has no global datastores, so this adds a small, honest model of them over moto's own replication
groups (the membership and roles live on the groups, as `GlobalReplicationGroupInfo` shows them):

  CreateGlobalReplicationGroup      the named group becomes the PRIMARY member
  CreateReplicationGroup(Global…)   moto itself joins the group as a SECONDARY member; passing a
                                    setting the group inherits from the primary is refused with
                                    InvalidParameterCombination, as AWS documents
  DescribeGlobalReplicationGroups   members from every region, with roles; status `primary-only`
                                    with one member
  FailoverGlobalReplicationGroup    like AWS, not instant: for FAILOVER_SECONDS the datastore is
                                    `modifying` and no member is PRIMARY, then the named member is
  DisassociateGlobalReplicationGroup / DeleteGlobalReplicationGroup

A regional outage can be played: `POST /_valkey_dr/regions/<region>/down` (and `/up`) makes every
request signed for that region answer 503, whichever service it is for.

It is a stand-in, not AWS: errors carry AWS's fault codes but not every check AWS makes.

Usage: moto_server.py [-H host] [-p port]   (the same arguments as moto_server)
"""

import os
import re
import sys
import threading
import time

from moto.core.responses import ActionResult
from moto.elasticache.exceptions import ElastiCacheException
from moto.elasticache.models import elasticache_backends
from moto.elasticache.responses import ElastiCacheResponse
from moto.moto_server.werkzeug_app import DomainDispatcherApplication
from moto.server import main

# AWS prefixes the suffix a caller chooses with a fixed per-account string.
PREFIX = "ldgnf-"
ENGINE_VERSION = "8.0"
FAILOVER_SECONDS = float(os.environ.get("VALKEY_DR_FAILOVER_SECONDS", "1.0"))

# What a group joining a global datastore inherits from the primary (one list for the stand-in
# and the template test).
with open(os.path.join(os.path.dirname(__file__), "..", "deploy", "aws", "joining-group-inherits.txt")) as f:
    INHERITED = tuple(
        line.strip() for line in f if line.strip() and not line.startswith("#")
    )

_lock = threading.Lock()
# global id -> (deadline, the group that becomes PRIMARY)
_failovers = {}
_down_regions = set()


class GlobalReplicationGroupNotFound(ElastiCacheException):
    code = "GlobalReplicationGroupNotFoundFault"

    def __init__(self, global_id):
        super().__init__(f"Global replication group {global_id} not found.")


class ReplicationGroupNotFound(ElastiCacheException):
    code = "ReplicationGroupNotFoundFault"

    def __init__(self, group_id):
        super().__init__(f"Replication group {group_id} not found.")


class InvalidGlobalReplicationGroupState(ElastiCacheException):
    code = "InvalidGlobalReplicationGroupState"


class InvalidParameterCombination(ElastiCacheException):
    code = "InvalidParameterCombination"


def _finish_failovers():
    with _lock:
        now = time.monotonic()
        for global_id, (deadline, target) in list(_failovers.items()):
            if now >= deadline:
                target.global_replication_group_member_role = "PRIMARY"
                del _failovers[global_id]


def _role(group):
    return getattr(group, "global_replication_group_member_role", "")


def _members(account_id, global_id):
    """(region, group) for every replication group in the global datastore, primary first."""
    _finish_failovers()
    found = []
    for region, backend in elasticache_backends[account_id].items():
        for group in backend.replication_groups.values():
            if group.global_replication_group_id == global_id:
                found.append((region, group))
    found.sort(key=lambda m: _role(m[1]) != "PRIMARY")
    return found


def _describe(account_id, global_id, show_members):
    members = _members(account_id, global_id)
    if not members:
        raise GlobalReplicationGroupNotFound(global_id)
    primary = members[0][1]
    if global_id in _failovers:
        status = "modifying"
    elif len(members) == 1:
        status = "primary-only"
    else:
        status = "available"
    described = {
        "GlobalReplicationGroupId": global_id,
        "Status": status,
        "Engine": "valkey",
        "EngineVersion": ENGINE_VERSION,
        "CacheNodeType": primary.cache_node_type,
        "ClusterEnabled": False,
        "TransitEncryptionEnabled": bool(primary.transit_encryption_enabled),
        "AtRestEncryptionEnabled": bool(primary.at_rest_encryption_enabled),
    }
    if show_members:
        described["Members"] = [
            {
                "ReplicationGroupId": group.replication_group_id,
                "ReplicationGroupRegion": region,
                "Role": _role(group),
                "AutomaticFailover": "enabled",
                "Status": "associated",
            }
            for region, group in members
        ]
    return described


def create_global_replication_group(self):
    suffix = self._get_param("GlobalReplicationGroupIdSuffix")
    primary_id = self._get_param("PrimaryReplicationGroupId")
    backend = elasticache_backends[self.current_account][self.region]
    group = backend.replication_groups.get(primary_id)
    if group is None:
        raise ReplicationGroupNotFound(primary_id)
    global_id = PREFIX + suffix
    if _members(self.current_account, global_id):
        raise InvalidGlobalReplicationGroupState(f"{global_id} already exists.")
    group.global_replication_group_id = global_id
    group.global_replication_group_member_role = "PRIMARY"
    return ActionResult(
        {"GlobalReplicationGroup": _describe(self.current_account, global_id, True)}
    )


def describe_global_replication_groups(self):
    global_id = self._get_param("GlobalReplicationGroupId")
    show = self._get_bool_param("ShowMemberInfo", False)
    if global_id:
        groups = [_describe(self.current_account, global_id, show)]
    else:
        ids = sorted(
            {
                g.global_replication_group_id
                for backend in elasticache_backends[self.current_account].values()
                for g in backend.replication_groups.values()
                if g.global_replication_group_id
            }
        )
        groups = [_describe(self.current_account, i, show) for i in ids]
    return ActionResult({"GlobalReplicationGroups": groups})


def failover_global_replication_group(self):
    global_id = self._get_param("GlobalReplicationGroupId")
    region = self._get_param("PrimaryRegion")
    target_id = self._get_param("PrimaryReplicationGroupId")
    members = _members(self.current_account, global_id)
    if not members:
        raise GlobalReplicationGroupNotFound(global_id)
    target = [g for r, g in members if r == region and g.replication_group_id == target_id]
    if not target:
        raise InvalidGlobalReplicationGroupState(
            f"{target_id} in {region} is not a member of {global_id}."
        )
    with _lock:
        if global_id in _failovers:
            raise InvalidGlobalReplicationGroupState(
                f"{global_id} is modifying; a failover is in progress."
            )
        # Like AWS: the old primary is demoted first; for a while no member is PRIMARY.
        for _, group in members:
            group.global_replication_group_member_role = "SECONDARY"
        _failovers[global_id] = (time.monotonic() + FAILOVER_SECONDS, target[0])
    return ActionResult(
        {"GlobalReplicationGroup": _describe(self.current_account, global_id, True)}
    )


def disassociate_global_replication_group(self):
    global_id = self._get_param("GlobalReplicationGroupId")
    group_id = self._get_param("ReplicationGroupId")
    region = self._get_param("ReplicationGroupRegion")
    members = _members(self.current_account, global_id)
    match = [g for r, g in members if r == region and g.replication_group_id == group_id]
    if not match:
        raise InvalidGlobalReplicationGroupState(
            f"{group_id} in {region} is not a member of {global_id}."
        )
    if _role(match[0]) == "PRIMARY":
        raise InvalidGlobalReplicationGroupState(
            "The primary member cannot be disassociated."
        )
    described = _describe(self.current_account, global_id, True)
    match[0].global_replication_group_id = ""
    match[0].global_replication_group_member_role = ""
    return ActionResult({"GlobalReplicationGroup": described})


def delete_global_replication_group(self):
    global_id = self._get_param("GlobalReplicationGroupId")
    members = _members(self.current_account, global_id)
    if not members:
        raise GlobalReplicationGroupNotFound(global_id)
    if len(members) > 1:
        raise InvalidGlobalReplicationGroupState(
            "Disassociate every secondary member before deleting."
        )
    described = _describe(self.current_account, global_id, False)
    members[0][1].global_replication_group_id = ""
    members[0][1].global_replication_group_member_role = ""
    return ActionResult({"GlobalReplicationGroup": described})


_create_replication_group = ElastiCacheResponse.create_replication_group


def create_replication_group(self):
    if self._get_param("GlobalReplicationGroupId"):
        passed = [name for name in INHERITED if self._get_param(name) not in (None, "", [])]
        if passed:
            raise InvalidParameterCombination(
                "A replication group joining a global replication group inherits "
                + ", ".join(passed)
                + " from the primary; do not pass them."
            )
    return _create_replication_group(self)


_dispatch = DomainDispatcherApplication.__call__
_CONTROL = re.compile(r"^/_valkey_dr/regions/([a-z0-9-]+)/(down|up)$")
_SIGNED_REGION = re.compile(r"Credential=[^/]+/\d{8}/([a-z0-9-]+)/")


def dispatch(self, environ, start_response):
    control = _CONTROL.match(environ.get("PATH_INFO", ""))
    if control and environ.get("REQUEST_METHOD") == "POST":
        region, state = control.groups()
        with _lock:
            (_down_regions.add if state == "down" else _down_regions.discard)(region)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"{region} {state}\n".encode()]
    signed = _SIGNED_REGION.search(environ.get("HTTP_AUTHORIZATION", ""))
    if signed and signed.group(1) in _down_regions:
        start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
        return [f"{signed.group(1)} is down\n".encode()]
    return _dispatch(self, environ, start_response)


DomainDispatcherApplication.__call__ = dispatch

for handler in (
    create_replication_group,
    create_global_replication_group,
    describe_global_replication_groups,
    failover_global_replication_group,
    disassociate_global_replication_group,
    delete_global_replication_group,
):
    setattr(ElastiCacheResponse, handler.__name__, handler)

if __name__ == "__main__":
    sys.exit(main())
