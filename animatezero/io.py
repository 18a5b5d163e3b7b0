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
from PIL import Image, ImageOps
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


MAX_IMAGE_PIXELS = 64_000_000  # an 8000x8000 photo; the model works at <= 2048x2048, so more only costs memory
MAX_IMAGE_ASPECT = 16.0  # wider or taller than 16:1 is a strip, not a picture: cropping it to the grid loses it


class ImageInputError(ValueError):
    """An input image cannot be used; the message says why and what to pass instead."""


def check_image_size(height: int, width: int, what: str = "image") -> None:
    """Refuse an image by its dimensions alone (read from the file header, before any pixel is decoded): empty, more
    than :data:`MAX_IMAGE_PIXELS`, or more elongated than :data:`MAX_IMAGE_ASPECT`."""
    if height < 1 or width < 1:
        raise ImageInputError(f"{what} has no pixels ({width}x{height})")
    if height * width > MAX_IMAGE_PIXELS:
        raise ImageInputError(
            f"{what} is {width}x{height} = {height * width / 1e6:.0f} megapixels, over the {MAX_IMAGE_PIXELS / 1e6:.0f}"
            f" MP limit (the model works at 2048x2048 at most); downscale it first"
        )
    if max(height, width) / min(height, width) > MAX_IMAGE_ASPECT:
        raise ImageInputError(
            f"{what} is {width}x{height}, more elongated than {MAX_IMAGE_ASPECT:g}:1; fitting it to the model's grid "
            f"would keep a sliver of it. Crop it to a picture-like shape first"
        )


def load_image(path: str | os.PathLike, size: tuple[int, int] | None = None) -> Tensor:
    """Read an image file as ``[3, H, W]`` float in [0, 1], decoded by its mode and upright (EXIF orientation applied).

    The dimensions are checked from the header before decoding (:func:`check_image_size`); with ``size=(height,
    width)`` a JPEG is decoded at the smallest power-of-two reduction still covering that size, so memory follows the
    request, not the file. 8-bit modes (grayscale, palette, RGB, CMYK) are converted to RGB, an alpha channel is
    composited onto white; 16-bit grayscale (``I;16*``) is divided by 65535; float images (``F``) must already lie in
    [0, 1]; 32-bit integer images (``I``, no defined range) are refused.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {str(path)!r} does not exist")
    try:
        with Image.open(path) as img:
            width, height = img.size  # from the header; nothing decoded yet
            check_image_size(height, width, f"image {str(path)!r}")
            if size is not None and img.format == "JPEG":
                img.draft("RGB", (size[1], size[0]))  # DCT-domain downscale, never below the requested size
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_tensor(img, path)
    except ImageInputError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageInputError(f"image {str(path)!r} is too large to decode safely ({e}); downscale it first") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageInputError(f"cannot read image {str(path)!r}: {e}. Use a PNG, JPEG or WebP file.") from None


def _to_tensor(img: Image.Image, path: Path) -> Tensor:
    """A decoded PIL image -> ``[3, H, W]`` float in [0, 1], scaled by what its mode means (never by its values)."""
    if img.mode.startswith("I;16"):
        gray = np.asarray(img, dtype=np.float32) / 65535.0  # [H, W]
        return torch.from_numpy(gray)[None].expand(3, -1, -1).clone()
    if img.mode == "I" and img.format == "PNG":  # older Pillow opens 16-bit grayscale PNG as I
        gray = np.asarray(img, dtype=np.float32) / 65535.0
        return torch.from_numpy(gray)[None].expand(3, -1, -1).clone()
    if img.mode == "I":
        raise ImageInputError(
            f"image {str(path)!r} is a 32-bit integer image, whose value range is not defined; save it as an 8- or "
            f"16-bit PNG"
        )
    if img.mode == "F":
        gray = np.asarray(img, dtype=np.float32)
        if not (np.isfinite(gray).all() and gray.min() >= 0.0 and gray.max() <= 1.0):
            raise ImageInputError(
                f"image {str(path)!r} is a floating-point image with values in [{np.nanmin(gray):g}, "
                f"{np.nanmax(gray):g}]; float images must hold values in [0, 1] (or save it as 8- or 16-bit PNG)"
            )
        return torch.from_numpy(gray.copy())[None].expand(3, -1, -1).clone()
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)  # [H, W, 3]
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255.0
