"""The two-step pipeline (paper Sec. 4, Fig. 3): step 1 text-to-image with the SD1.5 UNet, recording the trajectory
(and, when asked, the spatial self-attention keys/values); step 2 image-to-video with the same UNet plus AnimateDiff
motion modules under AnimateZero's controls. Plain AnimateDiff text-to-video is step 2 with every control off.
"""

from __future__ import annotations

import math
import numbers
import os
import warnings
from contextlib import ExitStack, contextmanager
from dataclasses import replace as replace_fields
from pathlib import Path

import torch
from torch import Tensor

from animatezero.controls import Controls, spatial_processors, steps_in_range, temporal_processors
from animatezero.hooks import installed, spatial_self_attention_layers
from animatezero.io import check_image_size, load_image
from animatezero.processors import Anchor, KVBank, RecordKV, StepState
from animatezero.results import ImageResult, VideoResult
from models.compile import compile_module, compile_options, uses_cuda_graphs
from models.ddim import DDIMSchedule, ddim_invert, ddim_sample, ddim_step
from models.guidance import cfg_denoiser

MIN_SIZE, MAX_SIZE = 64, 2048


def check_size(height: int, width: int) -> None:
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or value % 8 or not MIN_SIZE <= value <= MAX_SIZE:
            raise ValueError(
                f"{name} must be a multiple of 8 between {MIN_SIZE} and {MAX_SIZE} pixels, got {value!r} "
                f"(e.g. {max(MIN_SIZE, min(MAX_SIZE, round(value / 64) * 64)) if isinstance(value, int) else 512})"
            )


MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes 64-bit seeds


class NonFiniteError(ValueError):
    """Sampling produced NaN or infinite values (damaged weights, extreme guidance or inputs): the frames would be
    black or noise, so no result is returned."""


def check_sampling(steps: int, guidance_scale: float) -> None:
    if not isinstance(steps, int) or steps < 1 or steps > 1000:
        raise ValueError(f"steps must be an integer in 1..1000, got {steps!r}")
    if isinstance(guidance_scale, bool) or not (guidance_scale >= 0 and math.isfinite(guidance_scale)):
        raise ValueError(f"guidance_scale must be >= 0 and finite (1 = no guidance), got {guidance_scale!r}")


def check_seed(seed: int) -> int:
    """A seed is a whole number in 0..2**64-1 (a float such as 1.5 would be truncated silently, so it is refused)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise ValueError(f"seed must be a whole number in 0..2**64-1, got {seed!r} ({type(seed).__name__})")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed {seed} is out of range: use a whole number in 0..2**64-1")
    return int(seed)


def check_finite(x: Tensor, what: str) -> None:
    """Refuse a tensor holding NaN or infinity, naming it (inputs: ValueError; results: NonFiniteError)."""
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what} contain NaN or infinite values; pass finite numbers")


def default_cache_dir() -> Path:
    """``$ANIMATEZERO_CACHE``, else ``~/.cache/animatezero`` (the Hydra configs' ``paths.cache_dir``)."""
    return Path(os.environ.get("ANIMATEZERO_CACHE") or Path.home() / ".cache" / "animatezero").expanduser()


def new_seed() -> int:
    return int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF


class AnimateZeroPipeline:
    """SD1.5 + AnimateDiff with AnimateZero's controls.

    Attributes ``unet``, ``vae``, ``text_encoder``, ``tokenizer`` and ``motion_module`` are the hand-written modules
    from ``models/``; ``schedule`` is AnimateDiff's DDIM schedule (used for both steps so their latents line up).
    ``progress`` (default True): show a tqdm bar over the sampling steps of every call; ``pipe.progress = False``
    turns it off (a ``callback=`` per step is called either way).
    """

    progress: bool = True

    def __init__(
        self,
        unet,
        vae,
        text_encoder,
        tokenizer,
        motion_module=None,
        *,
        schedule: DDIMSchedule | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        vae_chunk_size: int | None = 8,
        offload: bool = False,
        compile: bool | str | dict = False,
        compile_cache_dir: str | os.PathLike | None = None,
        default_size: tuple[int, int] = (512, 512),
    ):
        """``vae_chunk_size``: frames decoded at once (bounds the decode's memory). ``offload``: keep every network in
        CPU memory and move it to the device only while it runs (lower peak memory, slower). ``compile``:
        ``torch.compile`` the UNet forward: ``True``, a mode (``"reduce-overhead"`` adds CUDA graphs,
        ``"max-autotune"``) or a dict of ``torch.compile`` options. The first call of each shape (image, video) pays
        the compilation; Inductor caches the result in ``compile_cache_dir`` (default ``$ANIMATEZERO_CACHE/torch_compile``,
        i.e. ``~/.cache/animatezero/torch_compile``; a set ``TORCHINDUCTOR_CACHE_DIR`` wins), so later processes
        compile much faster. See :mod:`models.compile`."""
        options = compile_options(compile)
        if offload and uses_cuda_graphs(options):
            raise ValueError(
                f"compile={compile!r} replays CUDA graphs, which need the weights at fixed addresses, but offload=True "
                "moves them at every call: use compile=True (no CUDA graphs) or offload=False"
            )
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.motion_module = motion_module
        self.schedule = schedule or DDIMSchedule()
        self.device, self.dtype = torch.device(device), dtype
        self.vae_chunk_size, self.offload = vae_chunk_size, offload
        self.default_size = (int(default_size[0]), int(default_size[1]))  # (height, width) when a call gives none
        home = torch.device("cpu") if offload else self.device
        for m in (unet, vae, text_encoder, motion_module):
            if m is not None:
                m.to(home, dtype).eval().requires_grad_(False)
        self._timesteps: dict[tuple[int, torch.device], Tensor] = {}
        self._cuda_graphs = uses_cuda_graphs(options)
        self._unet_forward = unet
        if options is not None:
            self._unet_forward = compile_module(
                unet, options, compile_cache_dir or default_cache_dir() / "torch_compile"
            )

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> AnimateZeroPipeline:
        """Move (and/or cast) every network; with ``offload`` they stay in CPU memory and ``device`` is where they run."""
        self.device = torch.device(device) if device is not None else self.device
        self.dtype = dtype or self.dtype
        home = torch.device("cpu") if self.offload else self.device
        for m in (self.unet, self.vae, self.text_encoder, self.motion_module):
            if m is not None:
                m.to(home, self.dtype)
        return self

    @contextmanager
    def _using(self, *modules):
        """Run with ``modules`` on the device: a no-op unless ``offload``, then they go back to CPU memory after. A CUDA
        out-of-memory error is re-raised naming the options that bound memory."""
        modules = [m for m in modules if m is not None]
        if self.offload:
            for m in modules:
                m.to(self.device)
        try:
            yield
        except torch.cuda.OutOfMemoryError as e:
            raise torch.cuda.OutOfMemoryError(
                f"{e}\n[animatezero] out of GPU memory. Options that bound memory: dtype=float16, a smaller "
                "vae_chunk_size (e.g. 1), offload=True (networks wait in CPU memory), fewer frames or a smaller size, "
                "kv_source='current' (no recorded keys/values)."
            ) from e
        finally:
            if self.offload:
                for m in modules:
                    m.to("cpu")

    @classmethod
    def from_single_files(
        cls,
        checkpoint: str | os.PathLike,
        motion_module: str | os.PathLike | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        motion_lora: str | os.PathLike | None = None,
        motion_lora_scale: float = 1.0,
        **kwargs,
    ) -> AnimateZeroPipeline:
        """Load an SD1.5 single-file checkpoint and (optionally) an AnimateDiff motion module, from local paths or hub
        references ``org/repo/file`` (downloaded on first use)."""
        from animatezero.hub import resolve_all
        from models.loading import load_motion_lora, load_motion_module, load_sd15
        from models.tokenizer import CLIPTokenizer

        # every file found first (offline: one error naming all that are missing), then loaded
        files = resolve_all({"checkpoint": checkpoint, "motion_module": motion_module, "motion_lora": motion_lora})
        unet, vae, text_encoder = load_sd15(files["checkpoint"], device=device, dtype=dtype)
        motion = None
        if motion_module is not None:
            motion = load_motion_module(files["motion_module"], unet_config=unet.config, device=device, dtype=dtype)
            if motion_lora is not None:
                load_motion_lora(files["motion_lora"], motion, alpha=motion_lora_scale)
        elif motion_lora is not None:
            raise ValueError("a motion LoRA needs a motion module: pass motion_module= as well")
        return cls(unet, vae, text_encoder, CLIPTokenizer(), motion, device=device, dtype=dtype, **kwargs)

    @classmethod
    def toyworld(cls, *, device: str | torch.device = "cpu", **kwargs) -> AnimateZeroPipeline:
        """The shipped toy-world model (:mod:`animatezero.toyworld`): offline, 64x64, meaningful pictures in seconds
        on a CPU. Its files are ordinary SD1.5 / AnimateDiff v2 checkpoints, loaded like any other."""
        from animatezero import toyworld

        checkpoint, motion_module = toyworld.files()
        kwargs.setdefault("default_size", (toyworld.HEIGHT, toyworld.WIDTH))
        return cls.from_single_files(checkpoint, motion_module, device=device, **kwargs)

    def size(self, height: int | None, width: int | None) -> tuple[int, int]:
        """The requested size, each side defaulting to the model's (``default_size``: 512x512 for SD1.5)."""
        return (height or self.default_size[0], width or self.default_size[1])

    # building blocks ------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode_prompt(self, prompt: str | list[str]) -> Tensor:
        """Prompt(s) -> CLIP last hidden state ``[b, 77, d]`` (pad to 77 with end-of-text, truncate like SD)."""
        ids = self.tokenizer(prompt).to(self.device)  # [b, 77]
        with self._using(self.text_encoder):
            return self.text_encoder(ids).to(self.dtype)  # [b, 77, d]

    def noise(self, shape: tuple[int, ...], seed: int) -> Tensor:
        """Initial latents from a CPU generator, so a seed means the same noise on every device."""
        g = torch.Generator("cpu").manual_seed(seed)
        return torch.randn(shape, generator=g, dtype=torch.float32).to(self.device, self.dtype)

    @torch.inference_mode()
    def decode(self, latents: Tensor) -> Tensor:
        """Latents ``[b, 4, h, w]`` -> images ``[b, 3, H, W]`` in [0, 1] (float32). In fp16 a non-finite result is
        retried in fp32 with a warning (the SD VAE can overflow in half precision)."""
        if not bool(torch.isfinite(latents).all()):
            raise NonFiniteError(
                "sampling produced NaN or infinite latents, so every frame would be black. Usual causes: damaged "
                "weights, an extreme guidance_scale, or reduced precision overflowing (try dtype=torch.float32)"
            )
        with self._using(self.vae):
            images = self.vae.decode(latents.to(self.device, self.dtype), chunk_size=self.vae_chunk_size)
            if not torch.isfinite(images).all() and self.dtype != torch.float32:
                warnings.warn("the VAE decode overflowed in reduced precision; decoding again in float32", stacklevel=2)
                self.vae.float()
                try:
                    images = self.vae.decode(latents.to(self.device).float(), chunk_size=self.vae_chunk_size)
                finally:
                    self.vae.to(self.dtype)
        if not bool(torch.isfinite(images).all()):
            raise NonFiniteError(
                "the VAE decoded NaN or infinite pixels from finite latents; the VAE weights are damaged"
            )
        return (images.float() / 2 + 0.5).clamp(0, 1)

    def _timestep(self, t: int, device: torch.device) -> Tensor:
        """Timestep ``t`` as a 0-d tensor on ``device``, made once: a Python int would be a constant to a compiled UNet
        (re-traced at every step), and a fresh host-to-device copy per call would synchronise with the GPU."""
        key = (t, device)
        if key not in self._timesteps:
            self._timesteps[key] = torch.tensor(t, device=device)
        return self._timesteps[key]

    def _model(self, x: Tensor, t: int, context: Tensor) -> Tensor:
        motion = self.motion_module if x.ndim == 5 else None
        if self._cuda_graphs:
            # each UNet call is a new CUDA-graph step: the previous call's outputs have been used (the noise
            # prediction) or copied (recorded keys/values, RecordKV.end_step)
            torch.compiler.cudagraph_mark_step_begin()
        return self._unet_forward(x, self._timestep(t, x.device), context, motion=motion)

    def _denoiser(self, cond: Tensor, uncond: Tensor, scale: float, state: StepState):
        """Guided noise prediction; the processors subscribed to ``state`` do their per-step work around each call."""
        guided = cfg_denoiser(self._model, cond, uncond, scale)

        def denoise(x: Tensor, t: int) -> Tensor:
            state.begin(t)
            eps = guided(x, t)
            state.end()
            return eps

        return denoise

    def _initial(self, latents: Tensor | None, shape: tuple[int, ...], seed: int) -> Tensor:
        """The given initial latents (shape- and finiteness-checked) or noise from ``seed`` (a checked integer)."""
        if seed is not None:
            check_seed(seed)
        if latents is None:
            return self.noise(shape, seed)
        if tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {list(shape)}, got {list(latents.shape)}")
        check_finite(latents, "latents")
        return latents.to(self.device, self.dtype)

    # step 1 ----------------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def text_to_image(
        self,
        prompt: str,
        *,
        negative_prompt: str = "",
        height: int | None = None,
        width: int | None = None,
        steps: int = 25,
        guidance_scale: float = 7.5,
        seed: int | None = None,
        latents: Tensor | None = None,
        record_kv: bool = False,
        callback=None,
    ) -> ImageResult:
        """Step 1: DDIM text-to-image with the spatial UNet alone, keeping every intermediate latent and, with
        ``record_kv``, the spatial self-attention keys/values of every layer, step and guidance branch. ``callback``
        sees every step's :class:`models.ddim.StepInfo` (e.g. for a progress bar), as in the video methods."""
        height, width = self.size(height, width)
        check_size(height, width)
        check_sampling(steps, guidance_scale)
        shape = (1, 4, height // 8, width // 8)
        seed = seed if seed is not None or latents is not None else new_seed()
        x = self._initial(latents, shape, seed)
        state = StepState()
        bank = KVBank() if record_kv else None
        recorders = {n: RecordKV(n, bank, state) for n in spatial_self_attention_layers(self.unet)} if bank else {}
        trajectory: list[Tensor] = []
        denoise = self._denoiser(self.encode_prompt(prompt), self.encode_prompt(negative_prompt), guidance_scale, state)

        def record(s) -> None:
            trajectory.append(s.x)
            if step is not None:
                step(s)

        with self._steps_bar(steps, "image", callback) as step, self._using(self.unet), installed(self.unet, recorders):
            z0 = ddim_sample(denoise, x, self.schedule, steps, callback=record)
        trajectory.append(z0)
        info = {"kv_bank_bytes": bank.nbytes} if bank else {}
        return ImageResult(
            image=self.decode(z0)[0].cpu(),
            latent=z0,
            trajectory=trajectory,
            timesteps=self.schedule.timesteps(steps),
            prompt=prompt,
            negative_prompt=negative_prompt,
            guidance_scale=guidance_scale,
            seed=seed,
            kv_bank=bank,
            info=info,
        )

    @torch.inference_mode()
    def record_features(self, image: ImageResult) -> KVBank:
        """Replay step 1 over ``image``'s trajectory and record the spatial self-attention keys/values of every layer,
        step and guidance branch. The UNet sees exactly the inputs it saw while generating, so this equals recording
        during :meth:`text_to_image`; it also gives features to inverted real images and to candidates made without
        ``record_kv``."""
        state, bank = StepState(), KVBank()
        recorders = {n: RecordKV(n, bank, state) for n in spatial_self_attention_layers(self.unet)}
        cond, uncond = self.encode_prompt(image.prompt), self.encode_prompt(image.negative_prompt)
        denoise = self._denoiser(cond, uncond, image.guidance_scale, state)
        with self._using(self.unet), installed(self.unet, recorders):
            for latent, t in zip(image.trajectory, image.timesteps):
                denoise(latent.to(self.device, self.dtype), t)
        image.kv_bank = bank
        image.info["kv_bank_bytes"] = bank.nbytes
        return bank

    # step 2 ----------------------------------------------------------------------------------------------------------
    def _require_motion(self) -> None:
        if self.motion_module is None:
            raise ValueError(
                "this pipeline has no motion module: load one with "
                "AnimateZeroPipeline.from_single_files(checkpoint, motion_module='mm_sd_v15_v2.ckpt')"
            )

    def _check_frames(self, num_frames: int, minimum: int = 1) -> None:
        if not isinstance(num_frames, int) or num_frames < minimum:
            raise ValueError(f"num_frames must be an integer >= {minimum}, got {num_frames!r}")

    def _text_context(self, prompt: str, end_prompt: str | None, num_frames: int) -> Tensor:
        """``[1, 77, d]``, or with ``end_prompt`` per-frame embeddings ``[1, f, 77, d]`` interpolated linearly from the
        prompt's (frame 0) to the end prompt's (last frame): text-controlled motion (paper project page)."""
        start = self.encode_prompt(prompt)
        if end_prompt is None:
            return start
        alpha = torch.linspace(0, 1, num_frames, device=self.device, dtype=self.dtype).view(1, -1, 1, 1)
        return torch.lerp(start[:, None], self.encode_prompt(end_prompt)[:, None], alpha)  # [1, f, 77, d]

    @torch.inference_mode()
    def _sample_video(
        self,
        x: Tensor,
        cond: Tensor,
        uncond: Tensor,
        guidance_scale: float,
        steps: int,
        controls: Controls,
        anchors: list[tuple[int, ImageResult]],
        callback=None,
        before_step=None,
    ) -> Tensor:
        """DDIM over video latents ``x [1, 4, f, h, w]`` with the controls installed. ``anchors`` are ``(frame, image)``
        pairs whose step-1 trajectories are inserted (paper Sec. 4.1) and whose keys/values are shared.
        ``before_step(i)`` runs before video step ``i`` (and with ``i = steps`` at the end): the lockstep hook."""
        num_frames = x.shape[2]
        timesteps = self.schedule.timesteps(steps)
        state = StepState()
        if cond.ndim == 4 and uncond.ndim == 3:  # per-frame prompts: the negative prompt is the same for all frames
            uncond = uncond[:, None].expand(-1, num_frames, -1, -1)
        insert = controls.insert_latent and bool(anchors)
        insert_at = steps_in_range(timesteps, controls.insert_steps) if insert else frozenset()
        final = insert and controls.insert_steps[1] >= 1.0
        replace = None
        if insert or before_step is not None:

            def replace(i: int, x: Tensor) -> Tensor:  # latent insertion (paper Sec. 4.1)
                if before_step is not None:
                    before_step(i)
                if (i < steps and timesteps[i] in insert_at) or (i == steps and final):
                    x = x.clone()
                    for frame, image in anchors:
                        x[:, :, frame] = image.trajectory[i].to(x.device, x.dtype)
                return x

        kv_anchors = []
        if controls.share_kv and anchors:
            cached = controls.kv_source == "cached"
            kv_anchors = [Anchor(frame, self._features(image) if cached else None) for frame, image in anchors]
        sp = spatial_processors(controls, self.unet, num_frames, timesteps, state, kv_anchors) if kv_anchors else {}
        tp = temporal_processors(
            controls,
            self.motion_module,
            num_frames,
            self.motion_module.config.max_positions,
            two_anchors=len(anchors) == 2,
            device=self.device,
            dtype=self.dtype,
        )
        denoise = self._denoiser(cond, uncond, guidance_scale, state)
        with ExitStack() as stack:
            stack.enter_context(self._using(self.unet, self.motion_module))
            stack.enter_context(installed(self.unet, sp))
            stack.enter_context(installed(self.motion_module, tp))
            step = stack.enter_context(self._steps_bar(steps, "video", callback))
            return ddim_sample(denoise, x, self.schedule, steps, replace=replace, callback=step)

    @contextmanager
    def _steps_bar(self, steps: int, desc: str, callback):
        """The per-step callback, advancing a tqdm bar over the sampling steps first when ``self.progress``."""
        if not self.progress:
            yield callback
            return
        from tqdm.auto import tqdm

        with tqdm(total=steps, desc=desc, unit="step", leave=False, dynamic_ncols=True) as bar:

            def step(info) -> None:
                bar.update(1)
                if callback is not None:
                    callback(info)

            yield step

    def _features(self, image: ImageResult) -> KVBank:
        return image.kv_bank if image.kv_bank is not None else self.record_features(image)

    def _video_result(self, z0: Tensor, prompt: str, seed: int | None, **info) -> VideoResult:
        b, c, f, h, w = z0.shape
        frames = self.decode(z0.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w))  # [f, 3, H, W]
        return VideoResult(frames=frames.cpu(), latents=z0, prompt=prompt, seed=seed, info=info)

    @torch.inference_mode()
    def text_to_video(
        self,
        prompt: str,
        *,
        num_frames: int = 16,
        negative_prompt: str = "",
        height: int | None = None,
        width: int | None = None,
        steps: int = 25,
        guidance_scale: float = 7.5,
        seed: int | None = None,
        latents: Tensor | None = None,
        sliding_windows: bool = False,
        callback=None,
    ) -> VideoResult:
        """Plain AnimateDiff text-to-video (the baseline): the video UNet with global temporal attention.
        ``sliding_windows`` allows clips longer than the motion module's position table (anchored windows)."""
        self._require_motion()
        self._check_frames(num_frames)
        height, width = self.size(height, width)
        check_size(height, width)
        check_sampling(steps, guidance_scale)
        shape = (1, 4, num_frames, height // 8, width // 8)
        seed = seed if seed is not None or latents is not None else new_seed()
        x = self._initial(latents, shape, seed)
        cond, uncond = self.encode_prompt(prompt), self.encode_prompt(negative_prompt)
        controls = replace_fields(Controls.animatediff(), sliding_windows=sliding_windows)
        z0 = self._sample_video(x, cond, uncond, guidance_scale, steps, controls, [], callback)
        return self._video_result(z0, prompt, seed)

    def _animate(
        self,
        anchors: list[tuple[int, ImageResult]],
        prompt: str | None,
        controls: Controls | None,
        num_frames: int,
        seed: int | None,
        latents: Tensor | None,
        negative_prompt: str | None,
        guidance_scale: float | None,
        end_prompt: str | None,
        callback,
    ) -> VideoResult:
        self._require_motion()
        self._check_frames(num_frames, minimum=len(anchors))
        controls = controls if controls is not None else Controls.paper()
        first = anchors[0][1]
        for _, image in anchors:
            if image.timesteps != self.schedule.timesteps(image.steps):
                raise ValueError("the image was made with another noise schedule; make it with this pipeline")
            if image.timesteps != first.timesteps or image.latent.shape != first.latent.shape:
                raise ValueError(
                    f"anchor images must share steps and size: got {image.steps} steps at {image.height}x{image.width}"
                    f" and {first.steps} steps at {first.height}x{first.width}"
                )
        guidance_scale = first.guidance_scale if guidance_scale is None else guidance_scale
        check_sampling(first.steps, guidance_scale)
        cached = controls.share_kv and controls.kv_source == "cached"
        if cached and (guidance_scale == 1.0) != (first.guidance_scale == 1.0):
            raise ValueError(
                f"cached keys/values were recorded with guidance {first.guidance_scale}; animate with guidance "
                f"{guidance_scale} changes the number of guidance branches. Use kv_source='current' or the same "
                "guidance"
            )
        prompt = first.prompt if prompt is None else prompt
        negative_prompt = first.negative_prompt if negative_prompt is None else negative_prompt
        h, w = first.latent.shape[-2:]
        shape = (1, 4, num_frames, h, w)
        seed = seed if seed is not None or latents is not None else new_seed()
        x = self._initial(latents, shape, seed)
        cond, uncond = self._text_context(prompt, end_prompt, num_frames), self.encode_prompt(negative_prompt)
        z0 = self._sample_video(x, cond, uncond, guidance_scale, first.steps, controls, anchors, callback)
        video = self._video_result(z0, prompt, seed)
        for frame, image in anchors:  # how exactly each anchor frame came out (the paper's promise)
            video.info[f"frame{frame}_psnr_db"] = psnr(video.frames[frame], image.image)
        return video

    @torch.inference_mode()
    def animate(
        self,
        image: ImageResult,
        prompt: str | None = None,
        *,
        controls: Controls | None = None,
        num_frames: int = 16,
        seed: int | None = None,
        latents: Tensor | None = None,
        negative_prompt: str | None = None,
        guidance_scale: float | None = None,
        end_prompt: str | None = None,
        callback=None,
    ) -> VideoResult:
        """Step 2 (paper Sec. 4): animate ``image`` (a step-1 or inverted result) into a clip whose first frame is
        that image.

        ``prompt=None`` reuses the image's prompt; another prompt steers the motion. ``end_prompt`` interpolates the
        text embedding from ``prompt`` (frame 0) to ``end_prompt`` (last frame). Sampling uses the image's steps (the
        trajectories must line up), guidance scale and negative prompt unless given.
        """
        return self._animate(
            [(0, image)],
            prompt,
            controls,
            num_frames,
            seed,
            latents,
            negative_prompt,
            guidance_scale,
            end_prompt,
            callback,
        )

    @torch.inference_mode()
    def generate(
        self,
        prompt: str,
        *,
        negative_prompt: str = "",
        height: int | None = None,
        width: int | None = None,
        steps: int = 25,
        guidance_scale: float = 7.5,
        seed: int | None = None,
        num_frames: int = 16,
        controls: Controls | None = None,
        image_latents: Tensor | None = None,
        video_latents: Tensor | None = None,
        callback=None,
    ) -> tuple[ImageResult, VideoResult]:
        """Step 1 and step 2 in lockstep: image step i runs just before video step i, so the keys/values of only one
        step are ever held (instead of every step's), with results identical to :meth:`text_to_image` with
        ``record_kv`` followed by :meth:`animate` (tested bit for bit). Image and video noise come from ``seed``."""
        self._require_motion()
        self._check_frames(num_frames)
        height, width = self.size(height, width)
        check_size(height, width)
        check_sampling(steps, guidance_scale)
        controls = controls if controls is not None else Controls.paper()
        seed = seed if seed is not None or (image_latents is not None and video_latents is not None) else new_seed()
        h, w = height // 8, width // 8
        z = self._initial(image_latents, (1, 4, h, w), seed)
        x = self._initial(video_latents, (1, 4, num_frames, h, w), seed)
        timesteps = self.schedule.timesteps(steps)
        cond, uncond = self.encode_prompt(prompt), self.encode_prompt(negative_prompt)
        image_state = StepState()
        cached = controls.share_kv and controls.kv_source == "cached"
        bank = KVBank() if cached else None
        # during an image step the spatial self-attention layers record (cached K/V) or run plainly (None), whatever
        # the video's processors on them are
        layers = spatial_self_attention_layers(self.unet)
        recorders = {n: RecordKV(n, bank, image_state) if cached else None for n in layers}
        image = ImageResult(
            image=torch.empty(0),
            latent=torch.empty(0),
            trajectory=[z],
            timesteps=timesteps,
            prompt=prompt,
            negative_prompt=negative_prompt,
            guidance_scale=guidance_scale,
            seed=seed,
            kv_bank=bank,
            info={"lockstep": True},
        )
        denoise_image = self._denoiser(cond, uncond, guidance_scale, image_state)

        def image_step(i: int) -> None:  # makes trajectory[i + 1] and step i's keys/values
            if i == steps:
                return
            t, t_prev = timesteps[i], self.schedule.previous(timesteps[i], steps)
            if bank is not None:
                bank.entries.clear()  # the previous step's keys/values are no longer needed
            with installed(self.unet, recorders):  # over the video's processors, restored after
                eps = denoise_image(image.trajectory[i], t)
            image.trajectory.append(
                ddim_step(image.trajectory[i], eps, self.schedule.alpha_bar(t), self.schedule.alpha_bar(t_prev))[0]
            )
            if bank is not None:
                image.info["kv_bank_bytes"] = bank.nbytes  # one step's worth

        z0 = self._sample_video(
            x, cond, uncond, guidance_scale, steps, controls, [(0, image)], callback, before_step=image_step
        )
        image.latent = image.trajectory[-1]
        image.image = self.decode(image.latent)[0].cpu()
        image.kv_bank = None  # only the last step's entries were left; drop them
        video = self._video_result(z0, prompt, seed)
        video.info["frame0_psnr_db"] = psnr(video.frames[0], image.image)
        return image, video

    @torch.inference_mode()
    def interpolate(
        self,
        first: ImageResult,
        last: ImageResult,
        prompt: str | None = None,
        *,
        controls: Controls | None = None,
        num_frames: int = 16,
        seed: int | None = None,
        latents: Tensor | None = None,
        negative_prompt: str | None = None,
        guidance_scale: float | None = None,
        callback=None,
    ) -> VideoResult:
        """A clip from ``first`` to ``last`` (our extension of the paper's interpolation application; see README):
        both trajectories are inserted (frame 0 and frame f-1), keys/values cross-fade from the first image's to the
        last's, and the window attention is anchored at both ends. Both anchor frames are reproduced exactly."""
        return self._animate(
            [(0, first), (num_frames - 1, last)],
            prompt,
            controls,
            num_frames,
            seed,
            latents,
            negative_prompt,
            guidance_scale,
            None,
            callback,
        )

    def loop(self, image: ImageResult, prompt: str | None = None, **kwargs) -> VideoResult:
        """A looping clip: first and last frame are both ``image``."""
        return self.interpolate(image, image, prompt, **kwargs)

    # applications ----------------------------------------------------------------------------------------------------
    def candidates(self, prompt: str, seeds: list[int], **kwargs) -> list[ImageResult]:
        """Interactive generation, step 1: several images of one prompt; animate the one you like."""
        return [self.text_to_image(prompt, seed=seed, **kwargs) for seed in seeds]

    @torch.inference_mode()
    def invert_latent(
        self,
        latent: Tensor,
        prompt: str = "",
        *,
        steps: int = 25,
        guidance_scale: float = 7.5,
        negative_prompt: str = "",
        image: Tensor | None = None,
    ) -> ImageResult:
        """DDIM inversion of a clean latent ``[1, 4, h, w]`` along this pipeline's timesteps (conditional branch only,
        as usual for inversion), giving a trajectory that :meth:`animate` consumes. ``guidance_scale`` is the one the
        animation will use."""
        check_sampling(steps, guidance_scale)
        latent = latent.to(self.device, self.dtype)
        cond = self.encode_prompt(prompt)
        with self._using(self.unet):
            trajectory = ddim_invert(lambda x, t: self._model(x, t, cond), latent, self.schedule, steps)
        return ImageResult(
            image=(image if image is not None else self.decode(latent)[0]).cpu(),
            latent=latent,
            trajectory=trajectory,
            timesteps=self.schedule.timesteps(steps),
            prompt=prompt,
            negative_prompt=negative_prompt,
            guidance_scale=guidance_scale,
            seed=None,
        )

    @torch.inference_mode()
    def invert_image(
        self,
        image: str | os.PathLike | Tensor,
        prompt: str = "",
        *,
        height: int | None = None,
        width: int | None = None,
        steps: int = 25,
        guidance_scale: float = 7.5,
        negative_prompt: str = "",
    ) -> ImageResult:
        """Real-image animation, step 1: fit the image to the model's grid (:func:`fit_image`), VAE-encode it and
        DDIM-invert it. ``result.image`` is the VAE reconstruction (what frame 0 will show);
        ``result.info["psnr_db"]`` is its PSNR against the fitted input."""
        size = (height, width) if height is not None and width is not None else None
        pixels = load_image(image, size) if not isinstance(image, Tensor) else image.float()
        check_finite(pixels, "the image's pixels")
        pixels = fit_image(pixels, height, width, short_side=min(self.default_size))  # [3, H, W] in [0, 1]
        with self._using(self.vae):
            latent = self.vae.encode((pixels[None] * 2 - 1).to(self.device, self.dtype))  # [1, 4, H/8, W/8]
        result = self.invert_latent(
            latent, prompt, steps=steps, guidance_scale=guidance_scale, negative_prompt=negative_prompt
        )
        result.info.update(
            psnr_db=psnr(result.image, pixels), source=str(image) if not isinstance(image, Tensor) else "tensor"
        )
        return result

    @torch.inference_mode()
    def continue_video(
        self,
        video: VideoResult,
        prompt: str | None = None,
        *,
        num_frames: int = 16,
        steps: int = 25,
        guidance_scale: float = 7.5,
        negative_prompt: str = "",
        controls: Controls | None = None,
        seed: int | None = None,
    ) -> VideoResult:
        """A longer clip: the last frame of ``video`` (its latent, DDIM-inverted) is animated into a new clip that is
        appended without repeating the shared frame, so the join is seamless."""
        prompt = video.prompt if prompt is None else prompt
        last = self.invert_latent(
            video.latents[:, :, -1],
            prompt,
            steps=steps,
            guidance_scale=guidance_scale,
            negative_prompt=negative_prompt,
            image=video.frames[-1],
        )
        more = self.animate(last, prompt, controls=controls, num_frames=num_frames, seed=seed)
        return VideoResult(
            frames=torch.cat([video.frames, more.frames[1:]]),
            latents=torch.cat([video.latents, more.latents[:, :, 1:].to(video.latents.device)], dim=2),
            prompt=prompt,
            seed=more.seed,
            info={"segments": [video.num_frames, more.num_frames - 1]},
        )


def fit_image(image: Tensor, height: int | None = None, width: int | None = None, short_side: int = 512) -> Tensor:
    """Center-crop and resize ``[3, H, W]`` to the model's grid. With ``height``/``width`` given: the largest centered
    region of that aspect ratio, resized to exactly that size. Without: the short side becomes ``short_side`` and each
    side a multiple of 8 (the VAE's factor).

    The crop comes first, so the resize allocates the output size and never an upscaled copy of the whole source (a
    1x20000 strip fitted to 512x512 would otherwise need 63 GB); overly elongated or huge inputs are refused by
    :func:`animatezero.io.check_image_size`."""
    import torch.nn.functional as F

    _, h, w = image.shape
    check_image_size(h, w)
    if height is None or width is None:
        scale = short_side / min(h, w)
        height = height or max(MIN_SIZE, int(h * scale) // 8 * 8)
        width = width or max(MIN_SIZE, int(w * scale) // 8 * 8)
    check_size(height, width)
    # the centered source region with the target's aspect ratio: [3, crop_h, crop_w]
    crop_h, crop_w = (
        (h, max(1, round(h * width / height)))
        if w * height > h * width
        else (
            max(1, round(w * height / width)),
            w,
        )
    )
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    region = image[:, top : top + crop_h, left : left + crop_w]
    resized = F.interpolate(region[None], size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    return resized[0].clamp(0, 1)  # [3, height, width]


def psnr(a: Tensor, b: Tensor) -> float:
    """PSNR in dB of two images in [0, 1] (capped at 100 dB for identical images)."""
    mse = torch.mean((a.float().cpu() - b.float().cpu()) ** 2).item()
    return 100.0 if mse <= 1e-10 else min(100.0, 10 * math.log10(1.0 / mse))
