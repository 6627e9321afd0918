"""A three-node Redis Cluster on loopback ports for tests: real redis-server processes
(no replicas, nothing persisted), made a cluster with `redis-cli --cluster create`, and
a slot move between nodes while clients keep working."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
import redis
from redis.crc import key_slot

from tests.helpers.backends import free_port
from tests.helpers.waiting import eventually


def _binaries() -> tuple[str, str]:
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        pytest.fail(
            "redis-server and redis-cli must be on PATH for the Redis Cluster test "
            "(scripts/ensure_services.sh installs them where it can)"
        )
    return server, cli


def slot_of(key: str) -> int:
    """The cluster slot of `key` (its hash tag's, when it has one)."""
    return int(key_slot(key.encode()))


@dataclass
class RedisClusterNodes:
    """The running cluster: its nodes' ports; `url` names the first (a seed)."""

    ports: list[int]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, socket_timeout=10)

    def owner(self, slot: int) -> int:
        """The port of the node serving `slot`."""
        with self.node(self.ports[0]) as client:
            for start, end, primary, *_ in client.execute_command("CLUSTER SLOTS"):
                if start <= slot <= end:
                    return int(primary[1])
        raise AssertionError(f"slot {slot} is served by no node")

    def move_slot(self, slot: int, to_port: int) -> int:
        """Move `slot` and its keys to the node on `to_port` while clients keep going;
        returns how many keys moved.

        IMPORTING on the target; then, pipelined on the source so that no other client's
        command runs between them, MIGRATING and one script that moves every key of the
        slot in one MIGRATE. So no client ever finds the slot split between two nodes:
        a script of one workspace (whose keys all share a slot) sees all of them on the
        node it runs on, the source before, the target (by ASK) after. Then the slot's
        new owner on every node. (`redis-cli --cluster reshard` moves keys in batches,
        and a multi-key script meeting a half-moved slot fails: docs/operations.md.)"""
        from_port = self.owner(slot)
        assert from_port != to_port, f"slot {slot} is already on {to_port}"
        with self.node(from_port) as source, self.node(to_port) as target:
            source_id = source.execute_command("CLUSTER MYID").decode()
            target_id = target.execute_command("CLUSTER MYID").decode()
            target.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
            pipe = source.pipeline(transaction=False)
            pipe.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
            pipe.execute_command("EVAL", _MIGRATE_SLOT, 0, slot, "127.0.0.1", to_port)
            moved = int(pipe.execute()[1])
            target.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
            source.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
            for port in self.ports:
                if port not in (from_port, to_port):
                    with self.node(port) as other:
                        other.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
        return moved


# ARGV: slot, target host, target port. Moves every key of the slot in one MIGRATE.
_MIGRATE_SLOT = """
local keys = redis.call('CLUSTER', 'GETKEYSINSLOT', ARGV[1], 100000000)
if #keys == 0 then return 0 end
local args = {'MIGRATE', ARGV[2], ARGV[3], '', 0, 30000, 'KEYS'}
for _, key in ipairs(keys) do args[#args + 1] = key end
redis.call(unpack(args))
return #keys
"""


@asynccontextmanager
async def redis_cluster(nodes: int = 3) -> AsyncIterator[RedisClusterNodes]:
    """`nodes` redis-server processes made one cluster (cluster_state:ok on every
    node); every process is killed on exit."""
    server, cli = _binaries()
    ports = [free_port() for _ in range(nodes)]
    # The cluster bus port is its own (by default port + 10000, past 65535 for most
    # free ports).
    bus_ports = [free_port() for _ in range(nodes)]
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="redis-cluster-") as directory:
        try:
            for port, bus_port in zip(ports, bus_ports, strict=True):
                processes.append(
                    subprocess.Popen(  # noqa: ASYNC220 (starting a server returns at once)
                        [
                            server,
                            "--port",
                            str(port),
                            "--bind",
                            "127.0.0.1",
                            "--cluster-enabled",
                            "yes",
                            "--cluster-port",
                            str(bus_port),
                            "--cluster-config-file",
                            f"{directory}/nodes-{port}.conf",
                            "--dir",
                            directory,
                            "--save",
                            "",
                            "--appendonly",
                            "no",
                            "--daemonize",
                            "no",
                        ],
                        stdout=subprocess.DEVNULL,
                    )
                )
            cluster = RedisClusterNodes(ports)

            async def up(port: int) -> bool:
                try:
                    with cluster.node(port) as client:
                        return bool(client.ping())
                except redis.ConnectionError:
                    return False

            for port in ports:
                await eventually(lambda port=port: up(port), 10, f"redis-server on {port}")
            subprocess.run(  # noqa: ASYNC221 (a one-off setup command, before any client)
                [
                    cli,
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{port}" for port in ports),
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )

            async def ok() -> bool:
                for port in ports:
                    with cluster.node(port) as client:
                        info = client.execute_command("CLUSTER INFO")  # parsed: a dict
                        if info.get("cluster_state") != "ok":
                            return False
                return True

            await eventually(ok, 20, "cluster_state:ok on every node")
            yield cluster
        finally:
            for process in processes:
                process.kill()
            for process in processes:
                process.wait(timeout=10)
