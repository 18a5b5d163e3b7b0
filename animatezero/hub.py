"""Resolving checkpoint references: a local path, or a Hugging Face hub file ``org/repo/file[@revision]``.

Loaders in ``models/`` only read paths; downloading happens here, on the user's machine, with a clear message when it
cannot. A revision pins the download (a commit hash is best); ``sha256=`` verifies the file.
"""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path


def default_cache_dir() -> Path:
    """``$ANIMATEZERO_CACHE``, else ``~/.cache/animatezero`` (the Hydra configs' ``paths.cache_dir``)."""
    return Path(os.environ.get("ANIMATEZERO_CACHE") or Path.home() / ".cache" / "animatezero").expanduser()


DEFAULT_CHECKPOINT = "stable-diffusion-v1-5/stable-diffusion-v1-5/v1-5-pruned-emaonly.safetensors"
DEFAULT_MOTION_MODULE = "guoyww/animatediff/mm_sd_v15_v2.ckpt"


@dataclass(frozen=True)
class Pin:
    """What a known hub file must be: its SHA-256 (always checked after download) and, where known, the repository
    commit to download it from (None: the default branch; the SHA-256 still pins the content)."""

    sha256: str
    revision: str | None = None


# The published SHA-256 of the default files, and the hub commit of the SD1.5 repository they are taken from. The
# motion-module repository's commit is not recorded here (it could not be confirmed offline); its file is pinned by
# SHA-256 alone, so a changed file is refused, not used.
PINS: dict[str, Pin] = {
    DEFAULT_CHECKPOINT: Pin(
        sha256="6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa",
        revision="451f4fe16113bff5a5d2269ed5ad43b0592e9a14",
    ),
    DEFAULT_MOTION_MODULE: Pin(sha256="69ed0f5fef82b110aca51bcab73b21104242bc65d6ab4b8b2a2a94d31cad1bf0"),
}


class DownloadError(RuntimeError):
    """A hub reference could not be fetched."""


def parse_hub_reference(ref: str) -> tuple[str, str, str | None] | None:
    """``"org/repo/path/in/repo.ckpt@rev"`` (optionally prefixed ``hf://``) -> ``(repo_id, filename, revision)``;
    None when ``ref`` does not look like one (fewer than three path parts)."""
    ref = ref.removeprefix("hf://")
    ref, _, revision = ref.partition("@")
    parts = ref.split("/")
    if len(parts) < 3 or not all(parts):
        return None
    return "/".join(parts[:2]), "/".join(parts[2:]), revision or None


class NotCachedError(DownloadError):
    """A hub file is not in the local Hugging Face cache (raised only with ``local_files_only``)."""


_DRIVE = re.compile(r"^[A-Za-z]:")


def hub_reference(ref: str | os.PathLike) -> tuple[str, str, str | None] | None:
    """``(repo_id, filename, revision)`` when ``ref`` names a hub file, None when it is a local path.

    The rule, in order:

    1. ``hf://org/repo/file[@revision]`` is always the hub.
    2. Anything that exists here is local, and so is anything that looks like a path: starting with ``/``, ``.``
       or ``~``, holding a backslash or a drive letter (``C:``), fewer than three ``/``-separated parts, or a first
       part that exists here as a file or folder (``checkpoints/sub/model.safetensors`` with ``checkpoints/``
       present).
    3. The rest, ``org/repo/path/in/repo[@revision]`` with no local match, is the hub.

    A local path is never sent to the hub, so a missing local file fails at once with "does not exist".
    """
    text = os.fspath(ref)
    if text.startswith("hf://"):
        parsed = parse_hub_reference(text)
        if parsed is None:
            raise ValueError(f"{text!r} is not a hub file: write hf://org/repo/path/to/file[@revision]")
        return parsed
    if (
        text.startswith(("/", ".", "~"))
        or "\\" in text
        or _DRIVE.match(text)
        or Path(text).exists()
        or Path(text.partition("/")[0]).exists()
    ):
        return None
    return parse_hub_reference(text)


def local_file(ref: str | os.PathLike, key: str = "checkpoint", *, image: bool = False) -> Path:
    """``ref`` as an existing, readable regular file, else one-line error naming ``key`` and the fix (for a weights
    file by default, which may also be a hub file; for an image with ``image=True``)."""
    path = Path(ref).expanduser()
    kind, suffix = ("image file (PNG, JPEG, WebP)", ".png") if image else (".safetensors/.ckpt file", ".safetensors")
    if not path.exists():
        hint = "" if image else f", or a Hugging Face hub file as hf://org/repo/file (e.g. hf://{DEFAULT_CHECKPOINT})"
        raise FileNotFoundError(f"{key}={os.fspath(ref)} does not exist. Pass an existing {kind}{hint}")
    if path.is_dir():
        raise IsADirectoryError(
            f"{key}={os.fspath(ref)} is a directory; pass the {kind} inside it "
            f"({key}={os.fspath(ref).rstrip('/')}/<file>{suffix})"
        )
    if not path.is_file():  # a FIFO would block the open below forever, a device could stream without end
        raise FileNotFoundError(
            f"{key}={os.fspath(ref)} is not a regular file (a pipe, device or socket); pass a file on disk"
        )
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise PermissionError(
            f"{key}={os.fspath(ref)} cannot be read ({e.strerror or e}); fix its permissions or pass a readable copy"
        ) from None
    return path


def offline_reason(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached (``HF_HUB_OFFLINE`` set, or one TCP connection to the hub endpoint, or to the
    HTTPS proxy when one is configured, failing within ``timeout`` seconds), or None when it can. One attempt, no
    retries: this decides in seconds whether downloading is worth trying."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    from urllib.parse import urlsplit

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    proxy = next(
        (os.environ[k] for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy") if os.environ.get(k)), None
    )
    url = urlsplit(proxy or endpoint)
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    if not host:
        return None
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return f"{host}:{port} cannot be reached ({e.strerror or type(e).__name__})"


def resolve_all(refs: dict[str, str | os.PathLike | None], *, download: bool = True, **options) -> dict[str, Path]:
    """Local files for several references at once (``{setting: reference}``; None entries are skipped).

    Local paths are checked first (every problem reported together). Hub files are taken from the Hugging Face cache;
    only when some are missing is the network checked, once (:func:`offline_reason`). Offline, one error names every
    missing file and the overrides that pass local copies instead; online, the missing files are downloaded (with
    ``download=False`` they are left out of the result: a quick check before anything heavy). ``options`` go to
    :func:`resolve`."""
    refs = {k: v for k, v in refs.items() if v is not None}
    out: dict[str, Path] = {}
    problems: list[Exception] = []
    hub = {}
    for key, ref in refs.items():
        try:
            if hub_reference(ref) is None:
                out[key] = local_file(ref, key)
            else:
                hub[key] = ref
        except (OSError, ValueError) as e:
            problems.append(e)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise FileNotFoundError("\n".join(str(e) for e in problems))
    missing = []
    for key, ref in hub.items():
        try:
            out[key] = resolve(ref, key=key, local_files_only=True, **options)
        except NotCachedError:
            missing.append(key)
    if missing:
        reason = offline_reason()
        if reason is not None:
            files = "".join(f"\n  {k}={hub[k]}" for k in missing)
            overrides = " ".join(f"{k}=/path/{Path(str(hub[k]).partition('@')[0]).name}" for k in missing)
            raise DownloadError(
                f"{len(missing)} weight file{'s are' if len(missing) > 1 else ' is'} not in the Hugging Face cache "
                f"and the hub cannot be used ({reason}):{files}\nFetch them on a networked machine (python "
                f"scripts/download_checkpoints.py) or pass local files: {overrides}"
            )
        if not download:
            return out
        for key in missing:
            out[key] = resolve(hub[key], key=key, **options)
    return {k: out[k] for k in refs}


def resolve(
    ref: str | os.PathLike,
    *,
    sha256: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    key: str = "checkpoint",
    local_files_only: bool = False,
) -> Path:
    """A local file path for ``ref``: the path itself if it exists, else a hub download (cached by huggingface_hub).

    A downloaded file is verified against ``sha256``, or for the default references against :data:`PINS` (which also
    give the revision to download when the reference names none). The digest is remembered per (path, size, mtime)
    in ``cache_dir`` (default: the animatezero cache), so a 4 GB file is hashed once, not on every run.

    Which references are local and which go to the hub: see :func:`hub_reference`. ``key`` names the setting in error
    messages. ``local_files_only``: use the hub cache only, raising :class:`NotCachedError` when the file is not there
    (no network access at all)."""
    parsed = hub_reference(ref)
    if parsed is None:
        return local_file(ref, key)
    repo_id, filename, revision = parsed
    pin = PINS.get(f"{repo_id}/{filename}")
    if pin is not None and revision is None:
        revision = pin.revision
    if sha256 is None and pin is not None and revision == pin.revision:
        sha256 = pin.sha256
    try:
        from huggingface_hub import hf_hub_download

        if not local_files_only:
            print(
                f"[animatezero] fetching {filename} from the Hugging Face hub repo {repo_id} "
                "(cached after the first time)"
            )
        local = Path(hf_hub_download(repo_id, filename, revision=revision, local_files_only=local_files_only))
    except Exception as e:  # offline, unknown repo, auth: all end the same way for the user
        if local_files_only:
            raise NotCachedError(f"{key}={ref} is not in the Hugging Face cache") from None
        raise DownloadError(
            f"could not download {filename!r} from hub repo {repo_id!r}"
            f"{f' at revision {revision}' if revision else ''}: {type(e).__name__}: {e}. "
            "Check the network (or HF_HUB_OFFLINE), log in with `huggingface-cli login` for gated repos, "
            "or download the file yourself and pass its local path."
        ) from e
    if sha256 is not None:
        digest = checkpoint_sha256(local, cache_dir if cache_dir is not None else default_cache_dir(), validate=False)
        if digest != sha256.lower():
            raise DownloadError(f"{local} has SHA-256 {digest}, expected {sha256}: the download is corrupt or changed")
    return local


def checkpoint_sha256(
    path: str | os.PathLike, cache_dir: str | os.PathLike | None = None, *, validate: bool = True
) -> str:
    """SHA-256 of a checkpoint file, remembered in ``cache_dir/sha256.json`` by (real path, size, mtime), so a
    4 GB file is hashed once and not on every run. With ``validate`` the file is first checked as a checkpoint
    (:func:`models.readers.check_checkpoint_file`); without, only as a regular file (a download's bytes). The cache
    is only ever a shortcut: a damaged one (not a JSON object of hex digests, e.g. ``[]``, ``null`` or a truncated
    write) is read as empty with a warning and rewritten (atomically) with this digest."""
    from models.readers import check_checkpoint_file, file_sha256

    if validate:  # type, size and header first: a FIFO, /dev/zero or a directory is never hashed
        check_checkpoint_file(path)
    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    cache_file = Path(cache_dir) / "sha256.json" if cache_dir is not None else None
    cache = _read_digest_cache(cache_file) if cache_file is not None else {}
    if key in cache:
        return cache[key]
    digest = file_sha256(path)
    if cache_file is not None:
        try:
            cache[key] = digest
            from animatezero.io import write_json

            write_json(cache_file, cache)
        except OSError:
            pass  # a read-only cache only costs time
    return digest


def _read_digest_cache(cache_file: Path) -> dict[str, str]:
    """The ``{key: sha256 hex}`` entries of a digest cache; a missing file is empty, and a damaged one too (with a
    warning, and it is rewritten without the bad entries): a bad cache costs one re-hash, never a failed run."""
    if not cache_file.is_file():
        return {}
    problem = None
    try:
        data = json.loads(cache_file.read_text())
    except (OSError, ValueError, RecursionError) as e:  # unreadable, truncated, not JSON, not UTF-8
        data, problem = {}, f"unreadable ({type(e).__name__})"
    if not isinstance(data, dict):
        data, problem = {}, f"a JSON {type(data).__name__}, not an object"
    cache = {k: v for k, v in data.items() if isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v)}
    if problem is None and len(cache) < len(data):
        problem = f"{len(data) - len(cache)} entries are not SHA-256 digests"
    if problem is not None:
        import warnings

        warnings.warn(
            f"the checkpoint digest cache {cache_file} is damaged ({problem}); it is rebuilt as files are hashed",
            stacklevel=3,
        )
        try:
            from animatezero.io import write_json

            write_json(cache_file, cache)  # atomic: the next run finds a valid cache even if this one is killed
        except OSError:
            pass  # a read-only cache only costs time
    return cache
