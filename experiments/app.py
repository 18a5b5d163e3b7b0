"""The interactive app (console script ``animatezero-app``): make images until one is right, then animate exactly that
image in a web page (the paper's interactive video generation, Sec. 5).

    animatezero-app                                   # the toy-world model shipped with the package (offline)
    animatezero-app debug=tiny                        # tiny random weights: the plumbing in seconds (noise pictures)
    animatezero-app checkpoint=toonyou.safetensors motion_module=mm_sd_v15_v2.ckpt
    animatezero-app --host 0.0.0.0 --port 7860 --budget 500 model.device=cuda:1

Everything after the flags is a Hydra override of configs/generate.yaml, checked and turned into a pipeline by the same
code as the ``animatezero`` CLI (experiments/cli.py, experiments/common.py), once per process. Requests take turns (a
queue of one); each is refused before any work when it exceeds the per-request budget (``--budget``), and *Stop* ends
the running one between two sampling steps. The *LoRAs* field (``style.safetensors:0.8, other.safetensors``; initially
the launch config's ``lora``) is parsed and its files resolved by the CLI's code before any work, and merged into the
model (``set_loras``) when a request asks for other LoRAs than the ones merged (docs/lora.md). Each animation becomes a
run directory made and recorded by experiments/runs.py (``<paths.output_root>/app/<date>/<time>``: the CLI's files plus
frames.zip) whose files the page offers for download.

Needs the ``app`` extra: ``pip install -e ".[app]"``.
"""

from __future__ import annotations

import argparse
import copy
import functools
import shutil
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from animatezero import checks, toyworld
from animatezero.controls import BLOCKS, Controls
from animatezero.io import MAX_UPLOAD_BYTES, UPLOAD_FORMATS, ImageInputError, check_image_file, load_image
from animatezero.pipeline import AnimateZeroPipeline, new_seed
from animatezero.results import ImageResult, VideoResult, psnr
from experiments import cli, common
from experiments.budget import BUDGET, check_work
from experiments.runs import RunRecord, environment, prepare_run_dir

MAX_PROMPT_TOKENS = 75  # CLIP reads 77 tokens: start, 75 of the prompt, end
MAX_CANDIDATES = 8
# the keys that choose a model; without any of them the toy-world model is used
MODEL_KEYS = ("model", "checkpoint", "motion_module", "debug", "model.checkpoint", "motion", "motion.checkpoint")
MODES = ("animate", "loop", "interpolate to a second image")
STEP_RANGES = ("insert_steps", "kv_steps")  # Controls fields shown as two sliders, <name>_from and <name>_to


class AppInputError(ValueError):
    """Bad input in the page (shown there as one message)."""


class Cancelled(Exception):
    """The user pressed Stop; raised by the per-step callback, so the job ends between two sampling steps."""


# ------------------------------------------------------------------------------------------------- model
def compose_config(overrides: list[str]) -> DictConfig:
    """configs/generate.yaml with the overrides (Hydra's compose API; no run directory is made), checked by the CLI's
    checks. Without a model choice: the toy-world model, or an error saying how to choose one."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if not {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o} & set(MODEL_KEYS):
        try:
            toyworld.files(verify=False)
        except toyworld.ToyWorldMissingError as e:
            raise AppInputError(
                f"no model given, and {e}. Or pass weights, e.g. animatezero-app checkpoint=v1-5-pruned-emaonly."
                "safetensors motion_module=mm_sd_v15_v2.ckpt, or try the plumbing with animatezero-app debug=tiny"
            ) from None
        overrides = ["model=toyworld", *overrides]
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="configs", version_base="1.3"):
        cfg = compose("generate", overrides=list(overrides))
    cfg.prompt, cfg.out_dir = "", None  # the page supplies prompts and makes one run directory per animation
    cli.apply_shortcuts(cfg)
    cli.check_values(cfg)
    return cfg


# ------------------------------------------------------------------------------------------------- page fields
def as_int(value: Any, what: str, low: int, high: int) -> int:
    """A whole number in ``[low, high]`` from a page field, or a message naming the field."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise AppInputError(f"{what} must be a whole number, got {value!r}") from None
    if number != int(number) or not low <= number <= high:
        raise AppInputError(f"{what} must be a whole number from {low} to {high}, got {value!r}")
    return int(number)


def control_values(controls: Controls) -> dict[str, Any]:
    """``controls`` as the controls panel's widget values, by widget name (a step range is two sliders, a window size
    of 0 means the clip)."""
    values: dict[str, Any] = {}
    for name in (f.name for f in fields(Controls)):
        value = getattr(controls, name)
        if name in STEP_RANGES:
            values[f"{name}_from"], values[f"{name}_to"] = value
        elif name == "kv_levels":
            values[name] = [str(v) for v in value]
        elif name == "window_size":
            values[name] = value or 0
        else:
            values[name] = list(value) if isinstance(value, tuple) else value
    return values


def controls_from(values: Mapping[str, Any]) -> Controls:
    """The inverse of :func:`control_values` (checked by ``Controls``)."""
    out: dict[str, Any] = {}
    for name in (f.name for f in fields(Controls)):
        if name in STEP_RANGES:
            out[name] = (float(values[f"{name}_from"]), float(values[f"{name}_to"]))
        elif name in ("kv_blocks", "window_blocks"):
            out[name] = tuple(b for b in BLOCKS if b in values[name])
        elif name == "kv_levels":
            out[name] = tuple(sorted(int(v) for v in values[name]))
        elif name == "window_size":
            out[name] = as_int(values[name], "window size", 0, 1024) or None
        else:
            out[name] = float(values[name]) if name == "noise_share" else values[name]
    return Controls(**out)


def load_upload(path: str | Path | None, size: tuple[int, int], what: str = "image") -> torch.Tensor:
    """An upload's pixels for a ``size=(height, width)`` request, checked by :mod:`animatezero.io` (its size on disk
    against ``MAX_UPLOAD_BYTES``, then the header alone: format, dimensions, decoding budget) and decoded within that
    budget. Messages name the file as the user uploaded it, never the server's temporary path."""
    if path is None:
        raise AppInputError(f"no {what} uploaded: choose a PNG, JPEG or WebP file")
    path = Path(path)
    try:
        if path.is_file() and path.stat().st_size > MAX_UPLOAD_BYTES:
            mb, limit = path.stat().st_size / 2**20, MAX_UPLOAD_BYTES / 2**20
            raise AppInputError(f"the {what} {path.name!r} is {mb:.1f} MB; the limit is {limit:g} MB")
        check_image_file(path, size, what=f"{what} {path.name!r}")  # before any decoding
        return load_image(path, size)
    except (ImageInputError, FileNotFoundError) as e:
        raise AppInputError(str(e).replace(str(path), path.name)) from None


# ------------------------------------------------------------------------------------------------- the work
@dataclass
class Run:
    """An animation (what *Continue clip* extends) and its run directory."""

    image: ImageResult
    video: VideoResult
    controls: Controls
    seed: int
    segments: int = 1
    checkpoints: dict = field(default_factory=dict)  # the weight files it was made with (SD1.5 LoRAs: lora_i)
    run_dir: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0
    first_frame_psnr: float | None = None

    @property
    def mode(self) -> str:
        return self.video.info["mode"] + "+continue" * (self.segments - 1)


@dataclass
class Job:
    """One request's steps: the pipeline's per-step callback (:meth:`step`) moves the page's progress bar and, once
    ``stop`` is set, raises :class:`Cancelled`, so the job ends between two sampling steps."""

    total: int
    desc: str
    stop: threading.Event
    progress: Any = None
    checkpoints: dict = field(default_factory=dict)  # the weight files in use, LoRAs included
    steps: int = 0

    def step(self, _info=None) -> None:
        self.steps += 1
        if self.progress is not None:
            self.progress((min(self.steps, self.total), self.total), desc=self.desc, unit="step")
        if self.stop.is_set():
            raise Cancelled(f"stopped after {self.steps} of {self.total} steps")


class Session:
    """What the page's handlers do, without Gradio: check a request (fields, budget), run it on the one pipeline of this
    process, write its run directory. The Gradio layer (:func:`build_ui`) only maps widgets by name onto these calls.
    ``owner`` names the visitor whose Stop button ends the request (Gradio's session hash)."""

    def __init__(
        self, pipe: AnimateZeroPipeline, cfg: DictConfig, checkpoints: dict, output_root: str | Path | None = None,
        budget: float | None = None,
    ):  # fmt: skip
        self.pipe, self.cfg, self.checkpoints = pipe, cfg, checkpoints
        self.root = Path(output_root or cfg.paths.output_root)  # run directories: <root>/app/<date>/<time>
        self.budget = float(budget if budget is not None else BUDGET.get(pipe.device.type, BUDGET["cpu"]))
        self.lock = threading.Lock()  # requests take turns on the pipeline
        self.stops: dict[str, threading.Event] = {}

    @classmethod
    def load(cls, cfg: DictConfig, output_root: str | Path | None = None, budget: float | None = None) -> Session:
        """Build the pipeline as the CLI does (experiments/common.py): tiny files if asked, weights resolved, loaded."""
        common.check_sampler(cfg.sampler)
        device = common.pick_device(cfg.model.device)
        dtype = common.pick_dtype(cfg.model.dtype, device)
        common.ensure_synthetic(cfg)
        checkpoints = common.resolve_checkpoints(cfg)
        return cls(common.load_pipeline(cfg, checkpoints, device, dtype), cfg, checkpoints, output_root, budget)

    @property
    def name(self) -> str:
        """The weight files by name and the device, for the page's header."""
        image = Path(self.checkpoints.get("checkpoint", {}).get("ref", "the given networks")).name
        motion = self.checkpoints.get("motion_module", {}).get("ref")
        return f"{image} + {Path(motion).name if motion else 'no motion module (images only)'} on {self.pipe.device}"

    def stop(self, owner: str = "") -> None:
        """End ``owner``'s running request after its current sampling step."""
        self.stops.setdefault(owner, threading.Event()).set()

    @property
    def lora_text(self) -> str:
        """The merged SD1.5 LoRAs as the LoRA field shows them: ``ref:scale, ...``."""
        return ", ".join(f"{r['ref']}:{r['scale']:g}" for r in self.lora_records(self.checkpoints).values())

    @staticmethod
    def lora_records(checkpoints: Mapping[str, dict]) -> dict[str, dict]:
        return {k: v for k, v in checkpoints.items() if k.startswith("lora_")}  # lora_0, lora_1, ... (not motion_lora)

    def loras(self, text: str | None) -> dict[str, dict] | None:
        """The LoRA field (``style.safetensors:0.8, other.safetensors``; empty: none) as run.json's ``lora_i``
        records ``{ref, path, sha256, scale}``: entries parsed and files resolved by the CLI's code
        (:func:`experiments.common.resolve_checkpoints`: the config's ``lora`` list), so a bad entry or a missing file
        is refused before any work. ``None``: keep the LoRAs merged now."""
        if text is None:
            return None
        cfg = copy.deepcopy(self.cfg)
        cfg.lora = [item.strip() for item in str(text).strip().strip("[]").split(",") if item.strip()]
        return self.lora_records(common.resolve_checkpoints(cfg)) if cfg.lora else {}

    @contextmanager
    def turn(self, owner: str, total: int, desc: str, progress=None, loras: dict[str, dict] | None = None):
        """The model for one request (they take turns) with ``loras`` merged (:meth:`loras`; only re-merged when they
        differ from the merged ones), yielding its :class:`Job`."""
        stop = self.stops.setdefault(owner, threading.Event())
        stop.clear()  # a Stop pressed before this request does not end it
        with self.lock, common.cpu_threads(self.cfg.model.cpu_threads):
            if loras is not None and loras != self.lora_records(self.checkpoints):
                self.pipe.set_loras(common.lora_files(loras))  # every file checked first: nothing changes on an error
                self.checkpoints = {k: v for k, v in self.checkpoints.items() if not k.startswith("lora_")} | loras
            yield Job(total, desc, stop, progress, dict(self.checkpoints))

    def check_budget(self, what: str, count: int, steps: int, height: int, width: int, unit: str, extra: int = 0):
        check_work(self.budget, str(self.pipe.device), what, count, steps, height, width, unit, extra)

    def prompt(self, text: str | None, what: str = "prompt") -> str:
        """``text`` stripped; more than CLIP's 75 tokens is an error (the end would be silently cut off)."""
        text = (text or "").strip()
        n = len(self.pipe.tokenizer.encode(text)) if text else 0
        if n > MAX_PROMPT_TOKENS:
            raise AppInputError(
                f"the {what} is {n} tokens long; CLIP reads at most {MAX_PROMPT_TOKENS}, so the end would be "
                "ignored. Shorten it."
            )
        return text

    def sampler(self, steps, guidance, height, width) -> dict[str, Any]:
        """The page's sampling fields, checked by the pipeline's own checks (:mod:`animatezero.checks`)."""
        try:
            guidance = float(guidance)
        except (TypeError, ValueError):
            raise AppInputError(f"guidance must be a number, got {guidance!r}") from None
        steps = as_int(steps, "steps", 1, 1000)
        height, width = as_int(height, "height", 0, 10**6), as_int(width, "width", 0, 10**6)
        checks.check_sampling(steps, guidance)
        checks.check_size(height, width)
        return {"steps": steps, "guidance_scale": guidance, "height": height, "width": width}

    # step 1 ---------------------------------------------------------------------------------------------------------
    def candidates(
        self, *, prompt, negative="", seed=0, count=1, steps, guidance, height, width, loras=None, owner="",
        progress=None,
    ) -> list[ImageResult]:  # fmt: skip
        """``count`` images of the prompt for consecutive seeds (-1: a random first seed)."""
        prompt, negative = self.prompt(prompt), self.prompt(negative, "negative prompt")
        if not prompt:
            raise AppInputError('write a prompt first, e.g. "a cat, blinking"')
        seed = as_int(seed, "seed", -1, 2**31 - 1)
        seed = new_seed() if seed < 0 else seed
        count = as_int(count, "number of candidates", 1, MAX_CANDIDATES)
        s = self.sampler(steps, guidance, height, width)
        self.check_budget(f"{count} candidates", count, s["steps"], s["height"], s["width"], "candidates")
        loras = self.loras(loras)
        with self.turn(owner, count * s["steps"], "candidates", progress, loras) as job:
            seeds = list(range(seed, seed + count))
            return self.pipe.candidates(prompt, seeds, negative_prompt=negative, callback=job.step, **s)

    def invert(
        self, *, upload, prompt="", negative="", steps, guidance, height, width, loras=None, owner="", progress=None
    ) -> ImageResult:
        """A real image -> VAE encode -> DDIM inversion (``info["psnr_db"]``: the VAE reconstruction's PSNR)."""
        prompt, negative = self.prompt(prompt), self.prompt(negative, "negative prompt")
        s = self.sampler(steps, guidance, height, width)
        self.check_budget("inverting the image", 1, s["steps"], s["height"], s["width"], "images")
        pixels = load_upload(upload, (s["height"], s["width"]))
        loras = self.loras(loras)
        with self.turn(owner, s["steps"], "inverting", progress, loras):
            image = self.pipe.invert_image(pixels, prompt, negative_prompt=negative, **s)
        image.info["source"] = Path(upload).name
        return image

    # step 2 ---------------------------------------------------------------------------------------------------------
    def animate(
        self, image: ImageResult | None, controls: Controls, *, frames, seed=-1, fps=8, motion_prompt="",
        end_prompt="", mode="animate", end_upload=None, loras=None, owner="", progress=None,
    ) -> Run:  # fmt: skip
        """Animate the picked image (``mode``: a clip, a loop, or an interpolation to an uploaded second image; every
        control off: plain AnimateDiff) and write its run directory. Every field is checked before any work."""
        if image is None:
            raise AppInputError("pick an image first: click a candidate in the gallery, or invert an uploaded image")
        self.require_motion()
        if mode not in MODES:
            raise AppInputError(f"mode must be one of {MODES}, got {mode!r}")
        fps = as_int(fps, "fps", 1, 240)
        frames = as_int(frames, "frames", 1 if mode == "animate" else 2, 1024)
        seed = as_int(seed, "video seed", -1, 2**31 - 1)
        seed = seed if seed >= 0 else (image.seed if image.seed is not None else new_seed())
        motion_prompt = self.prompt(motion_prompt, "motion prompt") or None
        end_prompt = self.prompt(end_prompt, "end prompt") or None
        second = mode == MODES[2]
        cached = controls.share_kv and controls.kv_source == "cached"
        extra = (int(cached) + 1) * second + int(cached)  # replayed anchors and the second image's inversion
        self.check_budget(f"{frames} frames", frames, image.steps, image.height, image.width, "frames", extra)
        last_pixels = load_upload(end_upload, (image.height, image.width), "second image") if second else None
        loras = self.loras(loras)
        t0 = time.perf_counter()
        with self.turn(owner, image.steps, "video", progress, loras) as job:  # the steps of the clip (Stop ends them)
            last = image if mode == "loop" else None
            if second:
                last = self.pipe.invert_image(
                    last_pixels, motion_prompt or image.prompt, height=image.height, width=image.width,
                    steps=image.steps, guidance_scale=image.guidance_scale, negative_prompt=image.negative_prompt,
                )  # fmt: skip
                last.info["source"] = Path(end_upload).name
            try:
                video = self.pipe.animate(
                    image, motion_prompt, last=last, controls=controls, num_frames=frames, seed=seed,
                    end_prompt=end_prompt, callback=job.step,
                )  # fmt: skip
            finally:  # the keys/values recorded for this clip (large at full size) are not kept in the session
                image.kv_bank = None
        run = Run(image, video, controls, seed, checkpoints=job.checkpoints, seconds=time.perf_counter() - t0)
        return self.write(run, fps)

    def extend(self, run: Run | None, *, frames, fps=8, loras=None, owner="", progress=None) -> Run:
        """Continue the last clip from its last frame (seamless join) and write the longer clip's run directory."""
        if run is None:
            raise AppInputError("animate something first; continue extends the last clip")
        fps, frames = as_int(fps, "fps", 1, 240), as_int(frames, "frames", 2, 1024)
        image = run.image
        # the last frame's inversion and its replayed keys/values come on top of the new frames
        self.check_budget(f"{frames} more frames", frames, image.steps, image.height, image.width, "frames", 2)
        loras = self.loras(loras)
        t0 = time.perf_counter()
        with self.turn(owner, image.steps, "continue", progress, loras) as job:
            video = self.pipe.continue_video(
                run.video, num_frames=frames, steps=image.steps, guidance_scale=image.guidance_scale,
                negative_prompt=image.negative_prompt, controls=run.controls, seed=run.seed + run.segments,
                callback=job.step,
            )  # fmt: skip
        video.info["mode"] = run.video.info["mode"]
        seconds = time.perf_counter() - t0
        longer = Run(image, video, run.controls, run.seed, run.segments + 1, job.checkpoints, seconds=seconds)
        return self.write(longer, fps)

    def require_motion(self) -> None:
        if self.pipe.motion_module is None:
            raise AppInputError(
                "this app was started without a motion module, so it can make images but not animate them: restart it "
                "with motion_module=<file>, e.g. animatezero-app checkpoint=... motion_module=mm_sd_v15_v2.ckpt"
            )

    def write(self, run: Run, fps: int) -> Run:
        """The run directory (experiments/runs.py): the CLI's files (``paths.run_files``), frames.zip and run.json."""
        run.run_dir = prepare_run_dir(cli.default_run_dir(self.root, "app"))
        files = common.run_files(self.cfg, run.run_dir)
        common.write_outputs(files, run.image, run.video, fps)
        files["zip"] = Path(shutil.make_archive(str(files["frames"]), "zip", root_dir=files["frames"]))
        image, video = run.image, run.video
        plain = lambda info: {k: v for k, v in info.items() if isinstance(v, int | float | str | bool | list)}  # noqa: E731
        sampler = {"steps": image.steps, "guidance_scale": image.guidance_scale, "height": image.height}
        record = RunRecord(
            run.run_dir, kind="app", mode=run.mode, prompt=image.prompt, negative_prompt=image.negative_prompt,
            motion_prompt=video.prompt, seeds={"image": image.seed, "video": run.seed},
            sampler={**sampler, "width": image.width, "num_frames": video.num_frames, "fps": fps},
            controls=asdict(run.controls), files={k: p.name for k, p in files.items()},
            checkpoints=run.checkpoints, dtype=str(self.pipe.dtype).removeprefix("torch."),
            **environment(str(self.pipe.device)),
        )  # fmt: skip
        record.data["timings"]["generate_s"] = round(run.seconds, 4)
        run.first_frame_psnr = round(psnr(video.frames[0], image.image), 3)
        metrics = {"first_frame_psnr": run.first_frame_psnr}
        record.done(quick_metrics=metrics, image_info=plain(image.info), video_info=plain(video.info))
        run.files = {**files, "run": run.run_dir / "run.json"}
        return run


# ------------------------------------------------------------------------------------------------- the page
HISTORY_HEADERS = ["time", "mode", "prompt", "image seed", "video seed", "frames", "frame-0 PSNR (dB)", "seconds", "folder"]  # fmt: skip
SAMPLING = ("steps", "guidance", "height", "width", "loras")  # what making and inverting an image read
# the controls panel: rows of (Controls field, label), by subject; a step range is two sliders, "<label> from/to"
CONTROL_ROWS = (
    [("insert_latent", "Latent insertion (frame 0 = the image)")], [("insert_steps", "insert")],
    [("share_kv", "Share frame 0's keys/values")], [("kv_mode", "K/V mode"), ("kv_source", "K/V source")],
    [("kv_blocks", "K/V blocks")], [("kv_levels", "K/V levels")], [("kv_steps", "share")],
    [("window_attention", "Window attention")], [("window_blocks", "Window blocks")],
    [("window_size", "Window size (0: the clip)")],
    [("position_correction", "Position correction")], [("sliding_windows", "Sliding windows (long clips)")],
    [("noise_share", "Initial noise shared with the image's (0: own)")],
)
CHOICES = {"kv_mode": ["replace", "concat"], "kv_source": ["cached", "current"], "kv_levels": ["0", "1", "2", "3"]}
CHOICES |= {"kv_blocks": list(BLOCKS), "window_blocks": list(BLOCKS)}


def control_widget(gr, c: dict[str, Any], name: str, label: str, shown: Mapping[str, Any]) -> None:
    """The widget(s) of Controls field ``name``, added to ``c`` by widget name (``shown``: :func:`control_values`)."""
    if name in STEP_RANGES:
        with gr.Row():
            for end in ("from", "to"):
                c[f"{name}_{end}"] = gr.Slider(0, 1, shown[f"{name}_{end}"], step=0.05, label=f"{label} {end}")
        return
    value = shown[name]
    if isinstance(value, bool):
        c[name] = gr.Checkbox(value, label=label)
    elif name in CHOICES:  # one of them (a string), or several (a list)
        c[name] = (gr.Radio if isinstance(value, str) else gr.CheckboxGroup)(CHOICES[name], value=value, label=label)
    elif name == "window_size":
        c[name] = gr.Number(label=label, value=value, precision=0)
    else:
        c[name] = gr.Slider(0, 1, value=value, step=0.1, label=label)


def build_ui(session: Session):
    """The Gradio page. Every input widget is kept by the name of the argument it fills (``w``) or the Controls field
    it shows (``c``); every handler receives all of them as one dict and returns a dict of the components it changes.
    An error changes only the status box (and shows a toast), so the page never shows a traceback and keeps working."""
    import gradio as gr

    cfg, s, shown = session.cfg, session.cfg.sampler, control_values(Controls.paper())
    track = gr.Progress()  # as a default argument it makes Gradio pass each event's progress bar
    upload_types = sorted({*UPLOAD_FORMATS.values(), ".jpeg"})
    w: dict[str, Any] = {}  # input widgets by Session argument
    c: dict[str, Any] = {}  # the controls panel by Controls field (a step range: <field>_from, <field>_to)

    with gr.Blocks(title="AnimateZero") as demo:
        gr.Markdown(
            "# AnimateZero\nMake images until one is right, pick it, and animate exactly that image: the clip's first "
            f"frame is the picked image. Model: `{session.name}`; budget {session.budget:g} megapixel-steps "
            "per request."
        )
        candidates_state, picked_state = gr.State(None), gr.State(None)  # list[ImageResult], the ImageResult to animate
        run_state, history_state = gr.State(None), gr.State([])  # the last Run (for continue), the history's rows
        with gr.Row():
            with gr.Column(scale=1):
                with gr.Tabs():
                    with gr.Tab("Text to image"):
                        w["prompt"] = gr.Textbox(
                            label="Prompt", placeholder="a cat, blinking", lines=2, elem_id="prompt"
                        )
                        w["negative"] = gr.Textbox(label="Negative prompt", value=str(cfg.negative_prompt or ""))
                        with gr.Row():
                            seed = int(cfg.seed or 0)
                            w["seed"] = gr.Number(label="Seed (-1: random)", value=seed, precision=0, elem_id="seed")
                            w["count"] = gr.Slider(
                                1, MAX_CANDIDATES, value=4, step=1, label="Candidates", elem_id="count"
                            )
                        make = gr.Button("Make candidates", variant="primary", elem_id="make")
                    with gr.Tab("Real image", elem_id="real-tab"):
                        label = "Image to animate (PNG, JPEG, WebP)"
                        w["upload"] = gr.File(label=label, file_types=upload_types, type="filepath", elem_id="upload")
                        w["upload_prompt"] = gr.Textbox(
                            label="What it shows (optional prompt)", elem_id="upload-prompt"
                        )
                        invert = gr.Button("Invert (make it animatable)", variant="primary", elem_id="invert")
                with gr.Accordion("Sampling", open=True):
                    with gr.Row():
                        w["steps"] = gr.Number(label="Steps", value=int(s.steps), precision=0, elem_id="steps")
                        w["guidance"] = gr.Number(label="Guidance", value=float(s.guidance_scale))
                    with gr.Row():
                        w["height"] = gr.Number(label="Height", value=int(s.height), precision=0, elem_id="height")
                        w["width"] = gr.Number(label="Width", value=int(s.width), precision=0, elem_id="width")
                    w["loras"] = gr.Textbox(
                        label="LoRAs (file or hub file, optional :scale; empty: none)", value=session.lora_text,
                        placeholder="style.safetensors:0.8, hf://org/repo/other.safetensors", elem_id="loras",
                    )  # fmt: skip
                with gr.Accordion("Controls", open=False):
                    preset = gr.Dropdown(list(Controls.PRESETS), value="paper", label="Preset")
                    for row in CONTROL_ROWS:
                        with gr.Row() if len(row) > 1 else nullcontext():
                            for name, label in row:
                                control_widget(gr, c, name, label, shown)
            with gr.Column(scale=1):
                label = "Candidates (click one to pick it)"
                gallery = gr.Gallery(label=label, columns=4, format="png", allow_preview=False, elem_id="candidates")
                picked_view = gr.Image(
                    label="Image to animate", format="png", interactive=False, height=160, elem_id="picked"
                )
                with gr.Row():
                    w["mode"] = gr.Radio(list(MODES), value="animate", label="Mode", elem_id="mode")
                w["end_upload"] = gr.File(
                    label="Second image (interpolation)", file_types=upload_types, type="filepath", visible=False,
                    elem_id="end-upload",
                )  # fmt: skip
                w["motion_prompt"] = gr.Textbox(label="Motion prompt (optional; default: the image's prompt)")
                w["end_prompt"] = gr.Textbox(label="End prompt (optional; the text moves to it over the clip)")
                with gr.Row():
                    w["frames"] = gr.Number(label="Frames", value=int(s.num_frames), precision=0, elem_id="frames")
                    w["video_seed"] = gr.Number(label="Video seed (-1: the image's)", value=-1, precision=0)
                    w["fps"] = gr.Number(label="fps", value=int(s.fps), precision=0, elem_id="fps")
                with gr.Row():
                    animate = gr.Button("Animate", variant="primary", elem_id="animate")
                    extend = gr.Button("Continue clip", elem_id="continue")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
            with gr.Column(scale=1):
                status = gr.Markdown("Write a prompt and make candidates.", elem_id="status")
                video = gr.Video(label="Clip", autoplay=True, loop=True, interactive=False, height=320, elem_id="video")
                downloads = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id="downloads")
        history = gr.Dataframe(
            headers=HISTORY_HEADERS, value=None, label="This session's runs", interactive=False, elem_id="history"
        )

        # handlers -----------------------------------------------------------------------------------------------
        def fail(e: BaseException) -> dict:
            if isinstance(e, Cancelled):
                return {status: f"Stopped: {e}."}
            if isinstance(e, cli.user_errors()):
                message = str(e)
            elif isinstance(e, torch.cuda.OutOfMemoryError | MemoryError):  # too big for this machine: say what helps
                message = f"out of memory: {e} Try fewer frames, a smaller size, or fewer candidates."
            else:  # a bug: the message in the page, the traceback in the server log
                traceback.print_exc()
                message = f"internal error ({type(e).__name__}: {e}); the app is still running, see the server log"
            gr.Warning(message)
            return {status: f"**Error:** {message}"}

        def shown_in_page(handler):
            """``handler``, with every failure a message in the page (:func:`fail`). Gradio reads the signature
            (``gr.Request``, ``gr.Progress``) of the wrapped function."""

            @functools.wraps(handler)
            def wrapped(*args, **kwargs):
                try:
                    return handler(*args, **kwargs)
                except Exception as e:  # noqa: BLE001 - every failure becomes a message in the page
                    return fail(e)

            return wrapped

        def named(data: dict, *names: str) -> dict[str, Any]:
            return {name: data[w[name]] for name in names}

        @shown_in_page
        def on_make(data: dict, request, progress=track):
            images = session.candidates(
                **named(data, "prompt", "negative", "seed", "count", *SAMPLING), owner=request.session_hash,
                progress=progress,
            )  # fmt: skip
            return {
                candidates_state: images,
                gallery: [(to_pil(im.image), f"seed {im.seed}") for im in images],
                status: f"{len(images)} candidates. Click one to pick it, then Animate.",
            }

        def on_pick(images, evt):
            if not images or evt.index is None or not 0 <= evt.index < len(images):
                return {status: "**Error:** that candidate is gone; make candidates again"}
            im = images[evt.index]
            message = f"Picked candidate {evt.index + 1} (seed {im.seed}). Animate it."
            return {picked_state: im, picked_view: to_pil(im.image), status: message}

        @shown_in_page
        def on_invert(data: dict, request, progress=track):
            im = session.invert(
                upload=data[w["upload"]], prompt=data[w["upload_prompt"]], **named(data, "negative", *SAMPLING),
                owner=request.session_hash, progress=progress,
            )  # fmt: skip
            message = f"Inverted {im.info['source']}: reconstruction PSNR {im.info['psnr_db']:.2f} dB. Animate it."
            return {picked_state: im, picked_view: to_pil(im.image), status: message}

        def finish(run: Run, rows: list) -> dict:
            image, frames = run.image, run.video.num_frames
            seconds, psnr0 = round(run.seconds, 1), run.first_frame_psnr
            rows = [[time.strftime("%H:%M:%S"), run.mode, image.prompt, image.seed, run.seed, frames, psnr0, seconds,
                     str(run.run_dir)], *rows]  # fmt: skip
            note = (
                "frame 0 is the picked image"
                if run.video.info["mode"] != "animatediff"
                else "plain AnimateDiff (every control off): frame 0 is not the image"
            )
            return {
                run_state: run,
                video: str(run.files["video"]),
                downloads: [str(run.files[k]) for k in ("video", "gif", "zip", "run")],
                status: f"Done in {seconds} s: {frames} frames, {run.mode}; {note} (frame-0 PSNR {psnr0:.1f} dB). "
                f"Files in `{run.run_dir}`.",
                history_state: rows,
                history: rows,
            }

        @shown_in_page
        def on_animate(data: dict, request, progress=track):
            run = session.animate(
                data[picked_state], controls_from({name: data[widget] for name, widget in c.items()}),
                **named(data, "frames", "fps", "motion_prompt", "end_prompt", "mode", "end_upload", "loras"),
                seed=data[w["video_seed"]], owner=request.session_hash, progress=progress,
            )  # fmt: skip
            return finish(run, data[history_state])

        @shown_in_page
        def on_extend(data: dict, request, progress=track):
            args = named(data, "frames", "fps", "loras")
            run = session.extend(data[run_state], **args, owner=request.session_hash, progress=progress)
            return finish(run, data[history_state])

        def on_stop(request) -> None:  # the running request then ends after its current step and says so itself
            session.stop(request.session_hash)

        @shown_in_page
        def on_preset(name):
            return {c[k]: v for k, v in control_values(Controls.preset(name)).items()}

        # Gradio finds the request and event-data arguments by their annotations, which this module's postponed
        # annotations would leave as unresolvable strings (gradio is imported locally)
        for handler in (on_make, on_invert, on_animate, on_extend, on_stop):
            handler.__annotations__["request"] = gr.Request
        on_pick.__annotations__["evt"] = gr.SelectData

        everything = {*w.values(), *c.values(), picked_state, run_state, history_state}
        run_outputs = [run_state, video, downloads, status, history_state, history]
        w["mode"].change(lambda m: gr.update(visible=m == MODES[2]), w["mode"], w["end_upload"])
        preset.change(on_preset, preset, [*c.values(), status])
        make.click(on_make, everything, [candidates_state, gallery, status], concurrency_id="model")
        gallery.select(on_pick, candidates_state, [picked_state, picked_view, status])
        invert.click(on_invert, everything, [picked_state, picked_view, status], concurrency_id="model")
        animate.click(on_animate, everything, run_outputs, concurrency_id="model")
        extend.click(on_extend, everything, run_outputs, concurrency_id="model")
        stop.click(on_stop, None, None, queue=False)  # not queued: it must run while the model is busy
    demo.queue(default_concurrency_limit=1)  # one generation at a time: the model is shared by every visitor
    return demo


def to_pil(image):
    """``[3, H, W]`` in [0, 1] -> a PIL image (the exact 8-bit pixels written to image.png)."""
    from PIL import Image

    from animatezero.io import to_uint8

    return Image.fromarray(to_uint8(image))


# ------------------------------------------------------------------------------------------------- entry point
def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="animatezero-app",
        description="AnimateZero in a web page. Extra arguments are Hydra overrides of configs/generate.yaml "
        "(e.g. debug=tiny, checkpoint=... motion_module=...). Without a model choice: the toy-world model.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860; 0: the first free one from 7860 up)")
    parser.add_argument(
        "--budget", type=float, default=None, help="the most work one request may ask for, in megapixel-steps "
        f"(UNet passes x pixels / 1e6; default {BUDGET['cpu']:g} on a CPU, {BUDGET['cuda']:g} on a GPU)",
    )  # fmt: skip
    args, overrides = parser.parse_known_args(argv)
    unknown = [o for o in overrides if o.startswith("-")]
    if unknown:
        parser.error(f"unknown options {unknown}; model choices are overrides like checkpoint=... or debug=tiny")
    if args.budget is not None and not args.budget > 0:
        parser.error(f"--budget must be a positive number of megapixel-steps, got {args.budget}")
    return args, overrides


def launch(session: Session, host: str, port: int, block: bool = True):
    """Serve the page; with ``block=False`` return ``(demo, url)`` and serve in a background thread."""
    demo = build_ui(session)
    _, url, _ = demo.launch(
        server_name=host, server_port=port or None, prevent_thread_lock=not block, quiet=not block, footer_links=[],
        allowed_paths=[str((session.root / "app").resolve())], max_file_size=MAX_UPLOAD_BYTES,
    )  # fmt: skip
    return demo, url


def main(argv: list[str] | None = None) -> None:
    """The ``animatezero-app`` console script."""
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        import gradio  # noqa: F401
    except ImportError:
        print('animatezero-app: error: the app needs Gradio: pip install -e ".[app]"', file=sys.stderr)
        raise SystemExit(2) from None
    try:
        session = Session.load(compose_config(overrides), budget=args.budget)
    except Exception as e:  # a user error, or a bad override (a Hydra error): one line, not a traceback
        if isinstance(e, cli.user_errors()) or type(e).__module__.startswith(("hydra", "omegaconf")):
            print(f"animatezero-app: error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        raise
    print(f"[animatezero-app] {session.name}; budget {session.budget:g} megapixel-steps per request", flush=True)
    launch(session, args.host, args.port)


if __name__ == "__main__":
    main()
