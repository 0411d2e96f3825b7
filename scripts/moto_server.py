"""moto's server plus the ElastiCache global datastore calls moto does not implement.

valkey-dr's AWS tests and local runs use moto for Route 53, SNS, EC2 and replication groups. moto
has no global datastores, so this adds a small, honest model of them over moto's own replication
groups (the membership and roles live on the groups, as `GlobalReplicationGroupInfo` shows them):

  CreateGlobalReplicationGroup      the named group becomes the PRIMARY member
  CreateReplicationGroup(Global…)   moto itself joins the group as a SECONDARY member
  DescribeGlobalReplicationGroups   members from every region, with roles
  FailoverGlobalReplicationGroup    the named member becomes PRIMARY, the old one SECONDARY
  DisassociateGlobalReplicationGroup / DeleteGlobalReplicationGroup

It is a stand-in, not AWS: failover completes instantly, and errors carry AWS's fault codes but
not every check AWS makes.

Usage: moto_server.py [-H host] [-p port]   (the same arguments as moto_server)
"""

import sys

from moto.core.responses import ActionResult
from moto.elasticache.exceptions import ElastiCacheException
from moto.elasticache.models import elasticache_backends
from moto.elasticache.responses import ElastiCacheResponse
from moto.server import main

# AWS prefixes the suffix a caller chooses with a fixed per-account string.
PREFIX = "ldgnf-"
ENGINE_VERSION = "8.0"


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


def _role(group):
    return getattr(group, "global_replication_group_member_role", "")


def _members(account_id, global_id):
    """(region, group) for every replication group in the global datastore, primary first."""
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
    described = {
        "GlobalReplicationGroupId": global_id,
        "Status": "available",
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
    for _, group in members:
        group.global_replication_group_member_role = "SECONDARY"
    target[0].global_replication_group_member_role = "PRIMARY"
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


for handler in (
    create_global_replication_group,
    describe_global_replication_groups,
    failover_global_replication_group,
    disassociate_global_replication_group,
    delete_global_replication_group,
):
    setattr(ElastiCacheResponse, handler.__name__, handler)

if __name__ == "__main__":
    sys.exit(main())
