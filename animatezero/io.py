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
from PIL import Image, ImageOps
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
                side = max(size)  # the EXIF orientation may swap the sides: cover the request either way
                img.draft("RGB", (side, side))  # DCT-domain downscale, never below the requested size
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
