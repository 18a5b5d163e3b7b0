"""Fetch the default weights from the Hugging Face hub into ``checkpoints/`` (the only code here that downloads).

    python scripts/download_checkpoints.py                          # SD1.5 (pruned EMA-only) + mm_sd_v15_v2
    python scripts/download_checkpoints.py mm_sd_v14 v3_sd15_mm     # other motion modules by name
    python scripts/download_checkpoints.py org/repo/file.safetensors --revision <commit> --sha256 <hex>

Then point the CLI at the local files:
    animatezero prompt=x checkpoint=checkpoints/v1-5-pruned-emaonly.safetensors motion_module=checkpoints/mm_sd_v15_v2.ckpt
Each file's SHA-256 is printed (and checked against ``--sha256`` when given) so runs can be pinned. Gated repos need
``huggingface-cli login`` first.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from animatezero.hub import DEFAULT_CHECKPOINT, DEFAULT_MOTION_MODULE, PINS, parse_hub_reference  # noqa: E402

NAMED = {
    "sd15": DEFAULT_CHECKPOINT,
    **{name: f"guoyww/animatediff/{name}.ckpt" for name in ("mm_sd_v14", "mm_sd_v15", "mm_sd_v15_v2", "v3_sd15_mm")},
}
DEFAULTS = ("sd15", "mm_sd_v15_v2")
assert NAMED["mm_sd_v15_v2"] == DEFAULT_MOTION_MODULE


def fail(message: str) -> None:
    """One line on stderr and exit status 2 (a usage error), no traceback."""
    print(message, file=sys.stderr)
    raise SystemExit(2)


def download(ref: str, dest: Path, revision: str | None = None, sha256: str | None = None) -> Path:
    """One hub file ``org/repo/path[@rev]`` -> ``dest/<file name>``; raises when the SHA-256 does not match."""
    from huggingface_hub import hf_hub_download

    from models.readers import file_sha256

    parsed = parse_hub_reference(ref)
    if parsed is None:
        fail(f"error: {ref!r} is neither a known name ({', '.join(NAMED)}) nor a hub file org/repo/file")
    repo_id, filename, ref_revision = parsed
    revision = revision or ref_revision
    pin = PINS.get(f"{repo_id}/{filename}")
    if pin is not None and revision in (None, pin.revision):  # a default file: its pinned commit and SHA-256
        revision, sha256 = pin.revision, sha256 or pin.sha256
    path = Path(hf_hub_download(repo_id, filename, revision=revision, local_dir=dest))
    digest = file_sha256(path)
    if sha256 is not None and digest != sha256.lower():
        fail(f"error: {path} has SHA-256 {digest}, expected {sha256}: the download is corrupt or changed")
    print(f"{path}  sha256={digest}")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="*", default=list(DEFAULTS), help=f"names ({', '.join(NAMED)}) or org/repo/file")
    parser.add_argument("--dest", type=Path, default=Path("checkpoints"))
    parser.add_argument("--revision", default=None, help="hub revision (a commit hash pins the files)")
    parser.add_argument("--sha256", action="append", default=None, help="expected SHA-256, one per file, in order")
    args = parser.parse_args(argv)
    if args.sha256 is not None and len(args.sha256) != len(args.files):
        parser.error(f"give one --sha256 per file ({len(args.files)} files, {len(args.sha256)} hashes)")
    args.dest.mkdir(parents=True, exist_ok=True)
    hashes = args.sha256 or [None] * len(args.files)
    for name, sha in zip(args.files, hashes):
        download(NAMED.get(name, name), args.dest, args.revision, sha)
    return 0


if __name__ == "__main__":
    sys.exit(main())
