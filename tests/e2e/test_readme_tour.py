"""The README's tour, run as written: every shell command of its "A five-minute tour"
section, in order, against the five services and the realtime worker started as
processes on real Postgres and Redis. A tour step that stops working fails here, so
the README cannot rot.

What the test supplies is what `make run` would: the services (the tour's `make run`
and realtime-worker lines are checked to be there, then started by the fixtures), the
demo workspace's keys in var/demo-workspace.json, and the addresses (the tour's
127.0.0.1:5005x ports become the processes' free ports). The commands run in a fresh
folder that sees the project's .venv and examples/ as the project root would.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
from pathlib import Path

import pytest

from services.shared.cli import create_workspace
from services.shared.config import DEFAULT_PORTS, Settings
from tests.helpers.realtime import realtime_worker
from tests.helpers.servers import as_processes

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
# Long-running commands the tour asks a reader to start in their own terminals.
SERVER_COMMANDS = ("make run",)


def tour_section(readme: str) -> str:
    """The text of the `## A five-minute tour` section."""
    start = readme.index("## A five-minute tour")
    end = readme.find("\n## ", start + 1)
    return readme[start : end if end != -1 else None]


def shell_blocks(section: str) -> list[str]:
    """The ```sh code blocks of a section, in order (other blocks are output samples)."""
    return re.findall(r"^```sh\n(.*?)^```", section, flags=re.DOTALL | re.MULTILINE)


def tour_script(blocks: list[str], addresses: dict[str, str]) -> tuple[str, list[str]]:
    """One bash script of the tour's commands, make run's ports replaced by `addresses`,
    and the server commands it named (left out: the fixtures run them)."""
    lines: list[str] = []
    servers: list[str] = []
    for block in blocks:
        for line in block.splitlines():
            if line.strip() in SERVER_COMMANDS:
                servers.append(line.strip())
                continue
            for name, port in DEFAULT_PORTS.items():
                line = line.replace(f"127.0.0.1:{port}", addresses[name])
            lines.append(line)
    return "set -euo pipefail\n" + "\n".join(lines) + "\n", servers


def test_the_tour_extraction_keeps_commands_and_swaps_ports() -> None:
    section = "## A five-minute tour\n```sh\nmake run\n```\n```\n  sample output\n```\n"
    section += "```sh\ngrpcurl 127.0.0.1:50054 x \\\n  y\n```\n"
    script, servers = tour_script(shell_blocks(section), {n: f"h:{n}" for n in DEFAULT_PORTS})
    assert servers == ["make run"]
    assert script == "set -euo pipefail\ngrpcurl h:profile x \\\n  y\n"


async def test_every_command_of_the_readme_tour_works(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = shell_blocks(tour_section(readme))
    assert blocks, "the README tour has no ```sh blocks"

    # What `make run` leaves for the CLI: the demo workspace's keys in var/.
    keys = await create_workspace(Settings(database_url=database_url, redis_url=redis_url), "demo")
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "demo-workspace.json").write_text(json.dumps(keys))
    for shared in (".venv", "examples"):
        (tmp_path / shared).symlink_to(ROOT / shared)

    secret_key = {"SYNC_SECRET_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode()}
    async with (
        as_processes(database_url, redis_url, extra_env=secret_key) as addresses,
        realtime_worker(database_url, redis_url, "tour"),
    ):
        script, servers = tour_script(blocks, addresses)
        assert sorted(servers) == sorted(SERVER_COMMANDS), "the tour must start the services"
        env = {
            **os.environ,
            **{f"{name.upper()}_ADDR": address for name, address in addresses.items()},
            "COLUMNS": "200",
        }
        for variable in ("AUDIENCES_KEY", "DATABASE_URL", "REDIS_URL"):
            env.pop(variable, None)
        process = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            script,
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        # A deadline for a hung step, generous for a loaded CI machine (not a timing assert).
        output, _ = await asyncio.wait_for(process.communicate(), timeout=420)
    text = output.decode()
    assert process.returncode == 0, text

    # Each step did what the README says it does.
    assert "accepted=5 duplicates=0 rejected=0" in text  # 1. events sent
    assert "+ audience loyal_pro (create)" in text  # 2. a plan first, then applied
    assert "plan: 8 to create" in text
    assert "email:ada@example.com" in text and "loyal_pro" in text  # 3. the CLI profile
    assert '"value": "ada@example.com"' in text  # 3. grpcurl's GetProfile reply
    assert "member of loyal_pro" in text  # 3. explain
    synced = list((tmp_path / "var" / "tour-sync").glob("*.csv"))  # 4. the sync's file
    assert len(synced) == 1 and "ada@example.com" in synced[0].read_text()
    assert "ada@example.com" in (tmp_path / "var" / "loyal_pro.csv").read_text()  # 4. export
    assert re.search(r"entered\s+big_spenders .*user_id:ada", text), text  # 5. realtime
    assert "scored " in text and "roc_auc" in text  # 6. trained and measured
    top_decile = r"user_id:user-1-\d+\s+│\s+0\.\d+\s+│\s+(9\d|100)\.\d"
    assert re.search(top_decile, text), text  # 6. the top decile with reasons
    chart = tmp_path / "var" / "calibration.png"
    assert chart.exists() or "not written: the PNG chart needs matplotlib" in text
    assert "will_purchase" in text.rsplit("profile_id", 1)[-1]  # 6. a shopper's score
    assert "INVALID_ARGUMENT" in text and "refused, exit code 1" in text  # bad input
