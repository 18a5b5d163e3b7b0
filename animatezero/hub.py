"""Resolving checkpoint references: a local path, or a Hugging Face hub file ``org/repo/file[@revision]``.

Loaders in ``models/`` only read paths; downloading happens here, on the user's machine, with a clear message when it
cannot. A revision pins the download (a commit hash is best); ``sha256=`` verifies the file.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_CHECKPOINT = "stable-diffusion-v1-5/stable-diffusion-v1-5/v1-5-pruned-emaonly.safetensors"
DEFAULT_MOTION_MODULE = "guoyww/animatediff/mm_sd_v15_v2.ckpt"


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


def resolve(ref: str | os.PathLike, *, sha256: str | None = None) -> Path:
    """A local file path for ``ref``: the path itself if it exists, else a hub download (cached by huggingface_hub)."""
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
        from models.checkpoint import file_sha256

        digest = file_sha256(local)
        if digest != sha256.lower():
            raise DownloadError(f"{local} has SHA-256 {digest}, expected {sha256}: the download is corrupt or changed")
    return local
