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
from functools import partial
from pathlib import Path

import pytest
import redis
from redis.crc import key_slot

from tests.helpers.backends import free_port
from tests.helpers.waiting import eventually

# Event stream shards the services write and read in the cluster tests: more than one,
# so the shards' streams land on different slots (and nodes).
CLUSTER_SHARDS = 2


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


def _start_node(server: str, directory: Path, port: int, bus_port: int) -> subprocess.Popen[bytes]:
    """One cluster-enabled redis-server on `port` (its bus on `bus_port`: by default
    port + 10000, past 65535 for most free ports), its log in `directory`."""
    # The child keeps its own copy of the log's descriptor.
    with (directory / f"redis-{port}.log").open("wb") as log:
        return subprocess.Popen(
            [
                server,
                *("--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes"),
                *("--cluster-port", str(bus_port)),
                *("--cluster-config-file", f"{directory}/nodes-{port}.conf"),
                *("--dir", str(directory), "--save", "", "--appendonly", "no"),
                *("--daemonize", "no"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def _answers_or_exited(process: subprocess.Popen[bytes], port: int) -> bool:
    """True once the server on `port` answers PING, or once its process has exited."""
    if process.poll() is not None:
        return True
    try:
        with redis.Redis(host="127.0.0.1", port=port, socket_timeout=10) as client:
            return bool(client.ping())
    except redis.ConnectionError:
        return False


async def _start_nodes(
    server: str, directory: Path, nodes: int, processes: list[subprocess.Popen[bytes]]
) -> list[int]:
    """Start `nodes` servers (appended to `processes`) and return their ports once each
    answers PING. A port can be taken between free_port() and the server's bind (by an
    outgoing connection's ephemeral port, say): servers that exit are started again on
    fresh ports, up to three times."""
    for _ in range(3):
        ports = [free_port() for _ in range(nodes)]
        started = [_start_node(server, directory, port, free_port()) for port in ports]
        processes.extend(started)
        for process, port in zip(started, ports, strict=True):
            await eventually(
                partial(_answers_or_exited, process, port), 10, f"redis-server on {port}"
            )
        if all(process.poll() is None for process in started):
            return ports
        for process in started:
            process.kill()
            process.wait(timeout=10)
    logs = [(directory / f"redis-{port}.log").read_text()[-1000:] for port in ports]
    raise AssertionError("redis-server exited at start, three times:\n" + "\n".join(logs))


@asynccontextmanager
async def redis_cluster(nodes: int = 3) -> AsyncIterator[RedisClusterNodes]:
    """`nodes` redis-server processes made one cluster (cluster_state:ok on every
    node); every process is killed on exit."""
    server, cli = _binaries()
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="redis-cluster-") as directory:
        try:
            ports = await _start_nodes(server, Path(directory), nodes, processes)
            cluster = RedisClusterNodes(ports)
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
