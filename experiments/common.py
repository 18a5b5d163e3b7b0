"""What the entry points share: turning the Hydra config into explicit objects (device, dtype, Controls, prompt
items), tiny synthetic checkpoints for ``debug=tiny``, loading the pipeline, a progress bar for its per-step callback, and
writing a run's files. The pipeline is constructed here in code, never from ``_target_`` strings."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from animatezero import checks
from animatezero.controls import Controls
from animatezero.hub import checkpoint_sha256, resolve_all
from animatezero.pipeline import AnimateZeroPipeline
from animatezero.progress import step_bar
from animatezero.results import ImageResult, VideoResult
from experiments.cli import DEVICES, SHORTCUTS, ConfigError, lora_entries, lora_refs, shorten
from experiments.runs import check_name, distinct_outputs, inside, max_name_length

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CONTROL_FIELDS = tuple(f.name for f in dataclasses.fields(Controls))


def plain(node: Any) -> Any:
    """A resolved config node as plain dicts/lists (for run.json and W&B)."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig | ListConfig) else node


def job_num() -> int:
    """The Hydra multirun job number (0 outside a multirun)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        return int(hc.job.num) if hc.mode == RunMode.MULTIRUN else 0
    except Exception:  # noqa: BLE001 - not running under Hydra (tests, compose)
        return 0


def pick_device(spec: str) -> str:
    """``auto``: ``cuda:<job.num % GPUs>`` when CUDA is available (one GPU per multirun job), else ``cpu``. A named
    device must be one this pipeline runs on (cpu, cuda, cuda:N, mps) and be present here."""
    spec = str(spec)
    kind, _, index = spec.partition(":")
    if spec != "auto":
        if kind not in DEVICES or kind == "auto" or (index and (kind != "cuda" or not index.isdigit())):
            raise ConfigError(f"model.device={spec} is not a device this pipeline runs on; use auto, cpu, cuda or mps")
        if kind == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"model.device={spec} but CUDA is not available here; use model.device=cpu or auto")
        if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise ConfigError(f"model.device={spec} but this machine has {count} GPU(s): use cuda:0..cuda:{count - 1}")
        if kind == "mps" and not torch.backends.mps.is_available():
            raise ConfigError(f"model.device={spec} but MPS is not available here; use model.device=cpu or auto")
        return spec
    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{job_num() % torch.cuda.device_count()}"


def pick_dtype(spec: str, device: str) -> torch.dtype:
    """``auto``: float16 on CUDA, float32 on CPU."""
    if spec == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    if spec not in DTYPES:
        raise ConfigError(f"model.dtype={spec} is not a dtype; use auto, float32, float16 or bfloat16")
    return DTYPES[spec]


@contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """``torch.set_num_threads(n)`` for the block (None: leave it)."""
    before = torch.get_num_threads()
    if n is not None and (isinstance(n, bool) or not str(n).isdigit() or int(n) < 1):
        raise ConfigError(f"model.cpu_threads={n} must be a whole number of at least 1 (or null for the default)")
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _ask(key: str, check, *args) -> None:
    """Run one of the pipeline's own checks (``animatezero.checks``); its ``ValueError`` becomes a
    :class:`ConfigError` that starts with the key as typed."""
    try:
        check(*args)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None


def check_like_the_pipeline(cfg: DictConfig, *, min_frames: int = 1) -> None:
    """The values the pipeline will check, checked now by its own functions (:mod:`animatezero.checks`: size,
    steps, guidance, frames, seeds) and the input images read by its own reader (:func:`animatezero.io.load_image`),
    so a value the command line accepts is one the pipeline accepts: nothing fails after the run folder exists.
    ``min_frames``: 2 for a loop or an interpolation (two anchor frames)."""
    from animatezero.io import load_image

    sampler, typed = cfg.sampler, {v: k for k, v in SHORTCUTS.items()}
    name = lambda key: typed.get(key, key)  # noqa: E731 - the top-level shortcut the user most likely typed
    height, width = int(sampler.height), int(sampler.width)
    size = f"size={cfg.size}" if cfg.get("size") is not None else f"sampler.height={height}, sampler.width={width}"
    _ask(size, checks.check_size, height, width)
    steps, guidance = int(sampler.steps), float(sampler.guidance_scale)
    typed_sampling = f"{name('sampler.steps')}={steps}, {name('sampler.guidance_scale')}={guidance:g}"
    _ask(typed_sampling, checks.check_sampling, steps, guidance)
    frames = int(sampler.num_frames)
    _ask(f"{name('sampler.num_frames')}={frames}", checks.check_frames, frames, min_frames)
    for key in ("seed", "end_seed", "sampler.seed"):
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None:
            _ask(f"{key}={value}", checks.check_seed, int(value))
    for key in ("image", "end_image"):
        if cfg.get(key) is not None:
            try:
                checks.check_finite(load_image(cfg[key], (height, width)), "the image's pixels")
            except ValueError as e:
                raise ConfigError(f"{key}={shorten(str(cfg[key]), 200)}: {e}") from None


def check_frames_fit(pipe: AnimateZeroPipeline, controls: Controls, num_frames: int, *, two_anchors: bool) -> None:
    """The clip length against the loaded motion module's position table, by the code that sets up step 2
    (:func:`animatezero.method.temporal_processors`): over the table without ``sliding_windows`` is refused here,
    after loading and before the run folder exists."""
    from animatezero.method import temporal_processors

    motion = pipe.motion_module
    if motion is None:
        return
    positions = motion.config.max_positions
    _ask(
        f"frames={num_frames}",
        lambda: temporal_processors(controls, motion, num_frames, positions, two_anchors=two_anchors),
    )


def check_sampler(sampler: DictConfig, inverts: str | None = None) -> None:
    """The sampler group's name and eta; ``inverts`` names the setting that needs an inversion (``image=``,
    ``extend=``), which a stochastic sampler (LCM) cannot do: refused here, before any work."""
    from models.samplers import SAMPLERS, check_invertible, get_sampler

    if sampler.name not in SAMPLERS:
        raise ValueError(f"sampler {sampler.name!r} is not supported: use sampler={' | '.join(SAMPLERS)}")
    if float(sampler.eta) != 0.0:
        raise ValueError(f"sampler.eta={sampler.eta}: the pipeline samples with DDIM eta = 0 only")
    if inverts is not None:
        try:
            check_invertible(get_sampler(sampler.name))
        except ValueError as e:
            raise ValueError(f"{inverts} needs an inversion: {e}") from None


# ------------------------------------------------------------------------------------------------- controls
def make_controls(fields: Mapping[str, Any], preset: str | None = None) -> Controls:
    """``Controls`` from config fields (lists become tuples), optionally on top of a named preset."""
    fields = dict(fields)
    unknown = sorted(set(fields) - set(CONTROL_FIELDS))
    if unknown:
        raise ValueError(f"unknown Controls fields {unknown}; the fields are {list(CONTROL_FIELDS)}")
    fields = {k: tuple(v) if isinstance(v, list | tuple) else v for k, v in fields.items()}
    return Controls.preset(preset, **fields) if preset is not None else Controls(**fields)


def _fmt(value: Any) -> str:
    if isinstance(value, tuple | list):
        return "-".join(_fmt(v) for v in value)
    if value is None:
        return "none"
    return str(value).lower() if isinstance(value, bool) else str(value)


def controls_from_group(node: DictConfig, label: str | None = None) -> tuple[str, Controls]:
    """The ``controls`` group -> ``(label, Controls)``. The label is the group's ``name``, plus the fields that
    differ from the preset of that name (``paper+window_size=4``), so a multirun over fields keeps items apart."""
    fields = plain(node)
    name = fields.pop("name")
    controls = make_controls(fields)
    if label is None:
        label = name
        if name in Controls.PRESETS:
            base = Controls.preset(name)
            diff = [
                f"{k}={_fmt(getattr(controls, k))}" for k in CONTROL_FIELDS if getattr(controls, k) != getattr(base, k)
            ]
            label = "+".join([name, *diff])
    return check_name(label, "configuration label"), controls


def sweep_configurations(cfg: DictConfig) -> dict[str, Controls]:
    """``configurations`` (label -> ``{preset, **fields}``), or the ``controls`` group when that is empty."""
    if not cfg.configurations:
        label, controls = controls_from_group(cfg.controls, cfg.label)
        return {label: controls}
    out = {}
    for label, entry in plain(cfg.configurations).items():
        entry = dict(entry or {})
        out[check_name(str(label), "configuration label")] = make_controls(entry, entry.pop("preset", "paper"))
    return out


def needs_kv(controls: Controls) -> bool:
    """Whether step 1 must record the spatial keys/values (cached first-frame K/V sharing)."""
    return controls.share_kv and controls.kv_source == "cached"


def check_prompt_items(items: Any, name: str | None, repeats: int) -> None:
    """Each item of a prompt set is ``{id, prompt, seed[, negative_prompt]}`` with text prompts and a seed the
    pipeline takes (:func:`animatezero.checks.check_seed`, also for the last of ``repeats`` seeds). Errors name
    the item as ``prompts.items[n]`` and the prompt set."""
    example = "e.g. {id: cat, prompt: 'a cat, blinking', seed: 1}"
    if not isinstance(items, list) or not items:
        raise ConfigError(f"prompts.items of prompt set {name!r} must be a non-empty list of items, {example}")
    for n, it in enumerate(items):
        if not isinstance(it, dict):
            raise ConfigError(f"prompts.items[{n}] of prompt set {name!r} is {shorten(repr(it), 80)}; {example}")
        where = f"prompts.items[{n}] (id {shorten(repr(it.get('id')), 80)}, prompt set {name!r})"
        missing = [k for k in ("id", "prompt", "seed") if it.get(k) is None]
        if missing:
            raise ConfigError(f"{where} has no {' or '.join(missing)}: each item needs id, prompt and seed, {example}")
        if not isinstance(it["prompt"], str) or not isinstance(it.get("negative_prompt") or "", str):
            raise ConfigError(f"{where}: prompt and negative_prompt must be text")
        seed = it["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ConfigError(f"{where}: seed={shorten(repr(seed), 40)} is not a whole number; use 0..2**64-1")
        _ask(f"{where}: seed={seed}", checks.check_seed, seed)
        _ask(f"{where}: seed={seed} with repeats={repeats}", checks.check_seed, seed + repeats - 1)


def prompt_items(
    prompts: DictConfig, repeats: int = 1, shard: Mapping[str, int] | None = None, negative_prompt: str = ""
) -> list[dict]:
    """The prompt set as items ``{id, prompt, negative_prompt, seed, dirname}``; ``repeats`` seeds per prompt
    (seed, seed + 1, ...); with ``shard`` only prompts ``index, index + count, ...``. An item without its own
    negative prompt gets ``negative_prompt``."""
    items = plain(prompts.get("items"))
    check_prompt_items(items, prompts.get("name"), int(repeats))
    ids = [str(it["id"]) for it in items]
    if len(set(ids)) != len(ids):
        raise ValueError(
            f"prompt set {prompts.name!r} has duplicate ids: {sorted({i for i in ids if ids.count(i) > 1})}"
        )
    index, count = (int(shard["index"]), int(shard["count"])) if shard else (0, 1)
    if not 0 <= index < count:
        raise ValueError(f"shard.index must be in 0..shard.count-1, got index={index}, count={count}")
    out = []
    for n, it in enumerate(items):
        if n % count != index:
            continue
        check_name(str(it["id"]), "prompt id")
        check_name(f"{it['id']}_s{int(it['seed']) + int(repeats) - 1}", "prompt id (with its seed)")
        for r in range(int(repeats)):
            seed = int(it["seed"]) + r
            out.append(
                {
                    "id": str(it["id"]),
                    "prompt": it["prompt"],
                    "negative_prompt": it["negative_prompt"]
                    if it.get("negative_prompt") is not None
                    else negative_prompt,
                    "seed": seed,
                    "dirname": f"{it['id']}_s{seed}",
                }
            )
    return out


# ------------------------------------------------------------------------------------------------- checkpoints
def write_tiny_checkpoints(sd15: str | os.PathLike | None, motion: str | os.PathLike | None, version: int = 2) -> None:
    """Tiny random-weight SD1.5 / motion-module files with the real key layout (``models.synthetic``), written only
    where missing (atomically, so parallel jobs may race safely)."""
    from models.config import CLIPTextConfig, MotionConfig, UNetConfig, VAEConfig
    from models.synthetic import write_motion_module, write_sd15_checkpoint

    if sd15 is not None and not Path(sd15).is_file():
        Path(sd15).parent.mkdir(parents=True, exist_ok=True)
        cfgs = UNetConfig.tiny(), VAEConfig.tiny(), CLIPTextConfig.tiny()
        write_sd15_checkpoint(sd15, *cfgs, seed=0, dtype=torch.float32)
    if motion is not None and not Path(motion).is_file():
        Path(motion).parent.mkdir(parents=True, exist_ok=True)
        write_motion_module(motion, MotionConfig.tiny(int(version)), seed=int(version), dtype=torch.float32)


def ensure_synthetic(cfg: DictConfig) -> None:
    """``model.synthetic=tiny`` / ``motion.synthetic=tiny`` (debug/tiny): write the tiny files if missing."""
    for group in ("model", "motion"):
        if cfg[group].synthetic not in (None, "tiny"):
            raise ValueError(f"{group}.synthetic must be null or tiny, got {cfg[group].synthetic!r}")
    write_tiny_checkpoints(
        cfg.model.checkpoint if cfg.model.synthetic == "tiny" else None,
        cfg.motion.checkpoint if cfg.motion.synthetic == "tiny" else None,
        cfg.motion.version,
    )


def checkpoint_refs(cfg: DictConfig) -> dict[str, str | None]:
    """The weight files a config names, by the setting a user types to change each (SD1.5 LoRAs as ``lora[i]``).
    ``motion_module=null`` (a pipeline for images only, in the app) leaves no motion module and no MotionLoRA."""
    refs = {"checkpoint": cfg.checkpoint, "motion_module": cfg.motion_module, "motion.lora": cfg.motion.lora}
    if refs["motion_module"] is None and refs["motion.lora"] is not None:
        raise ConfigError(f"motion.lora={refs['motion.lora']} needs a motion module: give motion_module= as well")
    return refs | lora_refs(cfg)


def resolve_checkpoints(cfg: DictConfig) -> dict[str, dict]:
    """Local files (hub references from the cache, downloaded when missing and online) and their SHA-256 (cached in
    ``paths.cache_dir``). Every missing file is reported at once (:func:`animatezero.hub.resolve_all`)."""
    refs = checkpoint_refs(cfg)
    paths = resolve_all(refs, cache_dir=cfg.paths.cache_dir)  # verified against hub.PINS for the defaults
    out = {}
    scales = [scale for _, scale in lora_entries(cfg)]
    for setting, path in paths.items():
        key = setting.replace(".", "_").replace("[", "_").rstrip("]")  # motion.lora -> motion_lora, lora[0] -> lora_0
        out[key] = {
            "ref": str(refs[setting]),
            "path": str(path),
            "sha256": checkpoint_sha256(path, cfg.paths.cache_dir),
        }
    if "motion_lora" in out:
        out["motion_lora"]["scale"] = float(cfg.motion.lora_scale)
    for i, scale in enumerate(scales):  # SD1.5 LoRAs: lora_0, lora_1, ... each with its file's SHA-256 and scale
        out[f"lora_{i}"]["scale"] = scale
    return out


def lora_files(files: Mapping[str, dict]) -> list[tuple[str, float]]:
    """``[(path, scale), ...]`` of the SD1.5 LoRAs in :func:`resolve_checkpoints`' result, in order."""
    keys = sorted((k for k in files if re.fullmatch(r"lora_\d+", k)), key=lambda k: int(k[5:]))
    return [(files[k]["path"], files[k]["scale"]) for k in keys]


def load_pipeline(cfg: DictConfig, files: Mapping[str, dict], device: str, dtype: torch.dtype) -> AnimateZeroPipeline:
    """The pipeline for a config; its own progress bars are off (the entry points draw theirs, named per step)."""
    lora, motion = files.get("motion_lora"), files.get("motion_module")  # motion_module=null: images only
    pipe = AnimateZeroPipeline.from_single_files(
        files["checkpoint"]["path"],
        motion["path"] if motion else None,
        device=device,
        dtype=dtype,
        motion_lora=lora["path"] if lora else None,
        motion_lora_scale=lora["scale"] if lora else 1.0,
        loras=lora_files(files),
        vae_chunk_size=cfg.model.vae_chunk_size,
        offload=bool(cfg.model.offload),
        compile=cfg.model.compile,
        compile_cache_dir=cfg.model.get("compile_cache_dir"),
        # the sampler group's values are the model's defaults (model=animatelcm / lightning set them)
        default_sampling=(int(cfg.sampler.steps), float(cfg.sampler.guidance_scale), str(cfg.sampler.name)),
    )
    pipe.progress = False
    return pipe


def fingerprint(fields: Mapping[str, Any]) -> str:
    """A short hash of everything that determines an item's pixels (resume only skips a matching item)."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------- generation
def progress(total: int, desc: str):
    """A tqdm bar over sampling steps; the context yields the pipeline ``callback`` that advances it."""
    return step_bar(total, desc)


VIDEO_SUFFIXES = (".mp4", ".gif", "")  # what animatezero.io.save_video writes ("": a folder of PNG frames)


def check_output_name(key: str, path: Path, *, image: bool) -> None:
    """An output's file name: a format its writer knows (:func:`animatezero.io.save_image` writes any format Pillow
    saves by suffix, ``save_video`` the :data:`VIDEO_SUFFIXES`), and short enough to be written through a
    temporary name beside it (:func:`experiments.runs.max_name_length`)."""
    from PIL import Image

    suffix = path.suffix.lower()
    if image:
        fmt = Image.registered_extensions().get(suffix)
        if fmt is None or fmt not in Image.SAVE:
            what = suffix or "no suffix"
            raise ConfigError(f"{key}={path.name}: {what} is not an image format that can be written; use .png")
    elif suffix not in VIDEO_SUFFIXES:
        raise ConfigError(
            f"{key}={path.name}: {suffix} is not a video format that can be written; use .mp4 or .gif, or a name "
            "without a suffix for a folder of PNG frames"
        )
    if len(path.name.encode()) > max_name_length():
        raise ConfigError(f"{key}={shorten(path.name, 60)} is too long: at most {max_name_length()} characters")


def run_files(cfg: DictConfig, run_dir: str | os.PathLike) -> dict[str, Path]:
    """The configured file names inside ``run_dir`` (each checked not to leave it, nor to collide with another,
    and to have a suffix its writer knows: ``image`` an image format, the others a video one or none)."""
    files = {k: inside(run_dir, v, f"paths.run_files.{k}") for k, v in plain(cfg.paths.run_files).items()}
    for key, path in files.items():
        check_output_name(f"paths.run_files.{key}", path, image=key == "image")
    return distinct_outputs(files)


def write_outputs(files: Mapping[str, Path], image: ImageResult, video: VideoResult, fps: int) -> None:
    """image.png, video.mp4, video.gif and frames/ (each written atomically)."""
    image.save(files["image"])
    video.save(files["video"], fps=fps)
    video.save(files["gif"], fps=fps)
    video.save(files["frames"])


def wandb_args(node: DictConfig) -> dict[str, Any]:
    return {
        "mode": node.mode,
        "project": node.project,
        "entity": node.entity,
        "group": node.group,
        "tags": list(node.tags or []),
        "init_timeout": float(node.init_timeout),
    }
