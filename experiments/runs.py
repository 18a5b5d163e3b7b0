"""Run directories, ``run.json`` and Weights & Biases logging, for the entry points in ``experiments/``.

* :func:`prepare_run_dir` creates a run directory and proves it writable *before* any model is loaded, and refuses
  one that already holds a run; :func:`inside` joins a configured relative path and refuses one that leaves it.
* :class:`RunRecord` accumulates what a run did (config, seeds, checkpoint SHA-256, versions, device, timings, git
  commit) and writes it atomically as ``run.json`` with a ``"status"`` of ``running``, ``done`` or ``failed``.
  A failure is recorded even on a full disk: run.json is then rewritten in place (:meth:`RunRecord.failed`).
* :func:`claim` takes a sweep item for this process (a lock file beside it), so runners sharing a sweep split it.
* :func:`check_writable` proves folders writable before an evaluation computes anything.
* :class:`WandbRun` logs config, numbers, the first-frame image and the video. It is offline unless asked otherwise,
  honours ``WANDB_MODE=disabled``, waits a bounded time for ``wandb.init``, and turns every W&B error into one
  warning: a run never fails or hangs because of W&B.
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

# OutputDirError and OutputWriteError are defined beside the atomic writers and raised from here too
from animatezero.io import (  # noqa: F401
    PARTIAL,
    OutputDirError,
    OutputWriteError,
    atomic_path,
    pid_alive,
    remove_orphans,
    write_json,
)

RUN_JSON = "run.json"
SCHEMA_VERSION = 1
REPO_ROOT = Path(__file__).resolve().parent.parent
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]*$")
NAME_MAX = 255  # the longest file or folder name file systems accept
MAX_ERROR = 1000  # characters of an error kept in run.json
RESERVE = 2 * MAX_ERROR + 512  # spare bytes in a running run.json: the failed record fits in place (RunRecord.write)


def max_name_length() -> int:
    """The longest output name that can still be written atomically: :func:`animatezero.io.atomic_path` writes
    ``.<name>.partial-<host>-<pid>-<8 random>`` beside it first, and that must fit in :data:`NAME_MAX`."""
    return NAME_MAX - len(f".{PARTIAL}{socket.gethostname()}-{2**22}--") - 8


class OutputPathError(ValueError):
    """A configured output path would be written outside its run directory."""


# ------------------------------------------------------------------------------------------------- directories
def prepare_run_dir(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Create ``path`` (and parents) and prove it writable by creating and deleting a file in it.

    Raises :class:`OutputDirError` with the reason and what to do, so a bad ``out_dir`` fails before generation.
    A directory that already holds a ``run.json`` is refused unless ``overwrite``. Temporary entries that a killed
    earlier run left in it (or one level down: a sweep's configuration folders) are removed (:func:`remove_orphans`).
    """
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        raise OutputDirError(
            f"cannot write to the output directory {str(path)!r}: {e.strerror or e}. "
            "Choose a writable one, e.g. out_dir=outputs/my_run (or paths.output_root=... for every run)."
        ) from e
    if not overwrite and (path / RUN_JSON).exists():
        raise OutputDirError(
            f"{str(path)!r} already holds a run ({RUN_JSON}); choose a fresh out_dir or pass overwrite=true"
        )
    remove_orphans(path, depth=1)  # what a killed earlier run (e.g. a sweep's item being committed) left half-written
    return path


def check_name(name: str, what: str) -> str:
    """``name`` as one path component: letters, digits and ``._=+-``, not starting with a dot (no ``..``)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise OutputPathError(
            f"{what} {str(name)[:80]!r} cannot be a directory name: use letters, digits and ._=+- "
            "(not starting with a dot or containing a slash)"
        )
    if len(name) > max_name_length():
        raise OutputPathError(f"{what} {name[:40]!r}... is {len(name)} characters: use at most {max_name_length()}")
    return name


def inside(root: str | os.PathLike, relative: str | os.PathLike, what: str = "output path") -> Path:
    """``root / relative``, refusing absolute paths and any path that resolves outside ``root``."""
    root = Path(root)
    rel = Path(relative)
    if str(relative) in ("", ".") or rel.is_absolute():
        raise OutputPathError(f"{what} {str(relative)!r} must be a relative path inside the run directory {root}")
    target = (root / rel).resolve()
    if not target.is_relative_to(root.resolve()) or target == root.resolve():
        raise OutputPathError(f"{what} {str(relative)!r} leaves the run directory {root}; use a plain file name")
    return root / rel


def distinct_outputs(files: Mapping[str, Path], what: str = "paths.run_files") -> dict[str, Path]:
    """Refuse output paths that collide: two keys naming the same path, or one inside another (a GIF written into
    the frames folder would be deleted when the folder is replaced). Returns ``files``."""
    resolved = {k: Path(os.path.normpath(p)) for k, p in files.items()}
    keys = list(resolved)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            pa, pb = resolved[a], resolved[b]
            if pa == pb:
                raise OutputPathError(
                    f"{what}.{a} and {what}.{b} are the same path {str(pa)!r}; give each its own name"
                )
            inner, outer = (a, b) if pa.is_relative_to(pb) else (b, a) if pb.is_relative_to(pa) else (None, None)
            if inner is not None:
                raise OutputPathError(
                    f"{what}.{inner}={str(resolved[inner])!r} lies inside {what}.{outer}={str(resolved[outer])!r}, "
                    f"which is replaced as a whole when written; put them side by side"
                )
    return dict(files)


# ------------------------------------------------------------------------------------------------- provenance
def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def animatezero_version() -> str:
    """The installed distribution's version, else the source tree's pyproject version."""
    installed = _version("animatezero")
    if installed:
        return installed
    try:
        import tomllib

        data = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
        return f"{data['project']['version']} (source tree)"
    except (OSError, KeyError, ValueError):
        return "unknown"


def git_info(repo: str | os.PathLike = REPO_ROOT) -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the source checkout, or None outside git (an installed wheel)."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def environment(device: str | None = None) -> dict[str, Any]:
    """Versions (python, torch, animatezero, ...), the host, and the device's name."""
    import torch

    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "animatezero": animatezero_version(),
        "cuda": torch.version.cuda,
    }
    for dist in ("numpy", "safetensors", "hydra-core", "omegaconf", "wandb"):
        versions[dist] = _version(dist)
    env: dict[str, Any] = {"versions": versions, "host": socket.gethostname(), "platform": platform.platform()}
    if device is not None:
        env["device"] = str(device)
        if str(device).startswith("cuda") and torch.cuda.is_available():
            env["device_name"] = torch.cuda.get_device_name(torch.device(device))
    env["git"] = git_info()
    return env


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------------- run.json
class RunRecord:
    """The ``run.json`` of one run: fields set as the run goes, timings from :meth:`timer`, written atomically.

    ``status`` is ``running`` until :meth:`done` or :meth:`failed`. A sweep skips items whose run.json says ``done``.
    """

    def __init__(self, run_dir: str | os.PathLike, **fields: Any):
        self.run_dir = Path(run_dir)
        self.data: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "status": "running",
            **fields,
            "timings": {},
            "started": now_iso(),
            "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
            "host": socket.gethostname(),
            "pid": os.getpid(),  # with host: a "running" run.json whose process is gone reads as interrupted
        }
        self._t0 = time.perf_counter()
        interrupt_on_sigterm()

    def update(self, **fields: Any) -> None:
        self.data.update(fields)

    @contextmanager
    def timer(self, name: str) -> Iterator[None]:
        """Adds the seconds spent inside the block to ``timings[name + "_s"]``."""
        t = time.perf_counter()
        try:
            yield
        finally:
            key = f"{name}_s"
            self.data["timings"][key] = round(self.data["timings"].get(key, 0.0) + time.perf_counter() - t, 4)

    def write(self, run_dir: str | os.PathLike | None = None) -> Path:
        """Write run.json atomically. While the run is ``running`` the file ends in :data:`RESERVE` spaces (JSON
        allows them): room for the final status and its error, written in place if the disk fills up."""
        path = Path(run_dir or self.run_dir) / RUN_JSON
        text = json.dumps(self.data, indent=2, default=str) + "\n"
        if self.data["status"] == "running":
            text += " " * RESERVE + "\n"
        with atomic_path(path) as tmp:
            tmp.write_text(text)
        return path

    def _close(self, status: str, run_dir: str | os.PathLike | None, **fields: Any) -> Path:
        self.data.update(fields)
        self.data["status"] = status
        self.data["finished"] = now_iso()
        self.data["timings"]["total_s"] = round(time.perf_counter() - self._t0, 4)
        return self.write(run_dir)

    def done(self, run_dir: str | os.PathLike | None = None, **fields: Any) -> Path:
        return self._close("done", run_dir, **fields)

    def failed(self, error: BaseException, run_dir: str | os.PathLike | None = None) -> Path | None:
        """Record ``error`` (``failed``, or ``interrupted`` for Ctrl-C / SIGTERM). Never raises: the caller re-raises
        ``error``, which is the one to report. When run.json cannot be replaced (a full disk: the failed output was
        the disk filling up), it is rewritten in place over its own bytes, which needs no new space: the whole
        record (it fits in the :data:`RESERVE` a running run.json ends with), else the record without its
        ``config``, else the status and error alone."""
        status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        message = " ".join(f"{type(error).__name__}: {error}".split())
        message = message if len(message) <= MAX_ERROR else f"{message[: MAX_ERROR - 20]}... ({len(message)} chars)"
        try:
            return self._close(status, run_dir, error=message)
        except OSError:
            pass
        path = Path(run_dir or self.run_dir) / RUN_JSON
        slim = {k: v for k, v in self.data.items() if k != "config"}
        least = {k: self.data.get(k) for k in ("schema", "status", "kind", "error", "started", "finished", "host")}
        for data in (self.data, slim, least | {"pid": self.data.get("pid"), "note": "record cut: the disk was full"}):
            if rewrite_in_place(path, json.dumps(data, indent=2, default=str) + "\n"):
                return path
        warnings.warn(f"could not record the failure in {path}: {message}", stacklevel=2)
        return None


def rewrite_in_place(path: Path, text: str) -> bool:
    """Overwrite the existing file ``path`` with ``text`` when it is no longer than the file (its blocks are reused,
    so this works on a full disk), then cut the file to the new length. False when it does not fit or fails."""
    data = text.encode()
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError:
        return False
    try:
        if len(data) > os.fstat(fd).st_size:
            return False
        os.write(fd, data)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


class Terminated(KeyboardInterrupt):
    """SIGTERM received: unwinds like Ctrl-C, so the run is recorded as ``interrupted`` and temporary files go."""


def interrupt_on_sigterm() -> None:
    """Make SIGTERM (``kill``, a scheduler's stop) raise :class:`Terminated` in the main thread, where the default
    would end the process on the spot and leave run.json saying ``running``. Only replaces the default handler."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def handler(signum, frame):
        raise Terminated(f"terminated by signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def run_status(run: Mapping[str, Any]) -> str:
    """A run.json's status as it stands: ``running`` whose process (same host, recorded ``pid``) is gone means the
    run was killed before it could say so, and reads as ``interrupted``."""
    status = str(run.get("status", "done"))
    if status == "running" and run.get("host") == socket.gethostname() and isinstance(run.get("pid"), int):
        if not pid_alive(run["pid"]):
            return "interrupted"
    return status


def read_run(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The run.json of ``run_dir`` with its status as it stands (:func:`run_status`), or None when it is missing or
    unreadable (a half-finished item)."""
    try:
        run = json.loads((Path(run_dir) / RUN_JSON).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(run, dict):
        return None
    run["status"] = run_status(run)
    return run


# ------------------------------------------------------------------------------------------------- claims
class Claim:
    """This process's claim on one sweep item: an exclusive ``flock`` on ``.<item>.claim`` beside the item's folder,
    holding who took it (pid, host, time) for people. The kernel drops the lock when the process ends, however it
    ends (``kill -9`` too), so a claim of a dead runner is simply taken over; no pid needs to be trusted."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    def release(self) -> None:
        """Remove the claim file (while still holding its lock, so no runner holds an orphaned copy) and unlock."""
        if self._fd is None:
            return
        try:
            if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                self.path.unlink()
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None


_LOCKS_WARNED: set[str] = set()


def claim_path(item_dir: str | os.PathLike) -> Path:
    item_dir = Path(item_dir)
    return item_dir.parent / f".{item_dir.name}.claim"


def claim(item_dir: str | os.PathLike) -> Claim | None:
    """Claim the sweep item ``item_dir`` for this process, or None when another runner holds it. A file system
    without locks (some network mounts) gives every runner the claim, with one warning: they may then double work,
    never corrupt it (items are committed atomically)."""
    import fcntl

    path = claim_path(item_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                os.close(fd)
                raise
            if str(path.parent) not in _LOCKS_WARNED:
                _LOCKS_WARNED.add(str(path.parent))
                warnings.warn(
                    f"{path.parent}: the file system has no locks; parallel runners may repeat items", stacklevel=2
                )
            return Claim(path, fd)
        try:  # the lock is ours; is the file still the one at `path` (not removed by a runner releasing it)?
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": now_iso()}).encode())
    except OSError:  # the holder's name is for people; a full disk must not stop the claim
        pass
    return Claim(path, fd)


def claim_holder(item_dir: str | os.PathLike) -> str:
    """Who holds the claim on ``item_dir``, for messages (``pid 123 on host``), or ``another runner``."""
    try:
        who = json.loads(claim_path(item_dir).read_text())
        return f"pid {int(who['pid'])} on {who['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another runner"


# ------------------------------------------------------------------------------------------------- evaluation
def check_writable(folders: list[Path], what: str) -> None:
    """Refuse, before any work, folders that cannot be written (read-only, or not folders), naming up to three."""
    bad = [f for f in folders if not (f.is_dir() and os.access(f, os.W_OK | os.X_OK))]
    if bad:
        names = ", ".join(repr(str(f)) for f in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise OutputDirError(
            f"cannot write {what} into {names}: read-only. Make the folder writable, or copy the runs somewhere "
            "writable and evaluate the copy"
        )


# ------------------------------------------------------------------------------------------------- W&B
class WandbRun:
    """A Weights & Biases run that cannot break the caller: every call is guarded, the first failure is reported
    once with :func:`warnings.warn` and turns the logger off. Use :meth:`start`; a disabled run accepts every call
    and does nothing."""

    def __init__(self, run: Any = None, reason: str | None = None):
        self._run = run
        self.reason = reason  # why there is no run (disabled, failed to start, ...)

    @property
    def active(self) -> bool:
        return self._run is not None

    @classmethod
    def start(
        cls,
        *,
        mode: str = "offline",
        project: str = "animatezero",
        entity: str | None = None,
        group: str | None = None,
        tags: list[str] | tuple[str, ...] = (),
        name: str | None = None,
        job_type: str | None = None,
        config: Mapping[str, Any] | None = None,
        dir: str | os.PathLike | None = None,
        init_timeout: float = 30.0,
    ) -> WandbRun:
        """Start a run in ``mode`` (offline | online | disabled). ``WANDB_MODE=disabled`` in the environment wins.
        ``wandb.init`` runs in a helper thread; if it neither returns nor fails within ``init_timeout`` seconds the
        run goes on without W&B."""
        if mode not in ("offline", "online", "disabled"):
            raise ValueError(f"wandb.mode must be offline, online or disabled, got {mode!r}")
        if mode == "disabled" or os.environ.get("WANDB_MODE", "").lower() == "disabled":
            return cls(None, "disabled")
        try:
            import wandb
        except Exception as e:  # noqa: BLE001 - not installed or broken: log nothing
            return cls._give_up(f"cannot import wandb ({type(e).__name__}: {e})")
        if dir is not None:
            Path(dir).mkdir(parents=True, exist_ok=True)
        result: dict[str, Any] = {}

        def init() -> None:
            try:
                result["run"] = wandb.init(
                    mode=mode,
                    project=project,
                    entity=entity,
                    group=group,
                    tags=list(tags),
                    name=name,
                    job_type=job_type,
                    config=dict(config or {}),
                    dir=str(dir) if dir is not None else None,
                    settings=wandb.Settings(init_timeout=init_timeout, silent=True, console="off"),
                )
            except BaseException as e:  # noqa: BLE001 - W&B must never take the run down
                result["error"] = e

        thread = threading.Thread(target=init, name="wandb-init", daemon=True)
        thread.start()
        thread.join(init_timeout * 1.1 + 1.0)  # wandb.init normally gives up first, at init_timeout
        if thread.is_alive():
            return cls._give_up(f"wandb.init did not finish within {init_timeout:g} s")
        if "error" in result:
            e = result["error"]
            return cls._give_up(f"wandb.init failed ({type(e).__name__}: {e})")
        return cls(result.get("run"))

    @classmethod
    def _give_up(cls, reason: str) -> WandbRun:
        warnings.warn(f"W&B logging is off for this run: {reason}. The run itself goes on.", stacklevel=3)
        return cls(None, reason)

    def _guard(self, what: str, fn, *args, **kwargs) -> Any:
        if self._run is None:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            warnings.warn(
                f"W&B {what} failed ({type(e).__name__}: {e}); W&B logging is off from here on.", stacklevel=3
            )
            self._run, self.reason = None, f"{what} failed"
            return None

    def log(self, data: Mapping[str, Any]) -> None:
        self._guard("log", lambda: self._run.log(dict(data)))

    def summary(self, data: Mapping[str, Any]) -> None:
        self._guard("summary", lambda: self._run.summary.update(dict(data)))

    def log_media(
        self,
        prefix: str,
        *,
        image: str | os.PathLike | None = None,
        video: str | os.PathLike | None = None,
        caption: str | None = None,
        fps: int = 8,
    ) -> None:
        """The first-frame (step-1) image as ``<prefix>/image`` and the video as ``<prefix>/video``. ``fps`` is
        accepted for older callers and unused: the video file already carries its frame rate."""

        def log() -> None:
            import wandb

            data = {}
            if image is not None:
                data[f"{prefix}/image"] = wandb.Image(str(image), caption=caption)
            if video is not None:
                # a file keeps its own frame rate; passing fps with a path only makes W&B warn on every call
                data[f"{prefix}/video"] = wandb.Video(str(video), caption=caption)
            self._run.log(data)

        self._guard("media logging", log)

    def finish(self, timeout: float = 120.0) -> None:
        """Close the run (in offline mode this only flushes files). Waits at most ``timeout`` seconds."""
        run, self._run = self._run, None
        if run is None:
            return
        thread = threading.Thread(target=lambda: self._quiet_finish(run), name="wandb-finish", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            warnings.warn(f"wandb finish did not complete within {timeout:g} s; going on", stacklevel=2)

    @staticmethod
    def _quiet_finish(run: Any) -> None:
        try:
            run.finish()
        except Exception as e:  # noqa: BLE001
            warnings.warn(f"wandb finish failed ({type(e).__name__}: {e})", stacklevel=2)
