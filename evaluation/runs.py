"""Which runs a sweep folder holds, and in what state, from the files alone (no torch): the one listing used by
``evaluation.evaluate`` and ``scripts/make_tables.py``, so both count the same committed runs."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def find_runs(root: str | os.PathLike) -> list[Path]:
    """Every committed run directory at or below ``root`` (one holding a ``run.json``), sorted.

    Hidden folders below ``root`` are not descended into: they are the temporary folders of atomic writers (a sweep
    killed while committing an item leaves ``.<item>.<random>/`` holding a finished run.json that is not the item),
    and tool folders such as ``.hydra``. ``evaluate_sweep`` and ``scripts/make_tables.py`` both count runs with this
    one function."""
    root = Path(root)
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]
        if "run.json" in files:
            found.append(Path(folder))
    return sorted(found)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return pid > 0


def run_status(run: Mapping[str, Any]) -> str:
    """A run.json's status as it stands (a missing status means an older, finished run): ``running`` whose process
    (same host, recorded ``pid``) is gone reads as ``interrupted``, since a killed run cannot update its run.json."""
    status = str(run.get("status", "done"))
    if status == "running" and run.get("host") == socket.gethostname() and isinstance(run.get("pid"), int):
        if not _pid_alive(run["pid"]):
            return "interrupted"
    return status
