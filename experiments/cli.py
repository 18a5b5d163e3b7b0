"""What the command-line entry points share before any heavy import (no torch here, so ``--help`` and ``--cfg job``
stay fast): the one check of the values a user types, the top-level shortcuts, an output-folder check that creates
nothing, and the handler that turns a user error into one line on stderr and exit status 2.

Every value error names the key as typed and the fix, e.g.
``animatezero: error: seed=abc is not a whole number; use an integer from 0 to 2**64-1, e.g. seed=7``.
"""

from __future__ import annotations

import errno
import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes 64-bit seeds
MAX_STEPS = 1000  # the DDIM schedule has 1000 training timesteps

NAME_MAX = 255  # the longest file or folder name Linux, macOS and Windows file systems accept
MAX_MESSAGE = 1000  # characters of an error message shown; a longer one (a 1 MB value echoed back) is cut
DEVICES = ("auto", "cpu", "cuda", "mps")  # model.device: one of these, or cuda:N
# top-level shortcut -> the sampler key it sets ("size" sets both height and width)
SHORTCUTS = {"steps": "sampler.steps", "frames": "sampler.num_frames", "guidance": "sampler.guidance_scale"}
# settings that name a file or folder (those present in a config are checked: not empty, no over-long name)
PATH_KEYS = (  # the roots first: a bad paths.cache_dir is named as such, not as the checkpoint inside it
    "paths.output_root",
    "paths.multirun_root",
    "paths.cache_dir",
    "out_dir",
    "sweep_dir",
    "run_dir",
    "name",
    "checkpoint",
    "motion_module",
    "image",
    "end_image",
    "model.checkpoint",
    "motion.checkpoint",
    "motion.lora",
)


class ConfigError(ValueError):
    """A bad value on the command line; the message names the key and the fix."""


# ------------------------------------------------------------------------------------------------- values
def _int(key: str, value: Any, low: int, high: int | None, hint: str) -> int:
    """``value`` as an int in ``[low, high]``; strings of digits are accepted, floats, bools and words are not."""
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        number = int(value)
    top = f"{high}" if high is not None and high != MAX_SEED else "2**64-1" if high == MAX_SEED else None
    span = f"from {low} to {top}" if top else f"of at least {low}"
    if number is None:
        raise ConfigError(f"{key}={value} is not a whole number; use an integer {span}, e.g. {hint}")
    if number < low or (high is not None and number > high):
        raise ConfigError(f"{key}={value} is out of range; use an integer {span}, e.g. {hint}")
    return number


def _number(key: str, value: Any, low: float, hint: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number < low:
        raise ConfigError(f"{key}={value} must be a number of at least {low:g}; e.g. {hint}")
    return number


def _float_or_nan(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def parse_size(value: Any) -> tuple[int, int]:
    """``size=512`` (square) or ``size=768x512`` (width x height) -> ``(height, width)``."""
    text = str(value).lower().replace(" ", "")
    parts = text.split("x")
    if len(parts) not in (1, 2) or not all(p.isdigit() for p in parts):
        raise ConfigError(f"size={value} is not a size; use size=512 (square) or size=768x512 (width x height)")
    width, height = int(parts[0]), int(parts[-1])
    return height, width


def check_size_value(key: str, pixels: Any) -> int:
    """A height or width: a positive multiple of 64 (the VAE divides by 8, the UNet by 8 more). Its range is the
    pipeline's own (``animatezero.checks.check_size``, run by ``experiments.common.check_like_the_pipeline`` before
    the run folder exists), so the two cannot disagree."""
    n = _int(key, pixels, 1, None, f"{key.split('.')[-1]}=512")
    if n % 64:
        raise ConfigError(
            f"{key}={pixels} must be a multiple of 64 (e.g. {(n // 64) * 64 or 64} or {(n // 64 + 1) * 64})"
        )
    return n


def apply_shortcuts(cfg: DictConfig) -> None:
    """Copy the top-level shortcuts onto the sampler keys they stand for (``steps`` -> ``sampler.steps``,
    ``frames`` -> ``sampler.num_frames``, ``guidance`` -> ``sampler.guidance_scale``, ``size`` -> ``sampler.height``
    and ``sampler.width``), so run.json shows one value for each. By default a shortcut follows its sampler key;
    given on the command line, it wins over the sampler key."""
    for key, target in SHORTCUTS.items():
        if key in cfg:
            OmegaConf.update(cfg, target, cfg[key], merge=False)
    if cfg.get("size") is not None:
        height, width = parse_size(cfg.size)
        cfg.sampler.height, cfg.sampler.width = height, width


def check_values(cfg: DictConfig) -> None:
    """Every numeric value the entry points read, checked once, before anything is created or loaded. Each error
    names the key (the top-level shortcut where there is one) and the fix."""
    for key in ("seed", "end_seed", "sampler.seed"):
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            _int(key, value, 0, MAX_SEED, f"{key}=7 (or {key}=null for a random seed)")
    for key, hint in (("candidates", "candidates=4 (0: off)"), ("extend", "extend=1 (0: off)")):
        if key in cfg:
            _int(key, cfg[key], 0, None, hint)
    short = {v: k for k, v in SHORTCUTS.items()}
    if "sampler" in cfg:
        name = lambda k: short.get(k, k)  # noqa: E731 - the key the user most likely typed
        _int(name("sampler.steps"), cfg.sampler.steps, 1, MAX_STEPS, "steps=25")
        _int(name("sampler.num_frames"), cfg.sampler.num_frames, 1, None, "frames=16")
        _number(name("sampler.guidance_scale"), cfg.sampler.guidance_scale, 0.0, "guidance=7.5")
        _int("sampler.fps", cfg.sampler.fps, 1, 240, "sampler.fps=8")
        size = "size" if cfg.get("size") is not None else None
        check_size_value(size or "sampler.height", cfg.sampler.height)
        check_size_value(size or "sampler.width", cfg.sampler.width)
    scale = OmegaConf.select(cfg, "motion.lora_scale", default=None)
    if scale is not None and (isinstance(scale, bool) or not math.isfinite(_float_or_nan(scale))):
        raise ConfigError(f"motion.lora_scale={scale} must be a finite number; e.g. motion.lora_scale=0.8 (0: off)")
    mode = OmegaConf.select(cfg, "wandb.mode", default=None)
    if mode is not None and mode not in ("offline", "online", "disabled"):
        raise ConfigError(f"wandb.mode={mode} is not a W&B mode; use offline, online or disabled")
    if "repeats" in cfg:
        _int("repeats", cfg.repeats, 1, None, "repeats=2")
    if "model" in cfg:
        check_model(cfg)
    for key in PATH_KEYS:
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if value is not None:  # a missing (???) value reads as None here; its own check asks for it
            check_path(key, value)
    run_files = OmegaConf.select(cfg, "paths.run_files", default=None)
    for name, value in (run_files or {}).items():
        check_path(f"paths.run_files.{name}", value)


def require_motion_module(cfg: DictConfig) -> None:
    """``motion_module=null`` is refused where every run animates (the CLI, the sweep); the app takes it for an
    images-only model."""
    if cfg.get("motion_module", "") is None:
        raise ConfigError(
            "motion_module=null: animating needs an AnimateDiff motion module; give one, e.g. "
            "motion_module=guoyww/animatediff/mm_sd_v15_v2.ckpt (or leave it out for the default)"
        )


def check_model(cfg: DictConfig) -> None:
    """The ``model`` settings a user types: threads, VAE chunk, device, dtype."""
    for key, hint in (("model.cpu_threads", "model.cpu_threads=4"), ("model.vae_chunk_size", "model.vae_chunk_size=8")):
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            _int(key, value, 1, None, f"{hint} (or null for the default)")
    device = str(OmegaConf.select(cfg, "model.device", default="auto"))
    kind, _, index = device.partition(":")
    if kind not in DEVICES or (index and (kind != "cuda" or not index.isdigit())) or device.endswith(":"):
        raise ConfigError(
            f"model.device={device} is not a device this pipeline runs on; use auto, cpu, cuda, cuda:N or mps"
        )
    dtype = str(OmegaConf.select(cfg, "model.dtype", default="auto"))
    if dtype not in ("auto", "float32", "float16", "bfloat16"):
        raise ConfigError(f"model.dtype={dtype} is not a dtype; use auto, float32, float16 or bfloat16")


def check_path(key: str, value: Any) -> str:
    """A file or folder setting: not empty (an empty ``out_dir=`` would mean the current folder), and no part of it
    longer than :data:`NAME_MAX` characters (the file system would refuse it mid-run)."""
    text = os.fspath(value) if isinstance(value, str | os.PathLike) else str(value)
    if not text.strip():
        raise ConfigError(
            f"{key}= is empty; give a path (e.g. {key}=outputs/my_run), or leave {key} out for its default"
        )
    for part in Path(text).parts:
        if len(part.encode()) > NAME_MAX:
            raise ConfigError(
                f"{key}={shorten(text, 80)} has a name of {len(part.encode())} bytes ({shorten(part, 40)}); file "
                f"systems allow at most {NAME_MAX}: use a shorter name"
            )
    return text


def shorten(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` on one line and at most about ``limit`` characters (newlines become ``; ``, the middle is cut)."""
    text = "; ".join(line.strip() for line in str(text).splitlines() if line.strip())
    if len(text) <= limit:
        return text
    keep = max(limit - 40, 10)
    return f"{text[: keep * 3 // 4]}...({len(text) - keep} cut)...{text[-(keep // 4) :]}"


# ------------------------------------------------------------------------------------------------- LoRAs
LORA_HINT = "write lora='[style.safetensors:0.8,hf://org/repo/file.safetensors]' (path or hub file, optional :scale)"


def parse_lora_entry(entry: Any, key: str = "lora") -> tuple[str, float]:
    """``"path_or_hub[:scale]"`` -> ``(reference, scale)``; the scale (default 1.0) follows the LAST colon, and only
    when what follows parses as a number (so ``C:/x.safetensors`` or ``hf://org/repo/x@rev`` keep their colons).
    A mapping ``{path: ..., scale: ...}`` (from a YAML file) is accepted too."""
    if isinstance(entry, DictConfig | dict):
        ref, scale = entry.get("path"), entry.get("scale", 1.0)
    else:
        text = str(entry).strip() if isinstance(entry, str) else None
        if not text:
            raise ConfigError(f"{key}={entry!r} is not a LoRA file; {LORA_HINT}")
        ref, scale = text, 1.0
        head, sep, tail = text.rpartition(":")
        if sep and head:
            try:
                scale, ref = float(tail), head
            except ValueError:
                pass
    if not isinstance(ref, str) or not ref:
        raise ConfigError(f"{key}={entry!r} names no file; {LORA_HINT}")
    try:
        scale = float(scale)
    except (TypeError, ValueError):
        scale = math.nan
    if isinstance(scale, bool) or not math.isfinite(scale):
        raise ConfigError(f"{key}={entry!r}: the scale is not a finite number; e.g. {ref}:0.8")
    return ref, scale


def lora_entries(cfg: DictConfig) -> list[tuple[str, float]]:
    """The SD1.5 LoRAs a config asks for, ``[(reference, scale), ...]``: the top-level shortcut ``lora`` where the
    config has one (it follows ``model.lora`` unless given), else ``model.lora``. ``null`` or ``[]``: none; a single
    string is one LoRA."""
    value = cfg.lora if "lora" in cfg else OmegaConf.select(cfg, "model.lora", default=None)
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    return [parse_lora_entry(item, f"lora[{i}]") for i, item in enumerate(items)]


def lora_refs(cfg: DictConfig) -> dict[str, str]:
    """``{"lora[i]": reference}`` for :func:`animatezero.hub.resolve_all` (errors name ``lora[i]``)."""
    return {f"lora[{i}]": ref for i, (ref, _) in enumerate(lora_entries(cfg))}


# ------------------------------------------------------------------------------------------------- output folder
def check_out_dir(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Prove that ``path`` can become a run directory without creating anything: an existing folder must be writable
    and hold no run (unless ``overwrite``); otherwise its nearest existing parent must be a writable folder."""
    path = Path(path).expanduser()
    fix = "Choose a writable one, e.g. out_dir=outputs/my_run (or paths.output_root=... for every run)."
    problem = None
    if path.exists():
        if not path.is_dir():
            problem = f"cannot write to the output directory {str(path)!r}: it is a file. {fix}"
        elif not overwrite and (path / "run.json").exists():
            problem = f"{str(path)!r} already holds a run (run.json); choose a fresh out_dir or pass overwrite=true"
        probe = path
    else:
        probe = path.parent
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir():
            problem = (
                f"cannot write to the output directory {str(path)!r}: {str(probe)!r} is a file, not a folder. {fix}"
            )
    if problem is None and not os.access(probe, os.W_OK | os.X_OK):
        problem = f"cannot write to the output directory {str(path)!r}: {str(probe)!r} is read-only. {fix}"
    if problem is not None:
        from experiments.runs import OutputDirError  # imported only on this error path (it brings torch)

        raise OutputDirError(problem)
    return path


def default_run_dir(output_root: str | os.PathLike, task: str) -> Path:
    """``<output_root>/<task>/<date>/<time with microseconds>``, taken when the job runs (so each job of a multirun
    gets its own), with ``_<job number>`` added inside a Hydra multirun (parallel launchers may start jobs in the
    same microsecond)."""
    import datetime as _dt

    now = _dt.datetime.now()
    name = now.strftime("%H-%M-%S-%f")
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            name += f"_{hc.job.num}"
    except (ImportError, ValueError):  # not running under Hydra (tests, compose, the app)
        pass
    return Path(output_root) / task / now.strftime("%Y-%m-%d") / name


def check_override_keys(prog: str, argv: list[str], config_name: str) -> None:
    """Refuse a ``key=value`` whose first part is neither a key of ``configs/<config_name>.yaml`` nor one of its
    groups, in one line with the closest known names and exit status 2 (Hydra would print several lines, suggest
    ``+key=`` and exit 1). Nested keys and group options are left to Hydra, whose messages list the choices."""
    import difflib

    spec = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs" / f"{config_name}.yaml")
    known = {str(k) for k in spec if k != "defaults"} | {"hydra"}
    for entry in spec.get("defaults", []):
        if isinstance(entry, DictConfig | dict):
            known |= {str(k).removeprefix("override ").split("/")[0] for k in entry}
    for arg in argv:
        key, sep, _ = arg.partition("=")
        if not sep or arg.startswith(("-", "+", "~")):
            continue
        root = key.split(".")[0].split("@")[0]
        if root not in known:
            close = difflib.get_close_matches(root, sorted(known), n=3)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            print(f"{prog}: error: unknown option {key!r}{hint}; `{prog} --help` lists the options", file=sys.stderr)
            raise SystemExit(2)


# ------------------------------------------------------------------------------------------------- errors
def user_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean bad input or missing weights (their message says what to do), not a bug. Classes of
    modules not imported yet cannot have been raised, so they are looked up only among loaded modules (this keeps
    the error path free of heavy imports)."""
    errors: list[type[BaseException]] = [
        ConfigError,
        FileNotFoundError,
        IsADirectoryError,
        NotADirectoryError,
        PermissionError,
        ValueError,
    ]
    named = (
        ("animatezero.hub", "DownloadError"),
        ("animatezero.io", "OutputDirError"),
        ("experiments.runs", "OutputDirError"),
        ("experiments.runs", "OutputPathError"),
        ("models.readers", "CheckpointError"),
        ("evaluation.extractors", "EvaluatorUnavailable"),
    )
    for module, name in named:
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            errors.append(cls)
    return tuple(errors)


@contextmanager
def one_line_errors(prog: str) -> Iterator[None]:
    """Turn a user error into ``<prog>: error: <message>`` on stderr and exit status 2 (no traceback). The message
    is one line (a multi-line one is joined with ``; ``) of at most about :data:`MAX_MESSAGE` characters."""
    try:
        yield
    except user_errors() as e:
        print(f"{prog}: error: {shorten(str(e))}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as e:
        if e.errno != errno.ENAMETOOLONG:
            raise
        name = shorten(os.fspath(e.filename), 80) if e.filename is not None else "a path"
        print(
            f"{prog}: error: {name}: a name in it is longer than the file system allows ({NAME_MAX})", file=sys.stderr
        )
        raise SystemExit(2) from None


def run(prog: str, fn: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    with one_line_errors(prog):
        return fn(cfg)
