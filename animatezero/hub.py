"""Resolving checkpoint references: a local path, or a Hugging Face hub file ``org/repo/file[@revision]``.

Loaders in ``models/`` only read paths; downloading happens here, on the user's machine, with a clear message when it
cannot. A revision pins the download (a commit hash is best); ``sha256=`` verifies the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

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


def resolve(ref: str | os.PathLike, *, sha256: str | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """A local file path for ``ref``: the path itself if it exists, else a hub download (cached by huggingface_hub).

    A downloaded file is verified against ``sha256``, or for the default references against :data:`PINS` (which also
    give the revision to download when the reference names none). The digest is remembered per (path, size, mtime)
    in ``cache_dir`` (default: the animatezero cache), so a 4 GB file is hashed once, not on every run."""
    path = Path(ref).expanduser()
    if path.exists():
        return path
    parsed = parse_hub_reference(str(ref)) if not str(ref).startswith(("/", ".", "~")) else None
    if parsed is None:
        raise FileNotFoundError(
            f"checkpoint {str(ref)!r} does not exist. Pass a local .safetensors/.ckpt path, or a Hugging Face hub file "
            f"as 'org/repo/file' (e.g. {DEFAULT_CHECKPOINT!r})"
        )
    repo_id, filename, revision = parsed
    pin = PINS.get(f"{repo_id}/{filename}")
    if pin is not None and revision is None:
        revision = pin.revision
    if sha256 is None and pin is not None and revision == pin.revision:
        sha256 = pin.sha256
    try:
        from huggingface_hub import hf_hub_download

        print(
            f"[animatezero] fetching {filename} from the Hugging Face hub repo {repo_id} (cached after the first time)"
        )
        local = Path(hf_hub_download(repo_id, filename, revision=revision))
    except Exception as e:  # offline, unknown repo, auth: all end the same way for the user
        raise DownloadError(
            f"could not download {filename!r} from hub repo {repo_id!r}"
            f"{f' at revision {revision}' if revision else ''}: {type(e).__name__}: {e}. "
            "Check the network (or HF_HUB_OFFLINE), log in with `huggingface-cli login` for gated repos, "
            "or download the file yourself and pass its local path."
        ) from e
    if sha256 is not None:
        from animatezero.pipeline import default_cache_dir
        from animatezero.runlog import checkpoint_sha256

        digest = checkpoint_sha256(local, cache_dir if cache_dir is not None else default_cache_dir(), validate=False)
        if digest != sha256.lower():
            raise DownloadError(f"{local} has SHA-256 {digest}, expected {sha256}: the download is corrupt or changed")
    return local
