"""Reading checkpoint files without trusting them: file checks, safetensors header checks, weights-only unpickling.

Every failure to read a file surfaces as a :class:`CheckpointError` subclass whose message says what was found and
what to do, never a crash or an arbitrary exception from a bad file.

- Before anything reads or hashes a file, :func:`check_checkpoint_file` makes sure it is a regular file of a
  plausible size whose first bytes match the format its suffix names (a FIFO or ``/dev/zero`` never blocks).
- ``.safetensors`` headers are bounds-checked by hand (:func:`check_safetensors_header`) before the library parses
  them, so a crafted header cannot make us allocate absurd memory.
- Torch pickles are opened with ``weights_only=True`` only, so a file cannot run code; zip-format ones are first
  checked for members that would inflate far beyond the file, and for more tensors or a larger pickle than any
  supported checkpoint has (:func:`check_zip_members`). The unpickled object is walked once, iteratively, for
  cycles and nesting deeper than :data:`MAX_NESTING` (:func:`check_structure`).
- Every tensor must own the bytes it claims: ``numel * itemsize`` within its storage (no expanded, zero-stride
  view that would materialise into gigabytes), checked before anything copies it (:func:`check_tensor_storage`).
- :func:`check_finite_tensors` refuses NaN/inf weights, naming them; the loaders call it on every tensor they use.
- Names from a file are shortened in messages (:func:`shorten`), so a 1 MB key cannot flood the terminal.

docs/reliability.md ("Weight files") lists each bad input and the test that builds it.
"""

from __future__ import annotations

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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
SAFETENSORS_SUFFIXES = (".safetensors",)
MAX_SAFETENSORS_HEADER = 32 << 20  # bytes; real SD1.5 headers are ~150 kB, LoRA training metadata adds a few MB
MAX_CHECKPOINT_BYTES = 64 << 30  # a full fp32 SD1.5 file with EMA is ~7.7 GB; anything far larger is not one of ours
MAX_ZIP_RATIO = 20  # torch.save stores members uncompressed (ratio 1); a re-zipped file compresses floats ~1.1x
MAX_ZIP_SLACK = 1 << 20  # small members may compress well (a pickle of key names); allow this much beyond the ratio
# The largest supported file, v1-5-pruned with its EMA copy, holds ~1,850 tensors (docs/checkpoints.md §1.1); LoRA
# variants hold a few thousand at most. Reading 300,000 tensors costs 20 s (safetensors) to minutes (pickle views),
# so more than this is refused from the header / zip directory before any of them is built.
MAX_TENSORS = 10_000
MAX_PICKLE_BYTES = 8 << 20  # data.pkl of a zip checkpoint: ~150 bytes per tensor, ~0.3 MB for a full SD1.5 file
MAX_NESTING = 32  # container depth in an unpickled checkpoint; Lightning dumps with optimizer state reach ~6
MAX_NAME_CHARS = 200  # a key or other name from a file is cut to this many characters in messages


def shorten(name: object, limit: int = MAX_NAME_CHARS) -> str:
    """``name`` (a key from a file) as a string of at most ``limit`` characters plus an ellipsis and its length,
    for messages: a file's key names are data, and a 1 MB one must not be echoed in full."""
    try:
        text = name if isinstance(name, str) else repr(name)
    except RecursionError:  # a deeply nested container from a pickle
        text = f"<a deeply nested {type(name).__name__}>"
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


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


class NonFiniteWeightsError(CheckpointError):
    """A weight the model would use holds NaN or infinity (:func:`check_finite_tensors` names which)."""


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
    if len(infos) > MAX_TENSORS + 16:  # one member per tensor storage (.../data/N), plus a few bookkeeping files
        storages = sum("/data/" in info.filename for info in infos)
        raise CorruptCheckpointError(
            f"{path} holds {storages:,} tensor storages ({len(infos):,} zip members), more than any supported "
            f"checkpoint (limit {MAX_TENSORS:,}); it is not an SD1.5, motion-module or LoRA file. Nothing was unpickled"
        )
    total = 0
    for info in infos:
        total += info.file_size
        if info.file_size > MAX_ZIP_RATIO * info.compress_size + MAX_ZIP_SLACK:
            raise CorruptCheckpointError(
                f"{path}: zip member {shorten(info.filename)!r} would inflate from {info.compress_size:,} to "
                f"{info.file_size:,} bytes (ratio over {MAX_ZIP_RATIO}); torch checkpoints are stored uncompressed, "
                f"so this is a zip bomb or a corrupt file. Nothing was unpacked"
            )
        if info.filename.endswith("data.pkl") and info.file_size > MAX_PICKLE_BYTES:
            raise CorruptCheckpointError(
                f"{path}: its pickle ({shorten(info.filename)}) is {info.file_size:,} bytes, more than any supported "
                f"checkpoint needs to describe its tensors (limit {MAX_PICKLE_BYTES:,}); it holds something else or "
                f"a huge number of tensors. Nothing was unpickled"
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
    dropped. Either way every tensor is checked to own the bytes it claims (:func:`check_tensor_storage`) before it
    is returned, so no caller can be made to materialise an expanded view. Raises :class:`CheckpointError`
    subclasses, never a crash or an arbitrary exception from a bad file. Values are not checked for NaN here (the
    loaders check the tensors they use: :func:`check_finite_tensors`).
    """
    path = Path(path)
    size = check_checkpoint_file(path)  # type, size and header (and zip member sizes) before reading any data
    if path.suffix.lower() in SAFETENSORS_SUFFIXES or _looks_like_safetensors(path, size):  # or a renamed one
        sd = _read_safetensors(path, size)
    else:
        sd = _read_pickle(path)
    check_tensor_storage(sd, path)
    return sd


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

    Checks: an 8-byte little-endian length smaller than the file and than 100 MB, a JSON object of at most
    :data:`MAX_TENSORS` tensors, and for every tensor a known dtype, a non-negative integer shape and
    ``data_offsets`` that lie inside the file's data section and match ``numel * itemsize``; all spans together fit
    in the data section (no two tensors can share bytes to multiply them). So a crafted header can neither crash the
    reader, nor make it allocate more than the file holds, nor keep it busy building 300,000 empty tensors.
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
    try:  # every tensor entry is a JSON object: stop parsing at the first object over the limit, not after all
        header = json.loads(raw, object_pairs_hook=_ObjectCounter(MAX_TENSORS + 2))  # + __metadata__ and the root
    except _TooManyObjects:
        raise CorruptCheckpointError(
            f"{path}: the safetensors header lists more than {MAX_TENSORS:,} tensors, more than any supported "
            f"checkpoint; it is not an SD1.5, motion-module or LoRA file"
        ) from None
    except (ValueError, RecursionError) as e:  # bad JSON or UTF-8, an integer over the digit limit, deep nesting
        reason = "nested too deeply" if isinstance(e, RecursionError) else str(e)[:200]
        raise CorruptCheckpointError(
            f"{path}: the safetensors header is not valid JSON ({reason}); the file is corrupt"
        ) from None
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"{path}: the safetensors header is a JSON {type(header).__name__}, not an object")
    if len(header) - ("__metadata__" in header) > MAX_TENSORS:  # the parse stopped at most one entry later
        raise CorruptCheckpointError(
            f"{path}: the safetensors header lists more than {MAX_TENSORS:,} tensors, more than any supported "
            f"checkpoint; it is not an SD1.5, motion-module or LoRA file"
        )
    data_size = size - 8 - n
    spans = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        name = shorten(key)
        if not (isinstance(info, dict) and {"dtype", "shape", "data_offsets"} <= set(info)):
            raise CorruptCheckpointError(
                f"{path}: header entry {name!r} lacks dtype/shape/data_offsets; the file is corrupt"
            )
        shape, offsets, dtype = info["shape"], info["data_offsets"], info["dtype"]
        if not (isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)):
            raise CorruptCheckpointError(
                f"{path}: tensor {name!r} has an invalid shape {shorten(shape)}; the file is corrupt"
            )
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]
        ):
            raise CorruptCheckpointError(
                f"{path}: tensor {name!r} has invalid data_offsets {shorten(offsets)}; the file is corrupt"
            )
        if offsets[1] > data_size:
            raise CorruptCheckpointError(
                f"{path} is truncated: tensor {name!r} ends at data byte {offsets[1]:,} but the data section has only "
                f"{data_size:,} bytes; fetch the file again"
            )
        if not isinstance(dtype, str):
            raise CorruptCheckpointError(
                f"{path}: tensor {name!r} has an invalid dtype {shorten(dtype)}; the file is corrupt"
            )
        itemsize = _ST_ITEMSIZE.get(dtype)
        if itemsize is not None and offsets[1] - offsets[0] != math.prod(shape) * itemsize:
            raise CorruptCheckpointError(
                f"{path}: tensor {name!r} ({shorten(dtype)} {shape}) needs {math.prod(shape) * itemsize:,} bytes but its "
                f"data_offsets span {offsets[1] - offsets[0]:,}; the file is corrupt"
            )
        spans += offsets[1] - offsets[0]
    if spans > data_size:
        raise CorruptCheckpointError(
            f"{path}: its tensors' data_offsets add up to {spans:,} bytes but the data section has {data_size:,}; "
            f"tensors overlap, which no safetensors writer produces. The file is corrupt or crafted"
        )
    return header


class _TooManyObjects(Exception):
    pass


class _ObjectCounter:
    """``json.loads`` object hook that builds dicts as usual and raises once more than ``limit`` were built."""

    def __init__(self, limit: int):
        self.left = limit

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        self.left -= 1
        if self.left < 0:
            raise _TooManyObjects
        return dict(pairs)


def _read_safetensors(path: Path, size: int) -> dict[str, Tensor]:
    # the header was validated by check_checkpoint_file
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        sd = load_file(str(path), device="cpu")
    except (SafetensorError, Exception) as e:
        raise CorruptCheckpointError(
            f"{path}: cannot read as safetensors ({shorten(str(e))}); the file is corrupt"
        ) from None
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
    check_structure(obj, path)  # no cycle, bounded depth: the unwrapping below and any later walk terminate
    while isinstance(obj.get("state_dict"), Mapping):  # CompVis / Lightning wrappers, possibly nested
        obj = obj["state_dict"]
    sd = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, Tensor)}
    if len(sd) > MAX_TENSORS:
        raise CorruptCheckpointError(
            f"{path} holds {len(sd):,} tensors, more than any supported checkpoint (limit {MAX_TENSORS:,}); it is "
            f"not an SD1.5, motion-module or LoRA file"
        )
    if not sd:
        top = ", ".join(repr(shorten(k, 60)) if isinstance(k, str) else shorten(k, 60) for k in list(obj)[:8])
        raise CorruptCheckpointError(
            f"{path} contains no tensors at the top level (keys: {top}); expected a flat state dict, optionally under "
            f"'state_dict'"
        )
    return sd


def check_structure(obj: Any, path: str | os.PathLike, max_depth: int = MAX_NESTING) -> None:
    """Refuse an unpickled checkpoint whose containers (dicts, lists, tuples, sets; keys included) refer to
    themselves or nest deeper than ``max_depth``. One iterative depth-first walk, each container entered once, so it
    terminates on any input: a pickle can build a dict that holds itself (``d['state_dict'] = d``), which would make
    an unwrapping loop spin forever, and deep nesting that would overflow any recursive walk."""
    entered: set[int] = set()  # containers whose walk has started
    on_path: set[int] = set()  # ... and not finished: meeting one again is a cycle
    stack: list[tuple[Any, int, bool]] = [(obj, 1, False)]
    while stack:
        node, depth, leaving = stack.pop()
        if leaving:
            on_path.discard(id(node))
            continue
        if id(node) in on_path:
            raise CorruptCheckpointError(
                f"{path}: the checkpoint's {type(node).__name__} contains itself (a reference cycle, e.g. a "
                f"'state_dict' that is its own parent); no saved model has one, the file is crafted or corrupt. "
                f"Nothing was loaded"
            )
        if id(node) in entered:
            continue  # shared, not cyclic: its contents were walked already
        if depth > max_depth:
            raise CorruptCheckpointError(
                f"{path}: the checkpoint's containers nest deeper than {max_depth} levels; a state dict is 1-3 "
                f"levels deep, the file is crafted or corrupt. Nothing was loaded"
            )
        entered.add(id(node))
        on_path.add(id(node))
        stack.append((node, depth, True))
        children = [*node.keys(), *node.values()] if isinstance(node, Mapping) else node
        stack.extend((c, depth + 1, False) for c in children if _is_container(c))


def _is_container(x: Any) -> bool:
    return isinstance(x, (Mapping, list, tuple, set, frozenset)) and not isinstance(x, Tensor)


def check_tensor_storage(sd: Mapping[str, Tensor], path: str | os.PathLike) -> None:
    """Refuse tensors that claim more bytes than they own, before anything copies them.

    A pickle stores a view as (storage, offset, shape, strides), so ``zeros(1).expand(1, 2**33)`` is 8 bytes on
    disk, and the first ``.float()``, ``.reshape`` or device move of it allocates 64 GB. The rule: each tensor's
    ``numel * itemsize`` fits in its storage, and all distinct tensors together fit in their distinct storages
    (views overlapping inside one storage would multiply it; one weight under two names, tied or transposed, counts
    once). Reads metadata only; costs microseconds per tensor.
    """
    storages: dict[tuple[int, str], int] = {}
    views: set[tuple] = set()
    claimed = 0
    for key, t in sd.items():
        need = t.numel() * t.element_size()
        storage = t.untyped_storage()
        have = storage.nbytes()
        if need > have:
            raise CorruptCheckpointError(
                f"{path}: tensor {shorten(key)!r} claims shape {list(t.shape)} ({need:,} bytes of "
                f"{str(t.dtype).removeprefix('torch.')}) but its stored data is only {have:,} bytes: it is an "
                f"expanded (zero-stride) or overlapping view, which a checkpoint never needs and which would allocate "
                f"{need:,} bytes when used. Nothing was copied; re-save the file with contiguous tensors "
                f"(t.contiguous().clone())"
            )
        where = (storage.data_ptr(), t.device.type)
        view = (*where, t.storage_offset() * t.element_size(), need)  # the bytes it covers, whatever its strides
        if need and view not in views:  # so tied weights (or a transposed copy) under two keys count once
            views.add(view)
            claimed += need
            storages[where] = have
    if claimed > sum(storages.values()):
        raise CorruptCheckpointError(
            f"{path}: its tensors claim {claimed:,} bytes together but share {sum(storages.values()):,} bytes of "
            f"stored data: overlapping views that would multiply the file when used. Nothing was copied; re-save "
            f"the file with contiguous tensors"
        )


def check_finite_tensors(tensors: Mapping[str, Tensor], what: str, *, key_prefix: str = "", note: str = "") -> None:
    """Refuse NaN or infinite values in any floating-point tensor of ``tensors``, naming them (up to 8).

    ``what`` says whose weights they are in the message (e.g. ``"the UNet weights"`` or ``"the LoRA file x"``),
    ``key_prefix`` is put before each key as it appears in the file. One read-only pass over each tensor
    (``torch.aminmax``: a NaN makes both ends NaN, an infinity shows at one end), no temporary as large as a tensor
    (so nothing to chunk), and one device sync for all tensors together. Every loader calls it on the tensors it is
    about to use: NaN weights only ever give black frames, after the full sampling.
    """
    ends, keys = [], []
    for k, t in tensors.items():
        if t.is_floating_point() and t.numel():
            ends.extend(torch.aminmax(t))
            keys.append(k)
    if not keys:
        return
    by_device: dict[torch.device, list[int]] = {}
    for i, e in enumerate(ends):
        by_device.setdefault(e.device, []).append(i)
    finite = [True] * len(ends)
    for idx in by_device.values():  # stack promotes mixed dtypes to the widest, so no end can overflow
        for i, ok in zip(idx, torch.isfinite(torch.stack([ends[i] for i in idx])).tolist()):
            finite[i] = ok
    bad = [key_prefix + k for j, k in enumerate(keys) if not (finite[2 * j] and finite[2 * j + 1])]
    if bad:
        raise NonFiniteWeightsError(
            f"{what} contain NaN or infinite values in {len(bad)} tensor(s){note}:\n"
            + "\n".join(f"    {shorten(k)}" for k in bad[:8])
            + ("\n    ..." if len(bad) > 8 else "")
            + "\nThe file is damaged (a diverged training run or a bad merge); use another file"
        )
