"""Writing images and videos atomically: every file is written to a temporary name in the destination folder and
renamed into place, so an interrupted run never leaves a half-written output."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor


@contextmanager
def atomic_path(path: str | os.PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary output folder
    target = tmp if directory else tmp / path.name
    try:
        yield target
        if directory and path.exists():
            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def to_uint8(images: Tensor) -> np.ndarray:
    """``[..., 3, H, W]`` float in [0, 1] -> ``[..., H, W, 3]`` uint8."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).movedim(-3, -1).cpu().numpy()


def save_image(image: Tensor, path: str | os.PathLike) -> None:
    """Save ``[3, H, W]`` in [0, 1] as PNG/JPEG (by suffix)."""
    with atomic_path(path) as tmp:
        Image.fromarray(to_uint8(image)).save(tmp, format=Image.registered_extensions().get(Path(path).suffix.lower()))


def save_video(frames: Tensor, path: str | os.PathLike, fps: int = 8) -> None:
    """Save ``[f, 3, H, W]`` in [0, 1]: ``.mp4`` (H.264, yuv420p, via PyAV), ``.gif`` (looping), or, for any other
    path, a folder of lossless PNG frames ``0000.png, 0001.png, ...``."""
    path = Path(path)
    arrays = to_uint8(frames)
    suffix = path.suffix.lower()
    if suffix == ".gif":
        with atomic_path(path) as tmp:
            pil = [Image.fromarray(a) for a in arrays]
            pil[0].save(tmp, format="GIF", save_all=True, append_images=pil[1:], duration=round(1000 / fps), loop=0)
    elif suffix == ".mp4":
        import av

        with atomic_path(path) as tmp, av.open(str(tmp), mode="w") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.height, stream.width = arrays.shape[1] - arrays.shape[1] % 2, arrays.shape[2] - arrays.shape[2] % 2
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "17"}
            for a in arrays:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(a[: stream.height, : stream.width]), "rgb24")
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
    elif suffix:
        raise ValueError(f"unknown video format {suffix!r}: use .mp4, .gif, or a folder path for PNG frames")
    else:
        with atomic_path(path, directory=True) as tmp:
            tmp.mkdir(exist_ok=True)  # atomic_path(directory=True) yields an existing temporary folder
            for i, a in enumerate(arrays):
                Image.fromarray(a).save(tmp / f"{i:04d}.png")


def load_image(path: str | os.PathLike) -> Tensor:
    """Read an image file as ``[3, H, W]`` float in [0, 1]. Grayscale, palette and 16-bit images are converted to RGB;
    an alpha channel is composited onto white (documented in the README)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {str(path)!r} does not exist")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                array = np.asarray(img, dtype=np.float32)
                array = array / (65535.0 if array.max() > 255 else 255.0)
                return torch.from_numpy(array)[None].expand(3, -1, -1).clone()
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                img = Image.alpha_composite(white, rgba)
            rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot read image {str(path)!r}: {e}. Use a PNG, JPEG or WebP file.") from e
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255.0
