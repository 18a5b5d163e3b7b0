"""Reading SD1.5 and AnimateDiff checkpoint files safely and loading them strictly into our modules.

Our modules are named like the checkpoints (CHECKPOINTS.md §1-2), so loading is: read the file, check which kind of
model it is, split it by prefix, infer the widths from the tensor shapes, and ``load_state_dict`` strictly. The only
keys ever skipped are the named entries of :data:`IGNORED_KEYS`; anything else missing or unexpected raises a
:class:`KeyMismatchError` with a grouped diff.

Safety: torch pickles are opened with ``weights_only=True`` only, so a file cannot run code, and ``.safetensors``
headers are bounds-checked by hand before the library parses them, so a crafted header cannot make us allocate
absurd memory. Any failure to read a file surfaces as a :class:`CheckpointError`.

Modules are built with their parameters on the ``meta`` device (buffers such as the sinusoidal tables are real), then
the file's tensors are assigned directly (``load_state_dict(assign=True)``): a checkpoint occupies memory once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import pickle
import pickletools
import re
import stat
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from models.attention import sinusoidal_positions
from models.config import CLIPTextConfig, MotionConfig, UNetConfig, VAEConfig

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."  # + "text_model." (most files) or directly "embeddings." (old files)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SAFETENSORS_SUFFIXES = (".safetensors",)
MAX_SAFETENSORS_HEADER = 100_000_000  # bytes; real SD1.5 headers are ~150 kB
MAX_CHECKPOINT_BYTES = 64 << 30  # a full fp32 SD1.5 file with EMA is ~7.7 GB; anything far larger is not one of ours
MAX_ZIP_RATIO = 20  # torch.save stores members uncompressed (ratio 1); a re-zipped file compresses floats ~1.1x
MAX_ZIP_SLACK = 1 << 20  # small members may compress well (a pickle of key names); allow this much beyond the ratio

FAMILIES = ("sd15", "sd15-inpaint", "sd2", "sdxl", "vae-only", "motion-module", "motion-lora", "lora", "unknown")

# The CompVis DDPM.register_schedule buffers (float32 [1000]); AnimateDiff uses its own linear-beta schedule.
DDPM_BUFFERS = frozenset(
    {
        "betas",
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod",
        "log_one_minus_alphas_cumprod",
        "sqrt_recip_alphas_cumprod",
        "sqrt_recipm1_alphas_cumprod",
        "posterior_variance",
        "posterior_log_variance_clipped",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
    }
)

# The only keys of an SD1.5 file that loading skips; every one has a reason.
IGNORED_KEYS: dict[str, Callable[[str], bool]] = {
    "DDPM schedule buffers (SD's scaled_linear betas; AnimateDiff samples with its own linear schedule)": (
        lambda k: k in DDPM_BUFFERS
    ),
    "model_ema.* (EMA copy of the UNet; like AnimateDiff we load the non-EMA model.diffusion_model.*)": (
        lambda k: k.startswith("model_ema.")
    ),
    "CLIP text_projection (used by CLIP's image-text head, not by SD)": (
        lambda k: k.startswith(CLIP_PREFIX) and k.endswith("text_projection.weight")
    ),
    "CLIP logit_scale (image-text head, not used by SD)": lambda k: (
        k.startswith(CLIP_PREFIX) and k.endswith("logit_scale")
    ),
    "CLIP position_ids (always arange(n); stored copies can be stale or float-rounded)": (
        lambda k: k.startswith(CLIP_PREFIX) and k.endswith("embeddings.position_ids")
    ),
}


# ---------------------------------------------------------------------------------------------------- errors
class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message says what was found, what was expected and what to do."""


class CorruptCheckpointError(CheckpointError):
    """The file is missing, empty, truncated or not a checkpoint at all."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle tried to import or call something a weights-only load refuses; nothing was executed."""


class WrongFamilyError(CheckpointError):
    """The file is a valid checkpoint of another kind (SDXL, SD2, a motion module given as SD, ...)."""

    def __init__(self, message: str, family: str):
        super().__init__(message)
        self.family = family


class KeyMismatchError(CheckpointError):
    """Missing, unexpected or wrongly shaped keys between a file and the module it should fill."""


# ----------------------------------------------------------------------------------------------- reading files
def check_checkpoint_file(path: str | os.PathLike) -> int:
    """Validate a checkpoint path before anything reads or hashes it; return its size in bytes.

    The rule: only a regular file (symlinks followed) of a plausible size whose first bytes look like the format its
    suffix names. So a FIFO or ``/dev/zero`` never blocks or streams forever, a directory gets one clear message and a
    huge sparse file is refused from its header in microseconds, not after hashing gigabytes.
    """
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise CorruptCheckpointError(f"checkpoint not found: {path} does not exist; check the path") from None
    except OSError as e:
        raise CorruptCheckpointError(f"cannot read the checkpoint {path}: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise CorruptCheckpointError(
            f"{path} is a directory, but a single-file checkpoint (.safetensors or .ckpt) was expected; "
            f"diffusers-format folders are not supported, pass the single-file checkpoint instead"
        )
    if not stat.S_ISREG(st.st_mode):
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else "a device or socket"
        raise CorruptCheckpointError(
            f"{path} is {kind}, not a regular file; a checkpoint must be a .safetensors or .ckpt file on disk"
        )
    size = st.st_size
    if size == 0:
        raise CorruptCheckpointError(f"{path} is empty (0 bytes); the download or copy probably failed, fetch it again")
    if size > MAX_CHECKPOINT_BYTES:
        raise CorruptCheckpointError(
            f"{path} is {size / 2**30:.1f} GiB, more than any SD1.5 or motion-module checkpoint "
            f"(limit {MAX_CHECKPOINT_BYTES / 2**30:.0f} GiB); it is not a checkpoint of a supported kind"
        )
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES or (suffix in PICKLE_SUFFIXES and _looks_like_safetensors(path, size)):
        check_safetensors_header(path)
    elif suffix in PICKLE_SUFFIXES:
        with open(path, "rb") as f:
            head = f.read(4)
        # a zip archive (torch.save since 1.6) or a legacy pickle stream (protocol opcode 0x80, or protocol 0/1 text)
        if not (head.startswith(b"PK\x03\x04") or head[:1] in (b"\x80", b"(", b"}", b"]", b"c")):
            raise CorruptCheckpointError(
                f"{path} does not start like a torch checkpoint (first bytes {head!r}: neither a zip archive nor a "
                f"pickle); it is corrupt or not a checkpoint, fetch it again"
            )
        if head.startswith(b"PK\x03\x04"):
            check_zip_members(path, size)
    else:
        raise CorruptCheckpointError(
            f"unknown checkpoint suffix {path.suffix!r} ({path.name}); expected .safetensors or .ckpt/.pt/.pth/.bin"
        )
    return size


def check_zip_members(path: str | os.PathLike, size: int | None = None) -> None:
    """Refuse a zip-format torch checkpoint whose members would inflate far beyond the file (a zip bomb), from the
    central directory alone: no member is decompressed. Limits: each member at most ``MAX_ZIP_RATIO`` times its
    compressed size (plus ``MAX_ZIP_SLACK``), and all members together at most that much beyond the file size."""
    path = Path(path)
    size = path.stat().st_size if size is None else size
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise CorruptCheckpointError(
            f"{path} could not be read as a torch checkpoint ({e}); the file is probably truncated or corrupt, "
            f"fetch it again"
        ) from None
    total = 0
    for info in infos:
        total += info.file_size
        if info.file_size > MAX_ZIP_RATIO * info.compress_size + MAX_ZIP_SLACK:
            raise CorruptCheckpointError(
                f"{path}: zip member {info.filename!r} would inflate from {info.compress_size:,} to "
                f"{info.file_size:,} bytes (ratio over {MAX_ZIP_RATIO}); torch checkpoints are stored uncompressed, "
                f"so this is a zip bomb or a corrupt file. Nothing was unpacked"
            )
    if total > MAX_ZIP_RATIO * size + MAX_ZIP_SLACK:
        raise CorruptCheckpointError(
            f"{path}: its zip members add up to {total:,} bytes uncompressed, more than {MAX_ZIP_RATIO}x the "
            f"{size:,}-byte file; this is a zip bomb or a corrupt file. Nothing was unpacked"
        )


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a regular file, read in chunks (constant memory). A FIFO, device or directory is refused
    before it is opened (opening a FIFO would block, a device could stream forever)."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise CorruptCheckpointError(f"{path} is not a regular file; only files on disk can be hashed")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_size):
            h.update(block)
    return h.hexdigest()


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a checkpoint into a flat ``{key: tensor}`` on the CPU.

    ``.safetensors``: the header is validated by hand first (see :func:`check_safetensors_header`). ``.ckpt``/
    ``.pt``/``.pth``/``.bin``: ``torch.load(weights_only=True)`` (memory-mapped for zip-format files), nested
    ``"state_dict"`` wrappers are unwrapped and non-tensor entries (``global_step``, ``animatediff_config``, ...) are
    dropped. Raises :class:`CheckpointError` subclasses, never a crash or an arbitrary exception from a bad file.
    """
    path = Path(path)
    size = check_checkpoint_file(path)  # type, size and header (and zip member sizes) before reading any data
    if path.suffix.lower() in SAFETENSORS_SUFFIXES or _looks_like_safetensors(path, size):  # or a renamed one
        return _read_safetensors(path, size)
    return _read_pickle(path)


def read_shapes(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{key: (shape, dtype name)}`` of a checkpoint without reading its data where possible: a safetensors file's
    validated header, or a memory-mapped torch pickle. For inspection tools."""
    path = Path(path)
    if path.suffix.lower() in SAFETENSORS_SUFFIXES and path.is_file() and path.stat().st_size > 0:
        header = check_safetensors_header(path)
        return {k: (tuple(v["shape"]), v["dtype"]) for k, v in header.items() if k != "__metadata__"}
    return {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in read_state_dict(path).items()}


_ST_ITEMSIZE = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


def _looks_like_safetensors(path: Path, size: int) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < size


def check_safetensors_header(path: str | os.PathLike) -> dict[str, Any]:
    """Parse and validate a safetensors header without trusting it; return the header dict.

    Checks: an 8-byte little-endian length smaller than the file and than 100 MB, a JSON object, and for every tensor
    a known dtype, a non-negative integer shape and ``data_offsets`` that lie inside the file's data section and
    match ``numel * itemsize``. So a crafted header can neither crash the reader nor make it allocate huge buffers.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw_len = f.read(8)
        if len(raw_len) < 8:
            raise CorruptCheckpointError(
                f"{path} is truncated: {size} bytes is shorter than the 8-byte safetensors header length; fetch it again"
            )
        n = int.from_bytes(raw_len, "little")
        if n > MAX_SAFETENSORS_HEADER:
            raise CorruptCheckpointError(
                f"{path}: safetensors header length {n:,} bytes exceeds the {MAX_SAFETENSORS_HEADER:,}-byte limit "
                f"(file size {size:,}); the file is corrupt or not a safetensors file"
            )
        if 8 + n > size:
            raise CorruptCheckpointError(
                f"{path} is truncated or not a safetensors file: its header claims {n:,} bytes but the file has only "
                f"{size:,} bytes; fetch it again"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as e:  # bad JSON or UTF-8, an integer over the digit limit, deep nesting
        reason = "nested too deeply" if isinstance(e, RecursionError) else str(e)[:200]
        raise CorruptCheckpointError(
            f"{path}: the safetensors header is not valid JSON ({reason}); the file is corrupt"
        ) from None
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"{path}: the safetensors header is a JSON {type(header).__name__}, not an object")
    data_size = size - 8 - n
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if not (isinstance(info, dict) and {"dtype", "shape", "data_offsets"} <= set(info)):
            raise CorruptCheckpointError(
                f"{path}: header entry {key!r} lacks dtype/shape/data_offsets; the file is corrupt"
            )
        shape, offsets, dtype = info["shape"], info["data_offsets"], info["dtype"]
        if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)):
            raise CorruptCheckpointError(f"{path}: tensor {key!r} has an invalid shape {shape!r}; the file is corrupt")
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]
        ):
            raise CorruptCheckpointError(
                f"{path}: tensor {key!r} has invalid data_offsets {offsets!r}; the file is corrupt"
            )
        if offsets[1] > data_size:
            raise CorruptCheckpointError(
                f"{path} is truncated: tensor {key!r} ends at data byte {offsets[1]:,} but the data section has only "
                f"{data_size:,} bytes; fetch the file again"
            )
        itemsize = _ST_ITEMSIZE.get(dtype)
        if itemsize is not None and offsets[1] - offsets[0] != math.prod(shape) * itemsize:
            raise CorruptCheckpointError(
                f"{path}: tensor {key!r} ({dtype} {shape}) needs {math.prod(shape) * itemsize:,} bytes but its "
                f"data_offsets span {offsets[1] - offsets[0]:,}; the file is corrupt"
            )
    return header


def _read_safetensors(path: Path, size: int) -> dict[str, Tensor]:
    # the header was validated by check_checkpoint_file
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        sd = load_file(str(path), device="cpu")
    except (SafetensorError, Exception) as e:
        raise CorruptCheckpointError(f"{path}: cannot read as safetensors ({e}); the file is corrupt") from None
    if not sd:
        raise CorruptCheckpointError(f"{path} is a valid safetensors file but contains no tensors")
    return sd


_SAFE_GLOBAL_MODULES = ("torch", "collections", "_codecs", "numpy")


def _pickle_globals(path: Path) -> list[str]:
    """The ``module.name`` globals a pickle would import, found by *reading* its opcodes (nothing is executed)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                name = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
                data = z.read(name) if name else b""
        else:
            with open(path, "rb") as f:
                data = f.read(64 << 20)
        found, strings = [], []
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
        return found
    except Exception:  # a corrupt stream: report what was found so far
        return []


def _read_pickle(path: Path) -> dict[str, Tensor]:
    is_zip = zipfile.is_zipfile(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Detected pickle protocol 4" and similar chatter
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as e:
        msg = str(e)
        m = re.search(r"GLOBAL ([\w.]+)", msg)
        unsafe = [m[1]] if m else [g for g in _pickle_globals(path) if not g.startswith(_SAFE_GLOBAL_MODULES)]
        if unsafe:
            raise UnsafeCheckpointError(
                f"{path}: refused to execute code while loading: the pickle wants to call or import "
                f"{', '.join(sorted(set(unsafe))[:5])}, which a weights-only load does not allow. Nothing in the file "
                f"was executed. A checkpoint should hold tensors only; get a .safetensors version of it, or convert "
                f"it yourself in a sandbox if you trust its source"
            ) from None
        detail = re.search(r"WeightsUnpickler error: ([^\n]+)", msg) or re.search(r"([^\n]*[Uu]nsupported[^\n]*)", msg)
        raise CorruptCheckpointError(
            f"{path} could not be read as a torch checkpoint with a weights-only load "
            f"({detail[1].strip() if detail else 'unpickling failed'}); nothing in the file was executed. It is "
            f"corrupt, truncated or not a checkpoint; fetch it again"
        ) from None
    except Exception as e:  # EOFError, BadZipFile, RuntimeError from the zip reader, MemoryError, ... on bad data
        first = str(e).strip().split(". ")[0][:200] if str(e).strip() else type(e).__name__
        raise CorruptCheckpointError(
            f"{path} could not be read as a torch checkpoint ({first}); the file is probably truncated or corrupt, "
            f"fetch it again"
        ) from None
    if isinstance(obj, Tensor) or not isinstance(obj, Mapping):
        raise CorruptCheckpointError(
            f"{path} holds a {type(obj).__name__}, not a dict of tensors; expected a state dict checkpoint"
        )
    while isinstance(obj.get("state_dict"), Mapping):  # CompVis / Lightning wrappers, possibly nested
        obj = obj["state_dict"]
    sd = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, Tensor)}
    if not sd:
        top = ", ".join(repr(k) for k in list(obj)[:8])
        raise CorruptCheckpointError(
            f"{path} contains no tensors at the top level (keys: {top}); expected a flat state dict, optionally under "
            f"'state_dict'"
        )
    return sd


# ------------------------------------------------------------------------------------------------- detection
def _shape(v: Any) -> tuple[int, ...]:
    return tuple(v.shape) if hasattr(v, "shape") else tuple(v)


def _context_dim(sd: Mapping[str, Any], prefix: str = UNET_PREFIX) -> int | None:
    for k, v in sd.items():
        if k.startswith(prefix) and k.endswith("attn2.to_k.weight"):
            return _shape(v)[-1]
    return None


def detect_family(sd: Mapping[str, Any]) -> str:
    """Which kind of checkpoint a state dict is (values may be tensors or shapes); one of :data:`FAMILIES`.

    Rules, in order: ``motion_modules.`` keys with ``_lora.`` -> "motion-lora", without an LDM UNet -> "motion-module";
    kohya ``lora_unet_``/``lora_te_`` or ``lora_down``/``lora_A`` or spatial ``processor.*_lora`` keys -> "lora";
    an LDM UNet (``model.diffusion_model.``) with ``label_emb``/``conditioner.`` or context 2048 -> "sdxl", context 1024
    or an OpenCLIP ``cond_stage_model.model.`` -> "sd2", 9 input channels -> "sd15-inpaint", 4 -> "sd15";
    a bare or ``first_stage_model.`` VAE without UNet/text encoder -> "vae-only"; otherwise "unknown".
    """
    keys = list(sd)
    has_unet = any(k.startswith(UNET_PREFIX) for k in keys)
    motion = [k for k in keys if "motion_modules." in k]
    if motion:
        if any("_lora." in k for k in motion):
            return "motion-lora"
        if not has_unet:
            return "motion-module"
    if any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for k in keys) or any(
        re.search(r"\.(lora_down|lora_up|lora_A|lora_B)\.|processor\.\w+_lora\.", k) for k in keys
    ):
        return "lora"
    if any(k.startswith(("conditioner.embedders.", UNET_PREFIX + "label_emb.")) for k in keys):
        return "sdxl"
    conv_in = sd.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is not None:
        ctx = _context_dim(sd)
        if ctx == 2048:
            return "sdxl"
        if ctx == 1024 or any(k.startswith("cond_stage_model.model.") for k in keys):
            return "sd2"
        cin = _shape(conv_in)[1]
        return {4: "sd15", 9: "sd15-inpaint"}.get(cin, "unknown")
    if not has_unet and not any(k.startswith("cond_stage_model.") for k in keys):
        if any(k.startswith(VAE_PREFIX + "encoder.") or k.startswith(VAE_PREFIX + "decoder.") for k in keys):
            return "vae-only"
        if "encoder.conv_in.weight" in sd and "decoder.conv_out.weight" in sd:
            return "vae-only"
    return "unknown"


def detect_motion_version(sd: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """``(version, pe_length)`` of motion-module keys: a ``mid_block.motion_modules`` key means v2, otherwise the
    stored ``pos_encoder.pe`` length says v1 (24) or v3 (32). ``None`` where the file does not tell."""
    pe_len = next((_shape(v)[1] for k, v in sd.items() if k.endswith("pos_encoder.pe")), None)
    if any("mid_block.motion_modules." in k for k in sd):
        return 2, pe_len
    return {24: 1, 32: 3}.get(pe_len), pe_len


def _top_prefixes(keys: Iterable[str], n: int = 6) -> str:
    counts = Counter(".".join(k.split(".")[:2]) for k in keys)
    return ", ".join(f"{p}.* ({c})" for p, c in counts.most_common(n))


def family_advice(family: str, sd: Mapping[str, Any], wanted: str) -> str:
    """What the file is and what to do with it, for an error raised when ``wanted`` was expected."""
    if family == "motion-module":
        version, _ = detect_motion_version(sd)
        v = f" (v{version})" if version else ""
        return f"this looks like an AnimateDiff motion module{v}; pass it as motion_module= (load_motion_module)"
    if family == "motion-lora":
        return "this looks like an AnimateDiff MotionLoRA; pass it as motion_lora= (load_motion_lora) on top of a v2 motion module"
    if family == "lora":
        return "this is a LoRA (low-rank deltas only, e.g. kohya lora_unet_/lora_te_ keys), not a full model; pass a full SD1.5 checkpoint as the base model"
    if family == "vae-only":
        return "this is a standalone VAE; pass it as vae= (load_vae) together with a full SD1.5 checkpoint"
    if family == "sd15-inpaint":
        cin = _shape(sd[UNET_PREFIX + "input_blocks.0.0.weight"])[1]
        return (
            f"this is an SD1.5 inpainting checkpoint (UNet conv_in has {cin} input channels, expected 4); "
            f"AnimateDiff needs a standard text-to-image SD1.5 checkpoint such as v1-5-pruned-emaonly"
        )
    if family == "sd2":
        return (
            f"this is a Stable Diffusion 2.x checkpoint (cross-attention context {_context_dim(sd)}, expected 768 "
            f"for SD1.5's CLIP ViT-L/14); AnimateDiff SD1.5 motion modules need an SD1.x checkpoint"
        )
    if family == "sdxl":
        return "this is an SDXL checkpoint; this project implements SD1.5 + AnimateDiff only, pass an SD1.5 checkpoint"
    if family == "sd15":
        return f"this is a full SD1.5 checkpoint; pass it as the base model (load_sd15), not as {wanted}"
    conv_in = sd.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is not None:
        return f"its UNet has {_shape(conv_in)[1]} input channels (expected 4); only standard SD1.5 checkpoints are supported"
    if any(k.startswith(("down_blocks.", "up_blocks.", "unet.", "conv_in.")) for k in sd):
        return "it looks like a diffusers-format model; pass the original single-file (LDM) checkpoint instead"
    return f"its keys are not an SD1.5 or AnimateDiff layout (top-level prefixes: {_top_prefixes(sd)})"


# --------------------------------------------------------------------------------------- config from shapes
def _indices(keys: Iterable[str], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m[1]) for k in keys if (m := rx.match(k))})


def infer_unet_config(u: Mapping[str, Any]) -> UNetConfig:
    """UNet widths from LDM keys without the ``model.diffusion_model.`` prefix (heads and groups keep SD1.5's 8/32)."""
    try:
        mc, cin = _shape(u["input_blocks.0.0.weight"])[:2]
        n_in = len(_indices(u, r"input_blocks\.(\d+)\."))
        ops = _indices(u, r"input_blocks\.(\d+)\.0\.op\.weight")
        levels = len(ops) + 1
        nrb, rem = divmod(n_in - 1 - len(ops), levels)
        if rem or nrb < 1:
            raise CheckpointError(f"{n_in} input blocks with {len(ops)} downsamplers do not form a UNet")
        mult, attn = [], []
        for level in range(levels):
            n = 1 + level * (nrb + 1)
            c = _shape(u.get(f"input_blocks.{n}.0.out_layers.3.weight", u[f"input_blocks.{n}.0.in_layers.2.weight"]))[0]
            if c % mc:
                raise CheckpointError(f"level {level} width {c} is not a multiple of model_channels {mc}")
            mult.append(c // mc)
            if f"input_blocks.{n}.1.norm.weight" in u:
                attn.append(level)
        return UNetConfig(
            model_channels=mc,
            channel_mult=tuple(mult),
            num_res_blocks=nrb,
            attention_levels=tuple(attn),
            context_dim=_context_dim(u, "") or UNetConfig().context_dim,
            in_channels=cin,
            out_channels=_shape(u.get("out.2.weight", (cin,)))[0],  # if missing, the strict load reports it
        )
    except KeyError as e:
        raise KeyMismatchError(f"cannot infer the UNet architecture: key {UNET_PREFIX}{e.args[0]} is missing") from None


def infer_vae_config(v: Mapping[str, Any]) -> VAEConfig:
    """VAE widths from LDM keys without the ``first_stage_model.`` prefix."""
    try:
        ch, cin = _shape(v["encoder.conv_in.weight"])[:2]
        levels = _indices(v, r"encoder\.down\.(\d+)\.")
        nrb = len(_indices(v, r"encoder\.down\.0\.block\.(\d+)\."))
        mult = tuple(_shape(v[f"encoder.down.{i}.block.0.conv1.weight"])[0] // ch for i in levels)
        return VAEConfig(
            ch=ch, ch_mult=mult, num_res_blocks=nrb, z_channels=_shape(v["decoder.conv_in.weight"])[1], in_channels=cin
        )
    except KeyError as e:
        raise KeyMismatchError(f"cannot infer the VAE architecture: key {VAE_PREFIX}{e.args[0]} is missing") from None


def infer_clip_config(c: Mapping[str, Any]) -> CLIPTextConfig:
    """Text-encoder widths from HF keys ``text_model.*``; heads = width // 64 (head_dim 64 as in every CLIP)."""
    try:
        vocab, width = _shape(c["text_model.embeddings.token_embedding.weight"])
        return CLIPTextConfig(
            vocab_size=vocab,
            max_positions=_shape(c["text_model.embeddings.position_embedding.weight"])[0],
            width=width,
            layers=len(_indices(c, r"text_model\.encoder\.layers\.(\d+)\.")),
            heads=max(1, width // 64),
            mlp_dim=_shape(c["text_model.encoder.layers.0.mlp.fc1.weight"])[0],
        )
    except KeyError as e:
        raise KeyMismatchError(f"cannot infer the text encoder: key {CLIP_PREFIX}{e.args[0]} is missing") from None


def infer_motion_config(m: Mapping[str, Any], version: int, max_positions: int) -> MotionConfig:
    """Motion-module widths from keys ``{down,mid,up}_blocks.*`` (heads and groups keep AnimateDiff's 8/32)."""
    try:
        levels = _indices(m, r"down_blocks\.(\d+)\.")
        ch = tuple(_shape(m[f"down_blocks.{i}.motion_modules.0.temporal_transformer.norm.weight"])[0] for i in levels)
        layers = len(_indices(m, r"down_blocks\.0\.motion_modules\.(\d+)\."))
    except KeyError as e:
        raise KeyMismatchError(f"cannot infer the motion-module widths: key {e.args[0]} is missing") from None
    if not ch:
        raise KeyMismatchError("the motion module has no down_blocks.*.motion_modules.* keys")
    return MotionConfig(version=version, block_channels=ch, layers_per_block=layers, max_positions=max_positions)


# ---------------------------------------------------------------------------------------------- strict loading
def _group_keys(keys: Iterable[str], max_groups: int = 8) -> list[str]:
    """Group keys at the first depth where they differ, each group shown by its longest common prefix."""
    parts = [k.split(".") for k in sorted(keys)]
    depth = 1
    while depth < max(len(p) for p in parts) and len({tuple(p[:depth]) for p in parts}) == 1:
        depth += 1
    groups: dict[tuple[str, ...], list[list[str]]] = {}
    for p in parts:
        groups.setdefault(tuple(p[:depth]), []).append(p)
    lines = []
    for members in list(groups.values())[:max_groups]:
        common = members[0]
        for p in members[1:]:
            n = next((i for i, (a, b) in enumerate(zip(common, p)) if a != b), min(len(common), len(p)))
            common = common[:n]
        if len(members) == 1:
            lines.append(f"    {'.'.join(members[0])}")
        else:
            lines.append(f"    {'.'.join(common)}.* ({len(members)}), e.g. {'.'.join(members[0])}")
    if len(groups) > max_groups:
        lines.append(f"    ... and {len(groups) - max_groups} more groups")
    return lines


def key_diff(
    missing: Iterable[str], unexpected: Iterable[str], mismatched: Mapping[str, tuple[Any, Any]] | None = None
) -> str:
    """A grouped, readable diff of missing / unexpected / wrongly shaped keys."""
    missing, unexpected = sorted(missing), sorted(unexpected)
    parts = []
    if missing:
        parts += [f"  missing from the file ({len(missing)}):", *_group_keys(missing)]
    if unexpected:
        parts += [f"  unexpected in the file ({len(unexpected)}):", *_group_keys(unexpected)]
    if mismatched:
        parts.append(f"  wrong shapes ({len(mismatched)}):")
        for k, (got, want) in list(sorted(mismatched.items()))[:10]:
            parts.append(f"    {k}: file {list(got)}, model {list(want)}")
    return "\n".join(parts)


_INIT_FUNCTIONS = (
    "uniform_",
    "normal_",
    "trunc_normal_",
    "constant_",
    "ones_",
    "zeros_",
    "eye_",
    "dirac_",
    "xavier_uniform_",
    "xavier_normal_",
    "kaiming_uniform_",
    "kaiming_normal_",
    "orthogonal_",
    "sparse_",
)


@contextlib.contextmanager
def skip_init_on_meta() -> Iterator[None]:
    """Make ``torch.nn.init`` functions no-ops on meta tensors (random init of a meta tensor is meaningless, and
    ``normal_`` on meta would import ``torch._dynamo``, which takes seconds)."""
    originals = {name: getattr(nn.init, name) for name in _INIT_FUNCTIONS if hasattr(nn.init, name)}

    def wrap(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        def init(tensor: Tensor, *args: Any, **kwargs: Any) -> Tensor:
            return tensor if tensor.is_meta else fn(tensor, *args, **kwargs)

        return init

    for name, fn in originals.items():
        setattr(nn.init, name, wrap(fn))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(nn.init, name, fn)


@contextlib.contextmanager
def _params_on_meta() -> Iterator[None]:
    """Build modules with parameters on the meta device but real buffers (e.g. sinusoidal tables), so construction
    allocates and initialises no weights; the checkpoint's tensors are assigned afterwards."""
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        with skip_init_on_meta():
            yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def build_on_meta(factory: Callable[[], nn.Module]) -> nn.Module:
    """Run ``factory()`` with parameters created on the meta device (buffers stay real)."""
    with _params_on_meta():
        return factory()


def load_strict(
    module: nn.Module,
    sd: dict[str, Tensor],
    *,
    what: str,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    key_prefix: str = "",
) -> nn.Module:
    """Assign ``sd`` to ``module`` strictly: every key must match in name and shape, or a :class:`KeyMismatchError`
    with a grouped diff (keys shown with ``key_prefix``, i.e. as in the file) is raised. Floating tensors are cast to
    ``dtype`` and moved to ``device``; ``sd`` is consumed (emptied) so converted copies do not coexist with it."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    missing = expected.keys() - sd.keys()
    unexpected = sd.keys() - expected.keys()
    mismatched = {
        key_prefix + k: (tuple(sd[k].shape), expected[k])
        for k in expected.keys() & sd.keys()
        if tuple(sd[k].shape) != expected[k]
    }
    if missing or unexpected or mismatched:
        raise KeyMismatchError(
            f"the {what} weights do not match the model:\n"
            + key_diff({key_prefix + k for k in missing}, {key_prefix + k for k in unexpected}, mismatched)
            + "\nThe file is not a standard checkpoint of this kind or is damaged; check it with "
            "scripts/inspect_checkpoint.py"
        )
    reference = module.state_dict()
    wrong_kind = {
        key_prefix + k: str(v.dtype).removeprefix("torch.")
        for k, v in sd.items()
        if reference[k].is_floating_point() and not v.is_floating_point()
    }
    if wrong_kind:
        raise CheckpointError(
            f"the {what} weights hold integer or boolean tensors where floating-point weights belong:\n"
            + "\n".join(f"    {k}: {d}" for k, d in list(wrong_kind.items())[:8])
            + "\nQuantized or otherwise converted files are not supported; use the original fp16/fp32 checkpoint"
        )
    converted, non_finite = {}, []
    for k in list(sd):
        t = sd.pop(k)
        converted[k] = t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)
        if converted[k].is_floating_point() and not bool(torch.isfinite(converted[k]).all()):
            non_finite.append(key_prefix + k)
    if non_finite:  # NaN weights only ever give black frames; say which, at load time
        raise CheckpointError(
            f"the {what} weights contain NaN or infinite values in {len(non_finite)} tensor(s) (in the file, or "
            f"overflowing when cast to {str(dtype).removeprefix('torch.')}):\n"
            + "\n".join(f"    {k}" for k in non_finite[:8])
            + ("\n    ..." if len(non_finite) > 8 else "")
            + "\nThe file is damaged (a diverged training run or a bad merge); use another checkpoint"
        )
    module.load_state_dict(converted, strict=True, assign=True)
    module.to(device=device, dtype=dtype)  # buffers created at construction
    leftover = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.device.type == "meta"]
    if leftover:
        raise RuntimeError(f"internal error: {what} tensors left on the meta device after loading: {leftover[:5]}")
    return module.eval().requires_grad_(False)


def split_prefix(sd: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def clip_component(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The text encoder as ``text_model.*`` keys, from files with or without ``text_model.`` after the prefix."""
    out = {}
    for k, v in split_prefix(sd, CLIP_PREFIX).items():
        out[k if k.startswith("text_model.") else "text_model." + k] = v
    return out


def _check_position_ids(clip: dict[str, Tensor]) -> None:
    ids = clip.pop("text_model.embeddings.position_ids", None)
    if ids is None:
        return
    n = ids.shape[-1]
    if ids.numel() != n or not torch.equal(ids.reshape(-1).double().round(), torch.arange(n, dtype=torch.float64)):
        warnings.warn(
            f"the checkpoint's CLIP position_ids ({ids.dtype}, {list(ids.shape)}) are not arange({n}) (a known "
            f"artifact of some merges); they are ignored and arange({n}) is used, as in SD1.5",
            stacklevel=3,
        )


def _fix_vae_attention(vae: dict[str, Tensor]) -> None:
    """Accept linear ``[C, C]`` mid-attention weights (old diffusers conversions) as 1x1 convs ``[C, C, 1, 1]``."""
    for k, v in list(vae.items()):
        if re.fullmatch(r"(encoder|decoder)\.mid\.attn_1\.(q|k|v|proj_out)\.weight", k) and v.ndim == 2:
            vae[k] = v[:, :, None, None]


def is_ignored(key: str) -> bool:
    return any(rule(key) for rule in IGNORED_KEYS.values())


def load_vae(
    path: str | os.PathLike, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> nn.Module:
    """A standalone VAE file (e.g. ``vae-ft-mse-840000-ema-pruned``: LDM keys with or without ``first_stage_model.``)
    or the VAE of a full SD1.5 file. Keys outside ``encoder./decoder./quant_conv./post_quant_conv.`` (training
    extras such as ``loss.*`` or ``model_ema.*``) are skipped."""
    sd = read_state_dict(path)
    family = detect_family(sd)
    if family not in ("vae-only", "sd15"):
        raise WrongFamilyError(f"{path} is not a VAE: {family_advice(family, sd, 'vae=')}", family)
    return _build_vae(sd, path, device, dtype)


def _build_vae(sd: Mapping[str, Tensor], path: Any, device: Any, dtype: torch.dtype) -> nn.Module:
    from models.vae import AutoencoderKL

    vae = split_prefix(sd, VAE_PREFIX) if any(k.startswith(VAE_PREFIX) for k in sd) else dict(sd)
    vae = {k: v for k, v in vae.items() if k.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv."))}
    if not vae:
        raise KeyMismatchError(f"{path} has no VAE weights (first_stage_model.encoder.*, ...)")
    _fix_vae_attention(vae)
    cfg = infer_vae_config(vae)
    return load_strict(
        build_on_meta(lambda: AutoencoderKL(cfg)), vae, what="VAE", device=device, dtype=dtype, key_prefix=VAE_PREFIX
    )


def load_sd15(
    path: str | os.PathLike,
    *,
    vae: str | os.PathLike | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[nn.Module, nn.Module, nn.Module]:
    """Load an SD1.5 single-file checkpoint -> ``(unet, vae, text_encoder)`` in eval mode on ``device``/``dtype``.

    Widths come from the tensor shapes (tiny test files and real files take the same path). The non-EMA
    ``model.diffusion_model.*`` is used. ``vae`` replaces (or supplies, for "noVAE" files) the VAE from a standalone
    VAE file. Other families are rejected with a :class:`WrongFamilyError` naming what the file is.
    """
    from models.clip_text import CLIPTextModel
    from models.unet import UNetModel

    sd = read_state_dict(path)
    family = detect_family(sd)
    if family != "sd15":
        raise WrongFamilyError(
            f"{path} is not an SD1.5 checkpoint: {family_advice(family, sd, 'the base model')}", family
        )

    known = (UNET_PREFIX, VAE_PREFIX, CLIP_PREFIX)
    stray = [k for k in sd if not k.startswith(known) and not is_ignored(k)]
    if stray:  # CHECKPOINTS.md §1.1: keys outside the three components are not model weights; say so, never silently
        warnings.warn(
            f"{path}: ignoring {len(stray)} keys outside the UNet/VAE/text-encoder prefixes (not model weights):\n"
            + key_diff([], stray),
            stacklevel=2,
        )

    has_vae = any(k.startswith(VAE_PREFIX) for k in sd)
    if vae is None and not has_vae:
        raise KeyMismatchError(
            f"{path} has no VAE weights (first_stage_model.*), as some 'noVAE' community files do; pass a standalone "
            f"VAE file as vae= (e.g. vae-ft-mse-840000-ema-pruned.safetensors)"
        )
    if not any(k.startswith(CLIP_PREFIX) for k in sd):
        raise KeyMismatchError(f"{path} has no text-encoder weights (cond_stage_model.transformer.*)")

    clip = clip_component(sd)
    _check_position_ids(clip)
    clip = {k: v for k, v in clip.items() if not is_ignored(CLIP_PREFIX + k)}
    clip_cfg = infer_clip_config(clip)
    text_encoder = load_strict(
        build_on_meta(lambda: CLIPTextModel(clip_cfg)),
        clip,
        what="text encoder",
        device=device,
        dtype=dtype,
        key_prefix=CLIP_PREFIX,
    )

    vae_module = load_vae(vae, device=device, dtype=dtype) if vae is not None else _build_vae(sd, path, device, dtype)

    unet_sd = split_prefix(sd, UNET_PREFIX)
    sd.clear()  # drop the reader's references so converted tensors replace, not duplicate, the file's
    unet_cfg = infer_unet_config(unet_sd)
    unet = load_strict(
        build_on_meta(lambda: UNetModel(unet_cfg)),
        unet_sd,
        what="UNet",
        device=device,
        dtype=dtype,
        key_prefix=UNET_PREFIX,
    )
    return unet, vae_module, text_encoder


# -------------------------------------------------------------------------------------------- motion modules
_MOTION_ROOT = re.compile(r"^(?:.*?\.)?((?:down_blocks|up_blocks|mid_block)\..*motion_modules\..*)$")


def motion_keys(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Keys containing ``motion_modules.`` (as the official loader keeps), with any prefix before the block removed
    (``unet.``, ``module.``, a training wrapper)."""
    out = {}
    for k, v in sd.items():
        if "motion_modules." in k and (m := _MOTION_ROOT.match(k)):
            out[m[1]] = v
    return out


def _pe_tolerance(dtype: torch.dtype) -> float:
    return {torch.float16: 2e-3, torch.bfloat16: 1e-2}.get(dtype, 1e-5)


def load_motion_module(
    path: str | os.PathLike,
    *,
    unet_config: UNetConfig | None = None,
    version: int | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """Load an AnimateDiff motion-module file (v1 ``mm_sd_v14/15``, v2 ``mm_sd_v15_v2``, v3 ``v3_sd15_mm``).

    Version: a ``mid_block.motion_modules`` key means v2; otherwise the stored ``pe`` length 24 means v1 and 32 v3.
    A file without any ``pe`` (re-saved after AnimateDiff stopped reading it) cannot tell v1 from v3: it is loaded as
    v3 (32 positions) with a warning unless ``version=`` says otherwise. A stored ``pe`` must equal the sinusoid
    formula (it is then dropped and recomputed). ``unet_config`` (or a UNet's ``.config``) is checked against the
    module widths.
    """
    from models.motion_module import MotionModules

    sd = read_state_dict(path)
    family = detect_family(sd)
    if family != "motion-module":
        raise WrongFamilyError(
            f"{path} is not an AnimateDiff motion module: {family_advice(family, sd, 'motion_module=')}", family
        )
    mm = motion_keys(sd)
    del sd
    found, pe_len = detect_motion_version(mm)
    if version is None:
        if found is None and pe_len is None:
            found = 3
            warnings.warn(
                f"{path} stores no pos_encoder.pe, so v1 and v3 cannot be told apart; loading it as v3 (32 positions). "
                f"Pass version=1 for an mm_sd_v14/v15 file",
                stacklevel=2,
            )
        elif found is None:
            raise CheckpointError(
                f"{path}: motion-module pe length {pe_len} matches no known version (v1: 24, v2/v3: 32); "
                f"pass version= explicitly if this is a known variant"
            )
        version = found
    elif found is not None and found != version:
        raise CheckpointError(f"{path} looks like a v{found} motion module, but version={version} was requested")
    max_positions = pe_len or (24 if version == 1 else 32)

    for k in [k for k in mm if k.endswith("pos_encoder.pe")]:
        pe = mm.pop(k)
        if pe.ndim != 3 or pe.shape[1] != max_positions:
            raise KeyMismatchError(f"{path}: {k} has shape {list(pe.shape)}, expected [1, {max_positions}, C]")
        ref = sinusoidal_positions(torch.arange(pe.shape[1]), pe.shape[2])[None]
        err = (pe.float() - ref).abs().max().item()
        if not err <= _pe_tolerance(pe.dtype):
            raise CheckpointError(
                f"{path}: stored {k} differs from the AnimateDiff sinusoid formula by up to {err:.3g}; the file is "
                f"corrupt or a variant this loader does not know"
            )

    cfg = infer_motion_config(mm, version, max_positions)
    ucfg = getattr(unet_config, "config", unet_config)
    if ucfg is not None:
        unet_ch, unet_layers = tuple(ucfg.block_channels), ucfg.num_res_blocks
        if unet_ch != tuple(cfg.block_channels) or unet_layers != cfg.layers_per_block:
            raise CheckpointError(
                f"motion module / UNet mismatch: {path} has block channels {tuple(cfg.block_channels)} with "
                f"{cfg.layers_per_block} modules per down level, but the UNet has {unet_ch} with {unet_layers} res "
                f"blocks per level. SD1.5 motion modules (320/640/1280/1280) need an SD1.5 UNet; use a motion module "
                f"made for this base model"
            )

    expected = build_on_meta(lambda: MotionModules(cfg))
    expected_keys = set(expected.state_dict())
    if not any(k.startswith("mid_block.") for k in expected_keys) and any(k.startswith("mid_block.") for k in mm):
        raise KeyMismatchError(f"{path}: mid-block motion modules found, but version {version} has none")
    return load_strict(expected, mm, what=f"motion-module (v{version})", device=device, dtype=dtype)


def load_motion_lora(path: str | os.PathLike, motion: nn.Module, alpha: float = 1.0) -> list[str]:
    """Merge a MotionLoRA file into ``motion`` in place (``W += alpha * up @ down``); return the merged weight names.

    MotionLoRAs were released for v2 only. A LoRA with mid-block entries on a v1/v3 tree (no mid block) is refused,
    as is any LoRA whose targets or widths do not match ``motion``; nothing is changed in that case.
    """
    from models.motion_module import merge_motion_lora

    sd = read_state_dict(path)
    family = detect_family(sd)
    if family != "motion-lora":
        raise WrongFamilyError(f"{path} is not a MotionLoRA: {family_advice(family, sd, 'motion_lora=')}", family)
    lora = {k: v for k, v in motion_keys(sd).items() if "_lora." in k}
    cfg = motion.config
    if not cfg.mid_block and any(k.startswith("mid_block.") for k in lora):
        raise CheckpointError(
            f"{path} is a MotionLoRA for AnimateDiff v2 (it has mid-block entries), but the motion module is "
            f"v{cfg.version}, which has no mid block. MotionLoRAs need the mm_sd_v15_v2 motion module"
        )
    params = {k: tuple(p.shape) for k, p in motion.named_parameters()}
    bad = {}
    for k, v in lora.items():
        m = re.fullmatch(r"(.+\.attention_blocks\.\d+\.)processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight", k)
        if m is None:
            raise KeyMismatchError(
                f"{path}: {k} is not a MotionLoRA key (…processor.to_{{q,k,v,out}}_lora.{{down,up}}.weight)"
            )
        target = m[1] + ("to_out.0" if m[2] == "to_out" else m[2]) + ".weight"
        if target not in params:
            raise KeyMismatchError(
                f"{path}: {k} targets {target}, which this v{cfg.version} motion module does not have"
            )
        want = params[target][1] if m[3] == "down" else params[target][0]
        got = v.shape[1] if m[3] == "down" else v.shape[0]
        if v.ndim != 2 or got != want:
            bad[k] = (tuple(v.shape), params[target])
    if bad:
        raise CheckpointError(
            f"motion LoRA / motion module mismatch: {path} has widths that do not fit the motion module "
            f"(block channels {tuple(cfg.block_channels)}):\n"
            + "\n".join(f"    {k}: LoRA {list(s)} vs weight {list(w)}" for k, (s, w) in list(bad.items())[:8])
        )
    try:
        return merge_motion_lora(motion, lora, alpha)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
