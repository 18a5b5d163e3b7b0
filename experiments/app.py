"""The interactive app (console script ``animatezero-app``): make images until one is right, then animate exactly that
image in a web page (the paper's interactive video generation, Sec. 5).

    animatezero-app                                   # the toy-world model shipped with the package (offline)
    animatezero-app debug=tiny                        # tiny random weights: the plumbing in seconds (noise pictures)
    animatezero-app checkpoint=toonyou.safetensors motion_module=mm_sd_v15_v2.ckpt
    animatezero-app --host 0.0.0.0 --port 7860 model.device=cuda:1

Everything after the flags is a Hydra override of configs/generate.yaml, as for the ``animatezero`` CLI; the model is
built by experiments/common.py exactly as there, once per process. Generations run one at a time (a queue of one per
model). Each animation is written to a run directory (``<paths.output_root>/app/<date>/<time>``: image.png, video.mp4,
video.gif, frames/, frames.zip, run.json) whose files the page offers for download.

Needs the ``app`` extra: ``pip install -e ".[app]"``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import inspect
import shutil
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from animatezero.controls import BLOCKS, Controls
from animatezero.hub import DownloadError
from animatezero.pipeline import AnimateZeroPipeline, new_seed
from animatezero.results import ImageResult, VideoResult, psnr
from experiments import common
from experiments.runs import OutputDirError, OutputPathError, RunRecord, environment, prepare_run_dir
from models.readers import CheckpointError

# What a user can get wrong (shown in the page as one message); anything else is a bug, logged with its traceback.
USER_ERRORS = (DownloadError, CheckpointError, OutputDirError, OutputPathError, FileNotFoundError, ValueError)
# Uploads are checked before they are decoded: file size, then the format and dimensions from the header alone.
MAX_UPLOAD_BYTES = 25 * 1024 * 1024
MAX_UPLOAD_SIDE = 8192
MAX_UPLOAD_PIXELS = 40_000_000
UPLOAD_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "BMP": ".bmp"}
MAX_PROMPT_TOKENS = 75  # CLIP reads 77 tokens: start, 75 of the prompt, end
MAX_CANDIDATES = 8
# the keys that choose a model; without any of them the toy-world model is used
MODEL_KEYS = ("model", "checkpoint", "motion_module", "debug", "model.checkpoint", "motion", "motion.checkpoint")
MODES = ("animate", "loop", "interpolate to a second image")


class AppInputError(ValueError):
    """Bad input in the page (shown there as one message)."""


# ------------------------------------------------------------------------------------------------- model
def toyworld_files() -> list[Path] | None:
    """The toy-world model's weight files (``model=toyworld``) when the package ships its config, else None."""
    if not resources.files("configs").joinpath("model", "toyworld.yaml").is_file():
        return None
    cfg = _compose(["model=toyworld"])
    return [Path(str(cfg.model.checkpoint)), Path(str(cfg.motion.checkpoint))]


def toyworld_available() -> bool:
    """Whether the toy-world model is installed: its config and its weight files."""
    files = toyworld_files()
    return files is not None and all(f.is_file() for f in files)


def model_overrides(overrides: list[str]) -> list[str]:
    """``overrides`` plus ``model=toyworld`` when they choose no model; with no toy world installed, an error that
    says how to choose one."""
    keys = {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}
    if keys & set(MODEL_KEYS):
        return list(overrides)
    files = toyworld_files()
    if files is not None and all(f.is_file() for f in files):
        return ["model=toyworld", *overrides]
    missing = "" if files is None else f" (missing: {', '.join(str(f) for f in files if not f.is_file())})"
    raise AppInputError(
        f"no model given and the toy-world model is not installed in this package{missing}: pass weights, e.g. "
        "animatezero-app checkpoint=v1-5-pruned-emaonly.safetensors motion_module=mm_sd_v15_v2.ckpt, "
        "or try the plumbing with animatezero-app debug=tiny (random weights)"
    )


def _compose(overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="configs", version_base="1.3"):
        return compose("generate", overrides=list(overrides))


def compose_config(overrides: list[str]) -> DictConfig:
    """configs/generate.yaml with the overrides (Hydra's compose API; no run directory is made)."""
    cfg = _compose(model_overrides(overrides))
    cfg.prompt = ""  # the page supplies prompts
    cfg.out_dir = None  # the page makes one run directory per animation
    return cfg


@dataclass
class Model:
    """The one pipeline of this process, what built it, and the lock that makes generations take turns."""

    pipe: AnimateZeroPipeline
    cfg: DictConfig
    device: str
    checkpoints: dict
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def load(cls, cfg: DictConfig) -> Model:
        """Build the pipeline as the CLI does (experiments/common.py): tiny files if asked, hub references resolved,
        then the single-file loaders."""
        common.check_sampler(cfg.sampler)
        device = common.pick_device(cfg.model.device)
        dtype = common.pick_dtype(cfg.model.dtype, device)
        common.ensure_synthetic(cfg)
        checkpoints = common.resolve_checkpoints(cfg)
        pipe = common.load_pipeline(cfg, checkpoints, device, dtype)
        return cls(pipe, cfg, device, checkpoints)

    @property
    def name(self) -> str:
        """The weight files by name and the device, for the page's header."""
        image = self.checkpoints.get("checkpoint", {}).get("ref", "the given networks")
        motion = self.checkpoints.get("motion_module", {}).get("ref")
        motion = Path(motion).name if motion else "no motion module (images only)"
        return f"{Path(image).name} + {motion} on {self.device}"


# ------------------------------------------------------------------------------------------------- checks
def check_prompt(pipe: AnimateZeroPipeline, text: str | None, what: str = "prompt") -> str:
    """``text`` stripped; more than CLIP's 75 tokens is an error (the end would be silently cut off)."""
    text = (text or "").strip()
    n = len(pipe.tokenizer.encode(text)) if text else 0
    if n > MAX_PROMPT_TOKENS:
        raise AppInputError(
            f"the {what} is {n} tokens long; CLIP reads at most {MAX_PROMPT_TOKENS}, so the end would be ignored. "
            "Shorten it."
        )
    return text


def as_int(value: Any, what: str, low: int, high: int) -> int:
    """A whole number in ``[low, high]`` from a page field, or a message naming the field."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise AppInputError(f"{what} must be a whole number, got {value!r}") from None
    if number != int(number) or not low <= number <= high:
        raise AppInputError(f"{what} must be a whole number from {low} to {high}, got {value!r}")
    return int(number)


def check_upload(path: str | Path | None, what: str = "image") -> Path:
    """An uploaded file's path, refused before decoding when it is too large in bytes, not a PNG/JPEG/WebP/BMP
    image, or too large in pixels (read from the header only)."""
    from PIL import Image, UnidentifiedImageError

    if path is None:
        raise AppInputError(f"no {what} uploaded: choose a PNG, JPEG or WebP file")
    path = Path(path)
    if not path.is_file():
        raise AppInputError(f"the uploaded {what} is gone from the server; upload it again")
    size = path.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise AppInputError(
            f"the {what} {path.name!r} is {size / 2**20:.1f} MB; the limit is {MAX_UPLOAD_BYTES // 2**20} MB. "
            "Upload a smaller file."
        )
    limit = f"the limit is {MAX_UPLOAD_SIDE} pixels a side and {MAX_UPLOAD_PIXELS / 1e6:.0f} megapixels. Downscale it first."
    try:
        with Image.open(path) as img:  # reads the header only
            fmt, (width, height) = img.format, img.size
    except Image.DecompressionBombError as e:  # Pillow's own guard, far above our limit
        raise AppInputError(f"{path.name!r} is far too large ({e}); {limit}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise AppInputError(f"cannot read {path.name!r} as an image; upload a PNG, JPEG or WebP file") from None
    if fmt not in UPLOAD_FORMATS:
        raise AppInputError(f"{path.name!r} is a {fmt} image; upload a PNG, JPEG or WebP file")
    if max(width, height) > MAX_UPLOAD_SIDE or width * height > MAX_UPLOAD_PIXELS:
        raise AppInputError(f"{path.name!r} is {width}x{height} pixels; {limit}")
    return path


# ------------------------------------------------------------------------------------------------- controls
# the switches shown in the controls panel, in the order of the handlers' arguments
SWITCHES = (
    "insert_latent",
    "insert_steps",
    "share_kv",
    "kv_mode",
    "kv_source",
    "kv_blocks",
    "kv_levels",
    "kv_steps",
    "window_attention",
    "window_blocks",
    "window_size",
    "position_correction",
    "sliding_windows",
    "noise_share",
)


def switch_values(controls: Controls) -> list[Any]:
    """``controls`` as the panel's widget values (step ranges as two sliders each, window size 0 = the clip)."""
    out: list[Any] = []
    for name in SWITCHES:
        value = getattr(controls, name)
        if name in ("insert_steps", "kv_steps"):
            out.extend(value)
        elif name in ("kv_blocks", "window_blocks"):
            out.append(list(value))
        elif name == "kv_levels":
            out.append([str(v) for v in value])
        elif name == "window_size":
            out.append(0 if value is None else value)
        else:
            out.append(value)
    return out


def controls_from_values(values: list[Any]) -> Controls:
    """The inverse of :func:`switch_values` (validated by ``Controls``)."""
    fields: dict[str, Any] = {}
    values = list(values)
    for name in SWITCHES:
        if name in ("insert_steps", "kv_steps"):
            fields[name] = (float(values.pop(0)), float(values.pop(0)))
        elif name in ("kv_blocks", "window_blocks"):
            chosen = values.pop(0)
            fields[name] = tuple(b for b in BLOCKS if b in chosen)
        elif name == "kv_levels":
            fields[name] = tuple(sorted(int(v) for v in values.pop(0)))
        elif name == "window_size":
            size = as_int(values.pop(0), "window size", 0, 1024)
            fields[name] = size or None
        elif name == "noise_share":
            fields[name] = float(values.pop(0))
        else:
            fields[name] = values.pop(0)
    return Controls(**fields)


# ------------------------------------------------------------------------------------------------- the work
@dataclass
class Clip:
    """The session's last animation: what ``continue`` extends."""

    image: ImageResult
    video: VideoResult
    controls: Controls
    seed: int
    mode: str
    segments: int = 1


def step_callback(progress, total: int, desc: str):
    """A pipeline ``callback`` that moves the page's progress bar one step per sampler step."""
    done = [0]

    def callback(_info) -> None:
        done[0] += 1
        if progress is not None:
            progress((min(done[0], total), total), desc=desc, unit="step")

    return callback


def accepts(fn, name: str) -> bool:
    return name in inspect.signature(fn).parameters


class Session:
    """What the page's handlers do, without Gradio: make candidates, invert an upload, animate, continue, write a run
    directory. The Gradio layer (:func:`build_ui`) only turns widgets into these calls and errors into messages."""

    def __init__(self, model: Model, output_root: str | Path | None = None):
        self.model = model
        self.pipe = model.pipe
        self.root = Path(output_root or Path(model.cfg.paths.output_root) / "app")

    # step 1 ---------------------------------------------------------------------------------------------------------
    def candidates(self, prompt, negative, seed, count, steps, guidance, height, width, progress=None):
        prompt = check_prompt(self.pipe, prompt)
        negative = check_prompt(self.pipe, negative, "negative prompt")
        if not prompt:
            raise AppInputError('write a prompt first, e.g. "a cat, blinking"')
        seed = as_int(seed, "seed", -1, 2**31 - 1)
        seed = new_seed() if seed < 0 else seed
        count = as_int(count, "number of candidates", 1, MAX_CANDIDATES)
        settings = self.sampler(steps, guidance, height, width)
        cb = step_callback(progress, count * settings["steps"], "candidates")
        with self.model.lock, common.cpu_threads(self.model.cfg.model.cpu_threads):
            return self.pipe.candidates(
                prompt, list(range(seed, seed + count)), negative_prompt=negative, callback=cb, **settings
            )

    def sampler(self, steps, guidance, height, width) -> dict[str, Any]:
        try:
            guidance = float(guidance)
        except (TypeError, ValueError):
            raise AppInputError(f"guidance must be a number, got {guidance!r}") from None
        return {
            "steps": as_int(steps, "steps", 1, 200),
            "guidance_scale": guidance,
            "height": as_int(height, "height", 0, 10**6),  # the pipeline's size check gives the message
            "width": as_int(width, "width", 0, 10**6),
        }

    def invert(self, path, prompt, negative, steps, guidance, height, width, progress=None) -> ImageResult:
        """A real image -> VAE encode -> DDIM inversion (``info["psnr_db"]``: the VAE reconstruction's PSNR)."""
        path = check_upload(path)
        prompt = check_prompt(self.pipe, prompt)
        negative = check_prompt(self.pipe, negative, "negative prompt")
        settings = self.sampler(steps, guidance, height, width)
        if progress is not None:
            progress(None, desc="inverting")
        with self.model.lock, common.cpu_threads(self.model.cfg.model.cpu_threads):
            return self.pipe.invert_image(str(path), prompt, negative_prompt=negative, **settings)

    # step 2 ---------------------------------------------------------------------------------------------------------
    def animate(
        self,
        image: ImageResult | None,
        controls: Controls,
        frames,
        seed,
        motion_prompt: str | None = None,
        end_prompt: str | None = None,
        mode: str = "animate",
        end_upload: str | None = None,
        progress=None,
    ) -> Clip:
        if image is None:
            raise AppInputError("pick an image first: click a candidate in the gallery, or invert an uploaded image")
        if self.pipe.motion_module is None:
            raise AppInputError(
                "this app was started without a motion module, so it can make images but not animate them: restart it "
                "with motion_module=<file>, e.g. animatezero-app checkpoint=... motion_module=mm_sd_v15_v2.ckpt"
            )
        if mode not in MODES:
            raise AppInputError(f"mode must be one of {MODES}, got {mode!r}")
        frames = as_int(frames, "frames", 2 if mode != "animate" else 1, 256)
        seed = as_int(seed, "video seed", -1, 2**31 - 1)
        seed = seed if seed >= 0 else (image.seed if image.seed is not None else new_seed())
        motion_prompt = check_prompt(self.pipe, motion_prompt, "motion prompt") or None
        end_prompt = check_prompt(self.pipe, end_prompt, "end prompt") or None
        if end_prompt and mode != "animate":
            raise AppInputError("the end prompt steers a plain animation only; clear it for loop or interpolation")
        last = None
        if mode == "interpolate to a second image":
            last_path = check_upload(end_upload, "second image")
        cb = step_callback(progress, image.steps, "video")
        with self.model.lock, common.cpu_threads(self.model.cfg.model.cpu_threads):
            if mode == "interpolate to a second image":
                if progress is not None:
                    progress(None, desc="inverting the second image")
                last = self.pipe.invert_image(
                    str(last_path),
                    motion_prompt or image.prompt,
                    height=image.height,
                    width=image.width,
                    steps=image.steps,
                    guidance_scale=image.guidance_scale,
                    negative_prompt=image.negative_prompt,
                )
            if not controls.any:  # every control off: plain AnimateDiff text-to-video, as the CLI does
                video = self.pipe.baseline_video(
                    image,
                    motion_prompt,
                    num_frames=frames,
                    seed=seed,
                    sliding_windows=controls.sliding_windows,
                    callback=cb,
                )
                return Clip(image, video, controls, seed, "animatediff")
            kwargs = {"controls": controls, "num_frames": frames, "seed": seed, "callback": cb}
            try:
                if mode == "loop":
                    video = self.pipe.loop(image, motion_prompt, **kwargs)
                elif last is not None:
                    video = self.pipe.interpolate(image, last, motion_prompt, **kwargs)
                else:
                    video = self.pipe.animate(image, motion_prompt, end_prompt=end_prompt, **kwargs)
            finally:
                # the keys/values recorded for this animation (large at full size) are not kept in the session: a
                # later animation of the same image records them again
                image.kv_bank = None
        return Clip(image, video, controls, seed, {"animate": "animatezero"}.get(mode, mode.split()[0]))

    def extend(self, clip: Clip | None, frames, progress=None) -> Clip:
        """Continue the last clip from its last frame (seamless join)."""
        if clip is None:
            raise AppInputError("animate something first; continue extends the last clip")
        frames = as_int(frames, "frames", 2, 256)
        image = clip.image
        kwargs: dict[str, Any] = {}
        if accepts(self.pipe.continue_video, "callback"):
            kwargs["callback"] = step_callback(progress, image.steps, "continue")
        elif progress is not None:
            progress(None, desc="continuing")
        with self.model.lock, common.cpu_threads(self.model.cfg.model.cpu_threads):
            video = self.pipe.continue_video(
                clip.video,
                num_frames=frames,
                steps=image.steps,
                guidance_scale=image.guidance_scale,
                negative_prompt=image.negative_prompt,
                controls=clip.controls,
                seed=clip.seed + clip.segments,
                **kwargs,
            )
        return Clip(image, video, clip.controls, clip.seed, f"{clip.mode}+continue", clip.segments + 1)

    # files ----------------------------------------------------------------------------------------------------------
    def write(self, clip: Clip, fps, seconds: float) -> tuple[Path, dict[str, Path], dict]:
        """A run directory like the CLI's: image.png, video.mp4, video.gif, frames/, frames.zip and run.json."""
        fps = as_int(fps, "fps", 1, 60)
        stamp = _dt.datetime.now().strftime("%Y-%m-%d/%H-%M-%S-%f")
        run_dir = prepare_run_dir(self.root / stamp)
        files = {
            "image": run_dir / "image.png",
            "video": run_dir / "video.mp4",
            "gif": run_dir / "video.gif",
            "frames": run_dir / "frames",
        }
        common.write_outputs(files, clip.image, clip.video, fps)
        files["zip"] = Path(shutil.make_archive(str(run_dir / "frames"), "zip", root_dir=files["frames"]))
        image = clip.image
        psnr0 = round(psnr(clip.video.frames[0], clip.image.image), 3)
        record = RunRecord(
            run_dir,
            kind="app",
            mode=clip.mode,
            prompt=image.prompt,
            negative_prompt=image.negative_prompt,
            motion_prompt=clip.video.prompt,
            seeds={"image": image.seed, "video": clip.seed},
            sampler={
                "steps": image.steps,
                "guidance_scale": image.guidance_scale,
                "height": image.height,
                "width": image.width,
                "num_frames": clip.video.num_frames,
                "fps": fps,
            },
            controls=asdict(clip.controls),
            files={k: p.name for k, p in files.items()},
            checkpoints=self.model.checkpoints,
            dtype=str(self.pipe.dtype).removeprefix("torch."),
            **environment(self.model.device),
        )
        image_info = {k: v for k, v in image.info.items() if isinstance(v, int | float | str | bool)}
        video_info = {k: v for k, v in clip.video.info.items() if isinstance(v, int | float | str | bool | list)}
        metrics = {"first_frame_psnr": psnr0}
        record.data["timings"]["generate_s"] = round(seconds, 4)
        record.done(quick_metrics=metrics, image_info=image_info, video_info=video_info)
        files["run"] = run_dir / "run.json"
        return run_dir, files, metrics


# ------------------------------------------------------------------------------------------------- the page
HISTORY_HEADERS = [
    "time",
    "mode",
    "prompt",
    "image seed",
    "video seed",
    "frames",
    "frame-0 PSNR (dB)",
    "seconds",
    "folder",
]


def build_ui(session: Session):
    """The Gradio page. Handlers return a dict of the components they change; an error changes only the status box
    (and shows a toast), so the page never shows a traceback and keeps working."""
    import gradio as gr

    cfg = session.model.cfg
    s = cfg.sampler
    track = gr.Progress()  # as a default argument it makes Gradio pass each event's progress bar

    def fail(status, e: BaseException) -> dict:
        if isinstance(e, USER_ERRORS):
            message = str(e)
        elif isinstance(e, torch.cuda.OutOfMemoryError | MemoryError):  # too big for this machine: say what helps
            message = f"out of memory: {e} Try fewer frames, a smaller size, or fewer candidates."
        else:  # a bug: the message in the page, the traceback in the server log
            traceback.print_exc()
            message = f"internal error ({type(e).__name__}: {e}); the app is still running, see the server log"
        gr.Warning(message)
        return {status: f"**Error:** {message}"}

    with gr.Blocks(title="AnimateZero") as demo:
        gr.Markdown(
            "# AnimateZero\nMake images until one is right, pick it, and animate exactly that image: the clip's first "
            f"frame is the picked image. Model: `{session.model.name}`."
        )
        candidates_state = gr.State(None)  # list[ImageResult]
        picked_state = gr.State(None)  # ImageResult to animate
        clip_state = gr.State(None)  # Clip (for continue)
        history_state = gr.State([])  # rows of the history table

        with gr.Row():
            with gr.Column(scale=1):
                with gr.Tabs():
                    with gr.Tab("Text to image"):
                        prompt = gr.Textbox(label="Prompt", placeholder="a cat, blinking", lines=2, elem_id="prompt")
                        negative = gr.Textbox(label="Negative prompt", value=str(cfg.negative_prompt or ""))
                        with gr.Row():
                            seed = gr.Number(
                                label="Seed (-1: random)", value=int(cfg.seed or 0), precision=0, elem_id="seed"
                            )
                            count = gr.Slider(1, MAX_CANDIDATES, value=4, step=1, label="Candidates", elem_id="count")
                        make = gr.Button("Make candidates", variant="primary", elem_id="make")
                    with gr.Tab("Real image", elem_id="real-tab"):
                        upload = gr.File(
                            label="Image to animate (PNG, JPEG, WebP)",
                            file_types=[".png", ".jpg", ".jpeg", ".webp", ".bmp"],
                            type="filepath",
                            elem_id="upload",
                        )
                        upload_prompt = gr.Textbox(label="What it shows (optional prompt)", elem_id="upload-prompt")
                        invert = gr.Button("Invert (make it animatable)", variant="primary", elem_id="invert")
                with gr.Accordion("Sampling", open=True):
                    with gr.Row():
                        steps = gr.Number(label="Steps", value=int(s.steps), precision=0, elem_id="steps")
                        guidance = gr.Number(label="Guidance", value=float(s.guidance_scale))
                    with gr.Row():
                        height = gr.Number(label="Height", value=int(s.height), precision=0, elem_id="height")
                        width = gr.Number(label="Width", value=int(s.width), precision=0, elem_id="width")
                with gr.Accordion("Controls", open=False):
                    preset = gr.Dropdown(list(Controls.PRESETS), value="paper", label="Preset")
                    p = Controls.paper()
                    insert_latent = gr.Checkbox(p.insert_latent, label="Latent insertion (frame 0 = the image)")
                    with gr.Row():
                        insert_a = gr.Slider(0, 1, value=p.insert_steps[0], step=0.05, label="insert from")
                        insert_b = gr.Slider(0, 1, value=p.insert_steps[1], step=0.05, label="insert to")
                    share_kv = gr.Checkbox(p.share_kv, label="Share frame 0's keys/values")
                    with gr.Row():
                        kv_mode = gr.Radio(["replace", "concat"], value=p.kv_mode, label="K/V mode")
                        kv_source = gr.Radio(["cached", "current"], value=p.kv_source, label="K/V source")
                    kv_blocks = gr.CheckboxGroup(list(BLOCKS), value=list(p.kv_blocks), label="K/V blocks")
                    kv_levels = gr.CheckboxGroup(["0", "1", "2", "3"], value=["0", "1", "2", "3"], label="K/V levels")
                    with gr.Row():
                        kv_a = gr.Slider(0, 1, value=p.kv_steps[0], step=0.05, label="share from")
                        kv_b = gr.Slider(0, 1, value=p.kv_steps[1], step=0.05, label="share to")
                    window_attention = gr.Checkbox(p.window_attention, label="Window attention")
                    window_blocks = gr.CheckboxGroup(list(BLOCKS), value=list(p.window_blocks), label="Window blocks")
                    window_size = gr.Number(label="Window size (0: the clip)", value=0, precision=0)
                    position_correction = gr.Checkbox(p.position_correction, label="Position correction")
                    sliding_windows = gr.Checkbox(p.sliding_windows, label="Sliding windows (long clips)")
                    noise_share = gr.Slider(
                        0, 1, value=p.noise_share, step=0.1, label="Initial noise shared with the image's (0: own)"
                    )
                switches = [
                    insert_latent,
                    insert_a,
                    insert_b,
                    share_kv,
                    kv_mode,
                    kv_source,
                    kv_blocks,
                    kv_levels,
                    kv_a,
                    kv_b,
                    window_attention,
                    window_blocks,
                    window_size,
                    position_correction,
                    sliding_windows,
                    noise_share,
                ]

            with gr.Column(scale=1):
                gallery = gr.Gallery(
                    label="Candidates (click one to pick it)",
                    columns=4,
                    format="png",
                    allow_preview=False,
                    elem_id="candidates",
                )
                picked_view = gr.Image(
                    label="Image to animate", format="png", interactive=False, height=160, elem_id="picked"
                )
                with gr.Row():
                    mode = gr.Radio(list(MODES), value="animate", label="Mode", elem_id="mode")
                end_upload = gr.File(
                    label="Second image (interpolation)",
                    file_types=[".png", ".jpg", ".jpeg", ".webp", ".bmp"],
                    type="filepath",
                    visible=False,
                    elem_id="end-upload",
                )
                motion_prompt = gr.Textbox(label="Motion prompt (optional; default: the image's prompt)")
                end_prompt = gr.Textbox(label="End prompt (optional; the text moves to it over the clip)")
                with gr.Row():
                    frames = gr.Number(label="Frames", value=int(s.num_frames), precision=0, elem_id="frames")
                    video_seed = gr.Number(label="Video seed (-1: the image's)", value=-1, precision=0)
                    fps = gr.Number(label="fps", value=int(s.fps), precision=0)
                with gr.Row():
                    animate = gr.Button("Animate", variant="primary", elem_id="animate")
                    extend = gr.Button("Continue clip", elem_id="continue")
            with gr.Column(scale=1):
                status = gr.Markdown("Write a prompt and make candidates.", elem_id="status")
                video = gr.Video(label="Clip", autoplay=True, loop=True, interactive=False, height=320, elem_id="video")
                downloads = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id="downloads")
        history = gr.Dataframe(
            headers=HISTORY_HEADERS, value=None, label="This session's runs", interactive=False, elem_id="history"
        )

        # handlers -----------------------------------------------------------------------------------------------
        def on_preset(name):
            try:
                return dict(zip(switches, switch_values(Controls.preset(name))))
            except ValueError as e:
                return fail(status, e)

        def on_make(prompt_, negative_, seed_, count_, steps_, guidance_, height_, width_, progress=track):
            try:
                images = session.candidates(
                    prompt_, negative_, seed_, count_, steps_, guidance_, height_, width_, progress
                )
            except Exception as e:  # noqa: BLE001 - every failure becomes a message in the page
                return fail(status, e)
            items = [(to_pil(im.image), f"seed {im.seed}") for im in images]
            return {
                candidates_state: images,
                gallery: items,
                status: f"{len(images)} candidates. Click one to pick it, then Animate.",
            }

        def on_pick(images, evt: gr.SelectData):
            if not images or evt.index is None or not 0 <= evt.index < len(images):
                return {status: "**Error:** that candidate is gone; make candidates again"}
            im = images[evt.index]
            return {
                picked_state: im,
                picked_view: to_pil(im.image),
                status: f"Picked candidate {evt.index + 1} (seed {im.seed}). Animate it.",
            }

        # Gradio finds the event-data argument by its annotation, which this module's postponed annotations would
        # leave as an unresolvable string (gradio is imported locally)
        on_pick.__annotations__["evt"] = gr.SelectData

        def on_invert(path, prompt_, negative_, steps_, guidance_, height_, width_, progress=track):
            try:
                im = session.invert(path, prompt_, negative_, steps_, guidance_, height_, width_, progress)
            except Exception as e:  # noqa: BLE001
                return fail(status, e)
            return {
                picked_state: im,
                picked_view: to_pil(im.image),
                status: f"Inverted {Path(path).name}: reconstruction PSNR {im.info['psnr_db']:.2f} dB. Animate it.",
            }

        def finish(clip: Clip, fps_, t0: float, rows: list) -> dict:
            run_dir, files, metrics = session.write(clip, fps_, time.perf_counter() - t0)
            seconds = round(time.perf_counter() - t0, 1)
            row = [
                time.strftime("%H:%M:%S"),
                clip.mode,
                clip.image.prompt,
                clip.image.seed,
                clip.seed,
                clip.video.num_frames,
                metrics["first_frame_psnr"],
                seconds,
                str(run_dir),
            ]
            rows = [row, *rows]
            note = (
                "frame 0 is the picked image"
                if clip.mode != "animatediff"
                else "plain AnimateDiff (every control off): frame 0 is not the image"
            )
            return {
                clip_state: clip,
                video: str(files["video"]),
                downloads: [str(files[k]) for k in ("video", "gif", "zip", "run")],
                status: f"Done in {seconds} s: {clip.video.num_frames} frames, {clip.mode}; {note} "
                f"(frame-0 PSNR {metrics['first_frame_psnr']:.1f} dB). Files in `{run_dir}`.",
                history_state: rows,
                history: rows,
            }

        def on_animate(data: dict, progress=track):  # data: component -> value (a set of inputs)
            t0 = time.perf_counter()
            try:
                controls = controls_from_values([data[c] for c in switches])
                clip = session.animate(
                    data[picked_state],
                    controls,
                    data[frames],
                    data[video_seed],
                    data[motion_prompt],
                    data[end_prompt],
                    data[mode],
                    data[end_upload],
                    progress,
                )
                return finish(clip, data[fps], t0, data[history_state])
            except Exception as e:  # noqa: BLE001
                return fail(status, e)

        def on_extend(clip, frames_, fps_, rows, progress=track):
            t0 = time.perf_counter()
            try:
                return finish(session.extend(clip, frames_, progress), fps_, t0, rows)
            except Exception as e:  # noqa: BLE001
                return fail(status, e)

        run_outputs = [clip_state, video, downloads, status, history_state, history]
        mode.change(lambda m: gr.update(visible=m == MODES[2]), mode, end_upload)
        preset.change(on_preset, preset, [*switches, status])
        make.click(
            on_make,
            [prompt, negative, seed, count, steps, guidance, height, width],
            [candidates_state, gallery, status],
            concurrency_id="model",
        )
        gallery.select(on_pick, candidates_state, [picked_state, picked_view, status])
        invert.click(
            on_invert,
            [upload, upload_prompt, negative, steps, guidance, height, width],
            [picked_state, picked_view, status],
            concurrency_id="model",
        )
        animate.click(
            on_animate,
            {
                picked_state,
                mode,
                end_upload,
                motion_prompt,
                end_prompt,
                frames,
                video_seed,
                fps,
                history_state,
                *switches,
            },
            run_outputs,
            concurrency_id="model",
        )
        extend.click(on_extend, [clip_state, frames, fps, history_state], run_outputs, concurrency_id="model")
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
    parser.add_argument(
        "--port", type=int, default=7860, help="port (default 7860; 0: the first free one from 7860 up)"
    )
    args, overrides = parser.parse_known_args(argv)
    unknown = [o for o in overrides if o.startswith("-")]
    if unknown:
        parser.error(f"unknown options {unknown}; model choices are overrides like checkpoint=... or debug=tiny")
    return args, overrides


def launch(session: Session, host: str, port: int, block: bool = True):
    """Serve the page; with ``block=False`` return ``(demo, url)`` and serve in a background thread."""
    demo = build_ui(session)
    _, url, _ = demo.launch(
        server_name=host,
        server_port=port or None,
        prevent_thread_lock=not block,
        allowed_paths=[str(session.root.resolve())],
        max_file_size=MAX_UPLOAD_BYTES,
        quiet=not block,
        footer_links=[],
    )
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
        model = Model.load(compose_config(overrides))
    except USER_ERRORS as e:
        print(f"animatezero-app: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as e:  # noqa: BLE001 - a bad override is a Hydra error: one line, not a traceback
        if type(e).__module__.startswith(("hydra", "omegaconf")):
            print(f"animatezero-app: error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        raise
    print(f"[animatezero-app] {model.name}", flush=True)
    launch(Session(model), args.host, args.port)


if __name__ == "__main__":
    main()
