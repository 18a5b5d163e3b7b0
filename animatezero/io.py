"""Writing images and videos atomically: every file is written to a temporary name in the destination folder and
renamed into place, so an interrupted run never leaves a half-written output."""

from __future__ import annotations

import errno
import json
import numbers
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor


class OutputDirError(RuntimeError):
    """The output directory cannot be used (not creatable, not writable, or already holds a run)."""


class OutputWriteError(OutputDirError, OSError):
    """Writing an output failed (disk full, quota, permissions); nothing half-written was left in place."""


PARTIAL = ".partial-"  # marks atomic_path's temporary entries: .<name>.partial-<host>-<pid>-<random>
_PARTIAL_NAME = re.compile(r"^\..+\.partial-(?P<host>.+)-(?P<pid>\d+)-[a-z0-9_]+$")


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file, or a folder's entries) to disk; a no-op where the OS cannot (some filesystems)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    if path.is_dir():
        for child in path.rglob("*"):
            if child.is_file():
                _fsync(child)
    _fsync(path)


@contextmanager
def atomic_path(path: str | os.PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is flushed to disk (fsync), replaces ``path`` and the
    folder's entry is flushed too, so a crash leaves the old or the new output, never a torn one. On error it is
    removed; an ``OSError`` (disk full, quota, permissions) becomes an :class:`OutputWriteError` naming ``path``.
    The temporary entry's name records this host and process, so :func:`remove_orphans` can tell one left by a killed
    process from one still being written."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        prefix = f".{path.name}{PARTIAL}{socket.gethostname()}-{os.getpid()}-"
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary output folder
    except OSError as e:
        raise _write_error(path, e) from e
    target = tmp if directory else tmp / path.name
    try:
        yield target
        _fsync_tree(target)
        if directory and path.exists():
            shutil.rmtree(path)
        os.replace(target, path)
        _fsync(path.parent)
    except OutputWriteError:
        raise
    except OSError as e:
        raise _write_error(path, e) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_error(path: Path, e: OSError) -> OutputWriteError:
    reason = e.strerror or str(e) or type(e).__name__
    fix = "free some disk space" if e.errno in (errno.ENOSPC, errno.EDQUOT) else "check the folder's permissions"
    return OutputWriteError(f"cannot write {str(path)!r}: {reason}; {fix}, or choose another output folder")


def remove_orphans(folder: str | os.PathLike, depth: int = 1) -> list[Path]:
    """Remove the temporary entries :func:`atomic_path` left in ``folder`` (and, ``depth`` levels down, in its
    ordinary subfolders) when their process was killed: the process named in the entry is gone, on this host.
    Entries of live processes or other hosts are kept. Returns the removed paths, sorted."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    host = socket.gethostname()
    for entry in sorted(folder.iterdir()):
        m = _PARTIAL_NAME.match(entry.name)
        if m is not None and m["host"] == host and not pid_alive(int(m["pid"])):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            removed.append(entry)
        elif depth > 0 and not entry.name.startswith(".") and entry.is_dir() and not entry.is_symlink():
            removed += remove_orphans(entry, depth - 1)
    return sorted(removed)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a process of another user counts as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


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
    if isinstance(fps, bool) or not isinstance(fps, numbers.Integral) or not 1 <= fps <= 240:
        raise ValueError(f"fps must be a whole number of frames per second in 1..240, got {fps!r}")
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


# ------------------------------------------------------------------------------------------------- reading images
# Every limit on input images is defined here, once: load_image (API and CLI), the API's tensors and the app's
# uploads all check against these.
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")  # the only Pillow decoders tried (JPEG opens MPO too)
UPLOAD_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "MPO": ".jpg", "WEBP": ".webp", "BMP": ".bmp"}  # the app's uploads
MAX_UPLOAD_BYTES = 25 * 2**20  # an upload's size on disk
MAX_IMAGE_PIXELS = 64_000_000  # an 8000x8000 photo; the model works at <= 2048x2048, so more only costs memory
MAX_IMAGE_ASPECT = 16.0  # wider or taller than 16:1 is a strip, not a picture: cropping it to the grid loses it
IMAGE_BUDGET_PER_PIXEL = 64  # pixels decoded per requested pixel (an 8x larger side than the request) ...
MIN_IMAGE_BUDGET = 16_000_000  # ... but at least this many for any request: a 16-megapixel photo always decodes
MAX_VIDEO_PIXELS = 128_000_000  # all frames of a GIF or frame folder together (128 frames of 1000x1000)


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


def image_budget(size: tuple[int, int] | None) -> int:
    """The most pixels decoded for a request of ``size=(height, width)``: :data:`IMAGE_BUDGET_PER_PIXEL` times the
    requested pixels, at least :data:`MIN_IMAGE_BUDGET` and at most :data:`MAX_IMAGE_PIXELS` (the budget without a
    size)."""
    if size is None:
        return MAX_IMAGE_PIXELS
    return min(MAX_IMAGE_PIXELS, max(MIN_IMAGE_BUDGET, IMAGE_BUDGET_PER_PIXEL * size[0] * size[1]))


def check_image_file(path: str | os.PathLike, size: tuple[int, int] | None = None, what: str | None = None):
    """Check an image file from its header alone, exactly as :func:`load_image` will (format, size limits, the
    decoding budget for ``size=(height, width)``), and return its upright ``(height, width)``: for callers that
    refuse bad input before starting any work (the CLI, the app's uploads). ``what`` names the file in errors
    (default ``image '<path>'``)."""
    path = Path(path)
    with _open_image(path, size, what or f"image {str(path)!r}") as (_, upright):
        return upright


def load_image(path: str | os.PathLike, size: tuple[int, int] | None = None) -> Tensor:
    """Read an image file as ``[3, H, W]`` float in [0, 1], decoded by its mode and upright (EXIF orientation applied).

    Memory follows the request, not the file. The header is checked before anything is decoded (format among
    :data:`IMAGE_FORMATS`, :func:`check_image_size`, and with ``size=(height, width)`` the pixels to decode against
    :func:`image_budget`); a JPEG is decoded at the smallest power-of-two reduction still covering ``size``, and any
    other format is box-averaged by the largest whole factor still covering it before it becomes floats. Animated
    files (GIF, WebP, PNG) give their first frame. 8-bit modes (grayscale, palette, RGB, CMYK) are converted to RGB,
    an alpha channel is composited onto white; 16-bit grayscale (``I;16*``) is divided by 65535; float images
    (``F``) must already lie in [0, 1]; 32-bit integer images (``I``, no defined range) are refused.
    """
    path = Path(path)
    what = f"image {str(path)!r}"
    with _open_image(path, size, what) as (img, _):
        orientation = _orientation(img)
        img.load()
        return _to_tensor(img, what, max(size) if size is not None else None, orientation)


@contextmanager
def _open_image(path: Path, size: tuple[int, int] | None, what: str) -> Iterator[tuple[Image.Image, tuple[int, int]]]:
    """``path`` opened with only its header read and checked, a JPEG set to decode at a reduced scale covering
    ``size``; yields it and the file's upright ``(height, width)``. Decoding errors inside become one
    :class:`ImageInputError` naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} does not exist" if not path.exists() else f"{what} is not a regular file")
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as img:
            width, height = img.size  # from the header; nothing decoded yet
            check_image_size(height, width, what)
            upright = (width, height) if _orientation(img) in (5, 6, 7, 8) else (height, width)
            if size is not None and img.format in ("JPEG", "MPO"):
                side = max(size)  # the EXIF orientation may swap the sides: cover the request either way
                img.draft("RGB", (side, side))  # DCT-domain downscale, never below the requested size
            budget = image_budget(size)
            if img.size[0] * img.size[1] > budget:  # a JPEG counts at its reduced scale
                scale = (budget / (width * height)) ** 0.5
                raise ImageInputError(
                    f"{what} is {width}x{height} pixels ({width * height / 1e6:.1f} MP); for a {size[1]}x{size[0]} "
                    f"result at most {budget / 1e6:.0f} MP are decoded. Resize it to {int(width * scale)}x"
                    f"{int(height * scale)} or smaller first (or save it as JPEG, which decodes at reduced scale)"
                )
            yield img, upright
    except ImageInputError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageInputError(f"{what} is too large to decode safely ({e}); downscale it first") from None
    except UnidentifiedImageError:
        raise ImageInputError(f"cannot read {what}: it is not a PNG, JPEG, WebP, BMP, GIF or TIFF image") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageInputError(f"cannot read {what}: {e}. Use a PNG, JPEG or WebP file.") from None


_TRANSPOSE = {  # EXIF orientation -> the transposition that makes the image upright
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1 = upright) from what the header holds: the base method, because PNG's own decodes the
    whole image to look for EXIF after the pixels."""
    try:
        return int(Image.Image.getexif(img).get(0x0112, 1))
    except (TypeError, ValueError):  # a damaged tag: take the pixels as stored
        return 1


def _to_tensor(img: Image.Image, what: str, side: int | None = None, orientation: int = 1) -> Tensor:
    """A decoded PIL image -> ``[3, H, W]`` float in [0, 1], scaled by what its mode means (never by its values),
    box-averaged by the largest whole factor keeping both sides >= ``side`` (before it becomes floats, so a large
    file costs its decoded bytes, not four times them), then turned upright."""

    def small(im: Image.Image) -> Image.Image:
        factor = min(im.size) // side if side else 1
        im = im.reduce(factor) if factor > 1 else im
        return im.transpose(_TRANSPOSE[orientation]) if orientation in _TRANSPOSE else im

    def gray(values: np.ndarray) -> Tensor:  # [H, W] -> [3, H, W]
        return torch.from_numpy(np.array(values, dtype=np.float32))[None].expand(3, -1, -1).clone()

    if img.mode.startswith("I;16") or (img.mode == "I" and img.format == "PNG"):  # older Pillow opens 16-bit PNG as I
        return gray(np.asarray(small(img.convert("I") if img.mode != "I" else img), np.float32) / 65535.0)
    if img.mode == "I":
        raise ImageInputError(
            f"{what} is a 32-bit integer image, whose value range is not defined; save it as an 8- or 16-bit PNG"
        )
    if img.mode == "F":
        values = np.asarray(img, dtype=np.float32)  # checked before averaging, which could hide an outlier
        if not (np.isfinite(values).all() and values.min() >= 0.0 and values.max() <= 1.0):
            raise ImageInputError(
                f"{what} is a floating-point image with values in [{np.nanmin(values):g}, {np.nanmax(values):g}]; "
                f"float images must hold values in [0, 1] (or save it as 8- or 16-bit PNG)"
            )
        return gray(np.asarray(small(img), np.float32))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # premultiplied alpha, so that averaging and compositing onto white are both exact
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")
        premultiplied = np.asarray(small(rgba.convert("RGBa")), np.float32)  # [h, w, 4]
        rgb = premultiplied[..., :3] + (255.0 - premultiplied[..., 3:])  # over white
        return torch.from_numpy(rgb).permute(2, 0, 1).contiguous() / 255.0
    rgb = np.array(small(img if img.mode == "RGB" else img.convert("RGB")), dtype=np.uint8)  # [h, w, 3]
    return torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0


PIXEL_RANGE = {torch.uint8: 255.0, torch.uint16: 65535.0}  # integer tensors with a defined range, as image modes


def image_tensor(image: Tensor | np.ndarray | Image.Image, what: str = "image") -> Tensor:
    """An image already in memory -> ``[3, H, W]`` float in [0, 1], read the way :func:`load_image` reads files.

    A PIL image by its mode. A tensor or array as ``[C, H, W]``, ``[H, W, C]`` (PIL/numpy layout), ``[H, W]`` or a
    batch of one, with 1 (grey), 3 (RGB) or 4 (RGBA, composited onto white) channels; ``uint8`` is divided by 255,
    ``uint16`` by 65535, and floating point must lie in [0, 1] (values within 1/255 of it are clamped: resampling
    overshoot). Anything else is refused naming what to pass."""
    if isinstance(image, Image.Image):
        check_image_size(image.height, image.width, what)
        return _to_tensor(image, what, orientation=_orientation(image))
    if isinstance(image, np.ndarray):
        try:
            image = torch.from_numpy(np.ascontiguousarray(image))
        except TypeError:  # object, string, complex arrays
            raise ImageInputError(f"{what} is an array of {image.dtype}; pass uint8 (0..255) or float (0..1)") from None
    if not isinstance(image, Tensor):
        from animatezero.checks import ArgumentTypeError

        raise ArgumentTypeError(
            f"{what} must be a file path, a PIL image, or a [3, H, W] / [H, W, 3] tensor or array, got "
            f"{image!r:.80} ({type(image).__name__})"
        )
    shape = list(image.shape)
    x = image[0] if image.ndim == 4 and len(image) == 1 else image  # a batch of one
    x = x[None] if x.ndim == 2 else x  # [H, W] grey -> [1, H, W]
    if x.ndim == 3 and x.shape[0] not in (1, 3, 4) and x.shape[-1] in (1, 3, 4):
        x = x.permute(2, 0, 1)  # [H, W, C] -> [C, H, W]
    if x.ndim != 3 or x.shape[0] not in (1, 3, 4):
        raise ImageInputError(
            f"{what} has shape {shape}; pass one image as [3, H, W] or [H, W, 3] (1 grey, 3 RGB or 4 RGBA channels)"
        )
    check_image_size(x.shape[1], x.shape[2], what)
    if x.dtype in PIXEL_RANGE:
        x = x.float() / PIXEL_RANGE[x.dtype]
    elif x.is_floating_point():
        x = x.float()
        if not bool(torch.isfinite(x).all()):
            raise ImageInputError(f"{what} contains NaN or infinite values; pass finite pixel values in [0, 1]")
        low, high = x.min().item(), x.max().item()
        if low < -1 / 255 or high > 1 + 1 / 255:
            fix = "divide it by 255" if high > 1 + 1 / 255 and low >= 0 else "map it to [0, 1], e.g. (x + 1) / 2"
            raise ImageInputError(f"{what} holds values in [{low:g}, {high:g}]; float pixels lie in [0, 1]: {fix}")
        x = x.clamp(0, 1)
    else:
        raise ImageInputError(
            f"{what} is a {x.dtype} tensor, whose value range is not defined; pass uint8 (0..255) or float (0..1)"
        )
    if x.shape[0] == 4:
        x = x[:3] * x[3:] + (1 - x[3:])  # RGBA over white, as for files
    return x.expand(3, -1, -1).clone() if x.shape[0] == 1 else x.contiguous()  # [3, H, W]
