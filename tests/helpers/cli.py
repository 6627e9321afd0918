"""Running the `audiences` console script in tests: a real process with its own
environment and folder, as a user runs it."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
AUDIENCES = str(ROOT / ".venv" / "bin" / "audiences")
if not Path(AUDIENCES).exists():  # an install without the project's .venv layout
    AUDIENCES = "audiences"


@dataclass
class Result:
    """A finished run: exit code, stdout and stderr."""

    code: int
    out: str
    err: str


@dataclass
class Cli:
    """The console script with an environment (addresses, keys) and a working folder."""

    env: dict[str, str]
    cwd: Path

    async def __call__(self, *args: str) -> Result:
        process = await asyncio.create_subprocess_exec(
            AUDIENCES,
            *args,
            cwd=self.cwd,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
        assert process.returncode is not None
        return Result(process.returncode, out.decode(), err.decode())

    async def ok(self, *args: str) -> str:
        """Stdout of a run that must succeed."""
        result = await self(*args)
        assert result.code == 0, (args, result)
        return result.out


def events_file(path: Path, lines: list[dict[str, object]]) -> Path:
    """A JSON-lines file of Segment-shaped events."""
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path
