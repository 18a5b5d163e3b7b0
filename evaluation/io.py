"""Reading videos and images into the ``[F, 3, H, W]`` float [0, 1] convention (also a run directory's video and
reference images), writing PNG frames, and writing result files atomically.

Frames from a folder of PNGs are preferred (no codec loss, docs/metrics.md §2); mp4/webm/mov are decoded with PyAV,
GIFs with Pillow (which composites partial frames).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from evaluation.video import as_image, as_video

VIDEO_FILES = ("video.mp4", "video.gif", "video.webm")  # a run's encoded video, if it has no frames/
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi")


def read_image(path: str | os.PathLike) -> Tensor:
    """An RGB image file -> ``[1, 3, H, W]`` float in [0, 1] (alpha dropped, palette/greyscale converted). The
    header is checked first against the input-image limits of :mod:`animatezero.io` (format, pixels, shape)."""
    from PIL import Image

    from animatezero.io import IMAGE_FORMATS, check_image_file

    check_image_file(path)
    with Image.open(path, formats=IMAGE_FORMATS) as im:
        return as_image(np.asarray(im.convert("RGB")))


def read_frame_folder(folder: str | os.PathLike) -> Tensor:
    """All image files of a folder, in file-name order (``0000.png``, ``0001.png``, ...) -> ``[F, 3, H, W]``; their
    headers are read first, so a folder whose frames hold more than ``MAX_VIDEO_PIXELS`` is refused undecoded."""
    from animatezero.io import check_image_file

    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no image frames in {folder}")
    _check_video_pixels(sum(h * w for h, w in map(check_image_file, files)), f"{len(files)} frames in {folder}")
    return torch.cat([read_image(p) for p in files])


def _check_video_pixels(pixels: int, what: str) -> None:
    from animatezero.io import MAX_VIDEO_PIXELS, ImageInputError

    if pixels > MAX_VIDEO_PIXELS:
        raise ImageInputError(
            f"{what} hold {pixels / 1e6:.1f} megapixels, over the {MAX_VIDEO_PIXELS / 1e6:.1f} MP a video may "
            f"have; evaluate fewer or smaller frames"
        )


def _read_gif(path: Path) -> Tensor:
    """Every frame of a GIF, composited by Pillow onto its logical screen: refused from its header (screen size
    times frame count) when that is more than ``MAX_VIDEO_PIXELS``."""
    from PIL import Image, ImageSequence

    from animatezero.io import check_image_file

    check_image_file(path, what=f"GIF {str(path)!r}")
    with Image.open(path, formats=["GIF"]) as im:
        what = f"the {im.n_frames} frames of GIF {str(path)!r}"
        _check_video_pixels(im.n_frames * im.width * im.height, what)
        frames, pixels = [], 0
        for frame in ImageSequence.Iterator(im):
            pixels += frame.width * frame.height  # a later frame may enlarge the screen
            _check_video_pixels(pixels, what)
            frames.append(np.asarray(frame.convert("RGB")))
    return as_video(np.stack(frames))


def _read_av(path: Path) -> Tensor:
    import av

    with av.open(str(path)) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    if not frames:
        raise ValueError(f"no video frames decoded from {path}")
    return as_video(np.stack(frames))


def read_video(path: str | os.PathLike) -> Tensor:
    """A folder of frames, a GIF, or an mp4/webm/mov/mkv/avi file -> float ``[F, 3, H, W]`` in [0, 1]."""
    path = Path(path)
    if path.is_dir():
        return read_frame_folder(path)
    if not path.is_file():
        raise FileNotFoundError(path)
    suffix = path.suffix.lower()
    if suffix == ".gif":
        return _read_gif(path)
    if suffix in VIDEO_SUFFIXES:
        return _read_av(path)
    if suffix in IMAGE_SUFFIXES:
        return read_image(path)
    raise ValueError(f"unsupported video file {path} (expected a frame folder, .gif or one of {VIDEO_SUFFIXES})")


def to_uint8(video: Tensor) -> np.ndarray:
    """``[F, 3, H, W]`` float in [0, 1] -> uint8 ``[F, H, W, 3]`` (rounded)."""
    x = as_video(video).clamp(0, 1).mul(255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def write_frames(video: Tensor, folder: str | os.PathLike) -> list[Path]:
    """Write ``0000.png``, ``0001.png``, ... into ``folder`` (created); returns the paths."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, frame in enumerate(to_uint8(video)):
        paths.append(folder / f"{i:04d}.png")
        Image.fromarray(frame).save(paths[-1])
    return paths


def write_image(image: Tensor, path: str | os.PathLike) -> None:
    """Write one ``[1, 3, H, W]`` / ``[3, H, W]`` image as PNG."""
    from PIL import Image

    Image.fromarray(to_uint8(as_image(image))[0]).save(path)


def load_run_video(run_dir: Path) -> tuple[Tensor, str]:
    """The run's frames (``frames/`` preferred over an encoded video) and which source was used."""
    frames_dir = run_dir / "frames"
    if frames_dir.is_dir() and any(frames_dir.iterdir()):
        return read_video(frames_dir), "frames/"
    for name in VIDEO_FILES:
        if (run_dir / name).is_file():
            return read_video(run_dir / name), name
    raise FileNotFoundError(f"{run_dir}: no frames/ folder and none of {VIDEO_FILES}")


def reference_paths(run_dir: Path, run: Mapping[str, Any]) -> list[Path]:
    """The images a run's video is compared with: ``run.json``'s ``reference_images``, else its ``image.png``."""
    refs = run.get("reference_images") or []
    if isinstance(refs, str):
        refs = [refs]
    paths = [p if p.is_absolute() else run_dir / p for p in map(Path, refs)]
    if not paths and (run_dir / "image.png").is_file():
        paths = [run_dir / "image.png"]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{run_dir}: reference images not found: {missing}")
    return paths


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path``, fsync it, then ``os.replace`` it into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
