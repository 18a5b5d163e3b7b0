"""The two-step pipeline (paper Sec. 4, Fig. 3): step 1 text-to-image with the SD1.5 UNet, recording the trajectory
(and, when asked, the spatial self-attention keys/values); step 2 image-to-video with the same UNet plus AnimateDiff
motion modules under AnimateZero's controls (the loop is :func:`animatezero.method.sample_video`). Plain AnimateDiff
text-to-video is step 2 with every control off. The applications built on the two steps (interpolation, loops,
candidates, real images, continuation) are in :mod:`animatezero.applications`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import replace as replace_fields

import torch
from torch import Tensor

from animatezero import checks
from animatezero.applications import Applications
from animatezero.checks import NonFiniteError, new_seed
from animatezero.controls import Controls
from animatezero.hooks import installed
from animatezero.hub import default_cache_dir
from animatezero.method import LockstepImage, recorders, sample_video, stepped_denoiser
from animatezero.processors import Anchor, KVBank, StepState
from animatezero.progress import step_bar
from animatezero.results import ImageResult, VideoResult, psnr
from models.ddim import DDIMSchedule, ddim_sample
from models.runner import UNetRunner

__all__ = ["AnimateZeroPipeline", "NonFiniteError", "default_cache_dir", "new_seed"]

OOM_ADVICE = (
    "[animatezero] out of GPU memory. Options that bound memory: dtype=float16, a smaller vae_chunk_size (e.g. 1), "
    "offload=True (networks wait in CPU memory), fewer frames or a smaller size, kv_source='current' (no recorded "
    "keys/values)."
)


def _check_loras(loras: Sequence[tuple[str | os.PathLike, float]]) -> list[tuple[str | os.PathLike, float]]:
    """``[(path_or_hub, scale), ...]`` checked: pairs, with finite scales."""
    from models.lora import check_scale

    if isinstance(loras, str | os.PathLike):
        raise ValueError(f"loras= takes a list of (path, scale) pairs, e.g. loras=[({str(loras)!r}, 0.8)]")
    out = []
    for i, entry in enumerate(loras):
        if not isinstance(entry, tuple | list) or len(entry) != 2 or not isinstance(entry[0], str | os.PathLike):
            raise ValueError(f"loras[{i}] = {entry!r} is not a (path, scale) pair, e.g. ('style.safetensors', 0.8)")
        out.append((entry[0], check_scale(entry[1], f"loras[{i}]")))
    return out


class AnimateZeroPipeline(Applications):
    """SD1.5 + AnimateDiff with AnimateZero's controls.

    Attributes ``unet``, ``vae``, ``text_encoder``, ``tokenizer`` and ``motion_module`` are the hand-written modules
    from ``models/``; ``schedule`` is AnimateDiff's DDIM schedule (used for both steps so their latents line up);
    ``runner`` (:class:`models.runner.UNetRunner`) runs the UNet and places the networks. ``progress`` (default True):
    show a tqdm bar over the sampling steps of every call; ``pipe.progress = False`` turns it off (a ``callback=`` per
    step is called either way).
    """

    progress: bool = True
    loras: list[tuple[str, float]] = []  # the SD1.5 LoRAs merged now (set_loras)

    def __init__(
        self, unet, vae, text_encoder, tokenizer, motion_module=None, *, schedule: DDIMSchedule | None = None,
        device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, vae_chunk_size: int | None = 8,
        offload: bool = False, compile: bool | str | dict = False, compile_cache_dir: str | os.PathLike | None = None,
        default_size: tuple[int, int] = (512, 512), default_sampling: tuple[int, float] = (25, 7.5),
    ):  # fmt: skip
        """``vae_chunk_size``: frames decoded at once (bounds the decode's memory). ``offload``: keep every network in
        CPU memory and move it to the device only while it runs (lower peak memory, slower). ``compile``:
        ``torch.compile`` the UNet forward: ``True``, a mode (``"reduce-overhead"`` adds CUDA graphs,
        ``"max-autotune"``) or a dict of ``torch.compile`` options. The first call of each shape (image, video) pays
        the compilation; Inductor caches the result in ``compile_cache_dir`` (default ``$ANIMATEZERO_CACHE/torch_compile``,
        i.e. ``~/.cache/animatezero/torch_compile``; a set ``TORCHINDUCTOR_CACHE_DIR`` wins), so later processes
        compile much faster. See :mod:`models.compile`."""
        cache_dir = (compile_cache_dir or default_cache_dir() / "torch_compile") if compile else None
        self.runner = UNetRunner(
            unet, motion_module, device=device, offload=offload, compile=compile, cache_dir=cache_dir,
            oom_advice=OOM_ADVICE,
        )  # fmt: skip
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.motion_module = motion_module
        self.schedule = schedule or DDIMSchedule()
        self.dtype, self.vae_chunk_size = dtype, vae_chunk_size
        self.default_size = (int(default_size[0]), int(default_size[1]))  # (height, width) when a call gives none
        self.default_sampling = (int(default_sampling[0]), float(default_sampling[1]))  # (steps, guidance), likewise
        for m in self._networks():
            m.to(self.runner.home, dtype).eval().requires_grad_(False)

    device = property(lambda self: self.runner.device, doc="Where the networks run.")
    offload = property(lambda self: self.runner.offload, doc="Whether the networks wait in CPU memory between calls.")

    def _networks(self) -> list[torch.nn.Module]:
        return [m for m in (self.unet, self.vae, self.text_encoder, self.motion_module) if m is not None]

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> AnimateZeroPipeline:
        """Move (and/or cast) every network; with ``offload`` they stay in CPU memory and ``device`` is where they run."""
        self.runner.device = torch.device(device) if device is not None else self.runner.device
        self.dtype = dtype or self.dtype
        for m in self._networks():
            m.to(self.runner.home, self.dtype)
        return self

    @classmethod
    def from_single_files(
        cls, checkpoint: str | os.PathLike, motion_module: str | os.PathLike | None = None, *,
        device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
        motion_lora: str | os.PathLike | None = None, motion_lora_scale: float = 1.0,
        loras: Sequence[tuple[str | os.PathLike, float]] = (), **kwargs,
    ) -> AnimateZeroPipeline:  # fmt: skip
        """Load an SD1.5 single-file checkpoint and (optionally) an AnimateDiff motion module, from local paths or hub
        references ``org/repo/file`` (downloaded on first use). ``loras``: SD1.5 LoRAs ``[(path_or_hub, scale), ...]``
        merged into the UNet and text encoder (docs/lora.md); :meth:`set_loras` changes them later."""
        from animatezero.hub import resolve_all
        from models.loading import load_motion_lora, load_motion_module, load_sd15
        from models.lora import read_lora
        from models.tokenizer import CLIPTokenizer

        # every file found first (offline: one error naming all that are missing), then loaded
        loras = _check_loras(loras)
        refs = {"checkpoint": checkpoint, "motion_module": motion_module, "motion_lora": motion_lora}
        files = resolve_all(refs | {f"loras[{i}]": ref for i, (ref, _) in enumerate(loras)})
        parsed = [(read_lora(files[f"loras[{i}]"]), scale) for i, (_, scale) in enumerate(loras)]  # before the model
        unet, vae, text_encoder = load_sd15(files["checkpoint"], device=device, dtype=dtype)
        motion = None
        if motion_module is not None:
            motion = load_motion_module(files["motion_module"], unet_config=unet.config, device=device, dtype=dtype)
            if motion_lora is not None:
                load_motion_lora(files["motion_lora"], motion, alpha=motion_lora_scale)
        elif motion_lora is not None:
            raise ValueError("a motion LoRA needs a motion module: pass motion_module= as well")
        pipe = cls(unet, vae, text_encoder, CLIPTokenizer(), motion, device=device, dtype=dtype, **kwargs)
        if parsed:
            pipe._merge_loras(parsed, [(str(ref), scale) for ref, scale in loras])
        return pipe

    def set_loras(self, loras: Sequence[tuple[str | os.PathLike, float]]) -> list[str]:
        """Replace the merged SD1.5 LoRAs by ``[(path_or_hub, scale), ...]`` without reloading the checkpoint: every
        file is read and checked against the networks first (nothing changes on an error), then each touched weight
        becomes ``W_base + sum scale_i * alpha_i / rank_i * up_i @ down_i``. ``set_loras([])`` restores the base
        weights bit for bit. Returns the touched weights (``unet:<name>`` / ``text_encoder:<name>``)."""
        from animatezero.hub import resolve_all
        from models.lora import read_lora

        loras = _check_loras(loras)
        files = resolve_all({f"loras[{i}]": ref for i, (ref, _) in enumerate(loras)})
        parsed = [(read_lora(files[f"loras[{i}]"]), scale) for i, (_, scale) in enumerate(loras)]
        return self._merge_loras(parsed, [(str(ref), scale) for ref, scale in loras])

    def _merge_loras(self, parsed, loras: list[tuple[str, float]]) -> list[str]:
        from models.lora import LoRAMerger

        if getattr(self, "_lora_merger", None) is None:
            self._lora_merger = LoRAMerger({"unet": self.unet, "text_encoder": self.text_encoder})
        touched = self._lora_merger.set(parsed)
        self.loras = loras  # what is merged now, as given
        return touched

    @classmethod
    def toyworld(cls, *, device: str | torch.device = "cpu", **kwargs) -> AnimateZeroPipeline:
        """The shipped toy-world model (:mod:`animatezero.toyworld`): offline, 64x64, meaningful pictures in seconds
        on a CPU. Its files are ordinary SD1.5 / AnimateDiff v2 checkpoints, loaded like any other."""
        from animatezero import toyworld

        checkpoint, motion_module = toyworld.files()
        kwargs.setdefault("default_size", (toyworld.HEIGHT, toyworld.WIDTH))
        kwargs.setdefault("default_sampling", (toyworld.STEPS, toyworld.GUIDANCE))
        return cls.from_single_files(checkpoint, motion_module, device=device, **kwargs)

    def size(self, height: int | None, width: int | None) -> tuple[int, int]:
        """The requested size, each side defaulting to the model's (``default_size``: 512x512 for SD1.5), checked."""
        height = self.default_size[0] if height is None else height  # 0 is refused, not taken for "default"
        width = self.default_size[1] if width is None else width
        return checks.check_size(height, width)

    def sampling(self, steps: int | None, guidance_scale: float | None) -> tuple[int, float]:
        """The requested DDIM steps and guidance scale, each defaulting to the model's (``default_sampling``: 25 and
        7.5 for SD1.5; the toy world's 10 and 5), checked."""
        steps = self.default_sampling[0] if steps is None else steps
        guidance_scale = self.default_sampling[1] if guidance_scale is None else guidance_scale
        return checks.check_sampling(steps, guidance_scale)

    # building blocks ------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode_prompt(self, prompt: str | list[str]) -> Tensor:
        """Prompt(s) -> CLIP last hidden state ``[b, 77, d]`` (pad to 77 with end-of-text, truncate like SD)."""
        ids = self.tokenizer(prompt).to(self.device)  # [b, 77]
        with self.runner.using(self.text_encoder):
            return self.text_encoder(ids).to(self.dtype)  # [b, 77, d]

    def noise(self, shape: tuple[int, ...], seed: int) -> Tensor:
        """Initial latents from a CPU generator, so a seed means the same noise on every device."""
        g = torch.Generator("cpu").manual_seed(seed)
        return torch.randn(shape, generator=g, dtype=torch.float32).to(self.device, self.dtype)

    def _start(self, latents: Tensor | None, shape: tuple[int, ...], seed: int | None) -> tuple[Tensor, int | None]:
        """The initial latents (the given ones, checked, or noise from the seed) and the seed used: the only place
        where seeds are checked and drawn."""
        seed = checks.check_latents(latents, shape, seed)
        return (self.noise(shape, seed) if latents is None else latents.to(self.device, self.dtype)), seed

    @torch.inference_mode()
    def decode(self, latents: Tensor) -> Tensor:
        """Latents ``[b, 4, h, w]`` -> images ``[b, 3, H, W]`` in [0, 1] (float32). In fp16 a non-finite result is
        retried in fp32 with a warning (the SD VAE can overflow in half precision)."""
        if not bool(torch.isfinite(latents).all()):
            raise NonFiniteError(
                "sampling produced NaN or infinite latents, so every frame would be black. Usual causes: damaged "
                "weights, an extreme guidance_scale, or reduced precision overflowing (try dtype=torch.float32)"
            )
        with self.runner.using(self.vae):
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

    def _image_result(self, trajectory, steps, prompt, negative_prompt, guidance_scale, seed, image=None, **info):
        """The one builder of :class:`ImageResult`: ``trajectory`` ends with z_0; ``image`` defaults to its decode."""
        z0 = trajectory[-1]
        image = image if image is not None else self.decode(z0)[0]
        return ImageResult(
            image=image.cpu(),
            latent=z0,
            trajectory=trajectory,
            timesteps=self.schedule.timesteps(steps),
            prompt=prompt,
            negative_prompt=negative_prompt,
            guidance_scale=guidance_scale,
            seed=seed,
            info=info,
        )

    def _video_result(self, z0: Tensor, prompt: str, seed: int | None) -> VideoResult:
        b, c, f, h, w = z0.shape
        frames = self.decode(z0.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w))  # [f, 3, H, W]
        return VideoResult(frames=frames.cpu(), latents=z0, prompt=prompt, seed=seed)

    # step 1 ----------------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def text_to_image(
        self, prompt: str, *, negative_prompt: str = "", height: int | None = None, width: int | None = None,
        steps: int | None = None, guidance_scale: float | None = None, seed: int | None = None, latents: Tensor | None = None,
        record_kv: bool = False, callback=None,
    ) -> ImageResult:  # fmt: skip
        """Step 1: DDIM text-to-image with the spatial UNet alone, keeping every intermediate latent and, with
        ``record_kv``, the spatial self-attention keys/values of every layer, step and guidance branch. ``callback``
        sees every step's :class:`models.ddim.StepInfo` (e.g. for a progress bar), as in the video methods."""
        checks.check_prompts(prompt=prompt, negative_prompt=negative_prompt)
        height, width = self.size(height, width)
        steps, guidance_scale = self.sampling(steps, guidance_scale)
        x, seed = self._start(latents, (1, 4, height // 8, width // 8), seed)
        state, bank = StepState(), KVBank() if record_kv else None
        recording = recorders(self.unet, bank, state) if bank is not None else {}
        trajectory: list[Tensor] = []
        denoise = stepped_denoiser(
            self.runner, self.encode_prompt(prompt), self.encode_prompt(negative_prompt), guidance_scale, state
        )
        with step_bar(steps, "image", callback, self.progress) as step, self.runner.using(self.unet):

            def record(s) -> None:  # the latent entering each step, then the caller's callback
                trajectory.append(s.x)
                if step is not None:
                    step(s)

            with installed(self.unet, recording):
                z0 = ddim_sample(denoise, x, self.schedule, steps, callback=record)
        info = {"kv_bank_bytes": bank.nbytes} if bank is not None else {}
        image = self._image_result([*trajectory, z0], steps, prompt, negative_prompt, guidance_scale, seed, **info)
        image.kv_bank = bank
        return image

    @torch.inference_mode()
    def record_features(self, image: ImageResult) -> KVBank:
        """Replay step 1 over ``image``'s trajectory and record the spatial self-attention keys/values of every layer,
        step and guidance branch. The UNet sees exactly the inputs it saw while generating, so this equals recording
        during :meth:`text_to_image`; it also gives features to inverted real images and to candidates made without
        ``record_kv``."""
        state, bank = StepState(), KVBank()
        cond, uncond = self.encode_prompt(image.prompt), self.encode_prompt(image.negative_prompt)
        denoise = stepped_denoiser(self.runner, cond, uncond, image.guidance_scale, state)
        with self.runner.using(self.unet), installed(self.unet, recorders(self.unet, bank, state)):
            for latent, t in zip(image.trajectory, image.timesteps):
                denoise(latent.to(self.device, self.dtype), t)
        image.kv_bank = bank
        image.info["kv_bank_bytes"] = bank.nbytes
        return bank

    # step 2 ----------------------------------------------------------------------------------------------------------
    def _require_motion(self, num_frames: int, minimum: int = 1) -> None:
        if self.motion_module is None:
            raise ValueError(
                "this pipeline has no motion module: load one with "
                "AnimateZeroPipeline.from_single_files(checkpoint, motion_module='mm_sd_v15_v2.ckpt')"
            )
        checks.check_frames(num_frames, minimum)

    def _text_context(self, prompt: str, end_prompt: str | None, num_frames: int) -> Tensor:
        """``[1, 77, d]``, or with ``end_prompt`` per-frame embeddings ``[1, f, 77, d]`` interpolated linearly from the
        prompt's (frame 0) to the end prompt's (last frame): text-controlled motion (paper project page)."""
        start = self.encode_prompt(prompt)
        if end_prompt is None:
            return start
        alpha = torch.linspace(0, 1, num_frames, device=self.device, dtype=self.dtype).view(1, -1, 1, 1)
        return torch.lerp(start[:, None], self.encode_prompt(end_prompt)[:, None], alpha)  # [1, f, 77, d]

    def _sample_video(
        self, x: Tensor, *, cond: Tensor, uncond: Tensor, guidance_scale: float, steps: int, controls: Controls,
        anchors: list[Anchor], callback, image: LockstepImage | None = None,
    ) -> Tensor:  # fmt: skip
        with step_bar(steps, "video", callback, self.progress) as step:
            return sample_video(
                self.runner, self.schedule, x, cond=cond, uncond=uncond, guidance_scale=guidance_scale, steps=steps,
                controls=controls, anchors=anchors, image=image, callback=step,
            )  # fmt: skip

    @torch.inference_mode()
    def text_to_video(
        self, prompt: str, *, num_frames: int = 16, negative_prompt: str = "", height: int | None = None,
        width: int | None = None, steps: int | None = None, guidance_scale: float | None = None, seed: int | None = None,
        latents: Tensor | None = None, sliding_windows: bool = False, callback=None,
    ) -> VideoResult:  # fmt: skip
        """Plain AnimateDiff text-to-video (the baseline): the video UNet with global temporal attention.
        ``sliding_windows`` allows clips longer than the motion module's position table (anchored windows)."""
        checks.check_prompts(prompt=prompt, negative_prompt=negative_prompt)
        self._require_motion(num_frames)
        height, width = self.size(height, width)
        steps, guidance_scale = self.sampling(steps, guidance_scale)
        x, seed = self._start(latents, (1, 4, num_frames, height // 8, width // 8), seed)
        cond, uncond = self.encode_prompt(prompt), self.encode_prompt(negative_prompt)
        controls = replace_fields(Controls.animatediff(), sliding_windows=sliding_windows)
        z0 = self._sample_video(
            x, cond=cond, uncond=uncond, guidance_scale=guidance_scale, steps=steps, controls=controls, anchors=[],
            callback=callback,
        )  # fmt: skip
        video = self._video_result(z0, prompt, seed)
        video.info["mode"] = "animatediff"
        return video

    @torch.inference_mode()
    def animate(
        self, image: ImageResult, prompt: str | None = None, *, last: ImageResult | None = None,
        controls: Controls | None = None, num_frames: int = 16, seed: int | None = None, latents: Tensor | None = None,
        negative_prompt: str | None = None, guidance_scale: float | None = None, end_prompt: str | None = None,
        callback=None,
    ) -> VideoResult:  # fmt: skip
        """Step 2 (paper Sec. 4): animate ``image`` (a step-1 or inverted result) into a clip whose first frame is
        that image; the one place that decides what kind of clip a request makes (``video.info["mode"]``):

        * ``"animatezero"``: one anchor, frame 0;
        * ``"interpolation"`` with ``last``: the clip ends on ``last`` (our extension of the paper's interpolation
          application, docs/method.md); ``"loop"`` when ``last is image``;
        * ``"animatediff"`` with every control off (``Controls.animatediff()``): the images only lend their prompt,
          negative prompt, size, steps and guidance, and the clip is plain AnimateDiff text-to-video with this seed,
          bit for bit :meth:`text_to_video` (tested), so the baseline is compared like for like.

        ``prompt=None`` reuses the image's prompt; another prompt steers the motion. ``end_prompt`` interpolates the
        text embedding from ``prompt`` (frame 0) to ``end_prompt`` (last frame). Sampling uses the image's steps (the
        trajectories must line up), guidance scale and negative prompt unless given.
        """
        checks.check_prompts(allow_none=True, prompt=prompt, negative_prompt=negative_prompt, end_prompt=end_prompt)
        anchors = [(0, image)] if last is None else [(0, image), (num_frames - 1, last)]
        self._require_motion(num_frames, minimum=len(anchors))
        controls = controls if controls is not None else Controls.paper()
        guidance_scale = image.guidance_scale if guidance_scale is None else guidance_scale
        cached = controls.share_kv and controls.kv_source == "cached"
        checks.check_anchors([im for _, im in anchors], self.schedule, guidance_scale, cached)
        prompt = image.prompt if prompt is None else prompt
        negative_prompt = image.negative_prompt if negative_prompt is None else negative_prompt
        x, seed = self._start(latents, (1, 4, num_frames, *image.latent.shape[-2:]), seed)
        cond, uncond = self._text_context(prompt, end_prompt, num_frames), self.encode_prompt(negative_prompt)
        frames = []
        for f, im in anchors:  # cached keys/values: recorded in step 1, or replayed now (record_features)
            bank = (im.kv_bank if im.kv_bank is not None else self.record_features(im)) if cached else None
            frames.append(Anchor(f, bank=bank, trajectory=im.trajectory))
        z0 = self._sample_video(
            x, cond=cond, uncond=uncond, guidance_scale=guidance_scale, steps=image.steps, controls=controls,
            anchors=frames, callback=callback,
        )  # fmt: skip
        video = self._video_result(z0, prompt, seed)
        video.info["mode"] = video_mode(controls, image, last)
        for frame, im in anchors:  # how exactly each anchor frame came out (the paper's promise)
            video.info[f"frame{frame}_psnr_db"] = psnr(video.frames[frame], im.image)
        return video

    @torch.inference_mode()
    def generate(
        self, prompt: str, *, negative_prompt: str = "", height: int | None = None, width: int | None = None,
        steps: int | None = None, guidance_scale: float | None = None, seed: int | None = None, num_frames: int = 16,
        controls: Controls | None = None, image_latents: Tensor | None = None, video_latents: Tensor | None = None,
        callback=None,
    ) -> tuple[ImageResult, VideoResult]:  # fmt: skip
        """Step 1 and step 2 in lockstep: image step i runs just before video step i, so the keys/values of only one
        step are ever held (instead of every step's), with results identical to :meth:`text_to_image` with
        ``record_kv`` followed by :meth:`animate` (tested bit for bit). Image and video noise come from ``seed``."""
        checks.check_prompts(prompt=prompt, negative_prompt=negative_prompt)
        self._require_motion(num_frames)
        height, width = self.size(height, width)
        steps, guidance_scale = self.sampling(steps, guidance_scale)
        controls = controls if controls is not None else Controls.paper()
        h, w = height // 8, width // 8
        z, seed = self._start(image_latents, (1, 4, h, w), seed)
        x, seed = self._start(video_latents, (1, 4, num_frames, h, w), seed)
        cond, uncond = self.encode_prompt(prompt), self.encode_prompt(negative_prompt)
        state = StepState()
        bank = KVBank() if controls.share_kv and controls.kv_source == "cached" else None
        # during an image step the spatial self-attention layers record (cached K/V) or run plainly (None), whatever
        # the video's processors on them are
        image = LockstepImage(
            stepped_denoiser(self.runner, cond, uncond, guidance_scale, state),
            recorders(self.unet, bank, state),
            [z],
            bank,
        )
        z0 = self._sample_video(
            x, cond=cond, uncond=uncond, guidance_scale=guidance_scale, steps=steps, controls=controls,
            anchors=[Anchor(0, bank=bank, trajectory=image.trajectory)], callback=callback, image=image,
        )  # fmt: skip
        info = {"lockstep": True} | ({"kv_bank_bytes": bank.nbytes} if bank is not None else {})  # one step's worth
        result = self._image_result(image.trajectory, steps, prompt, negative_prompt, guidance_scale, seed, **info)
        video = self._video_result(z0, prompt, seed)
        video.info.update(mode=video_mode(controls, result), frame0_psnr_db=psnr(video.frames[0], result.image))
        return result, video


def video_mode(controls: Controls, image: ImageResult, last: ImageResult | None = None) -> str:
    """What kind of clip step 2 makes from ``image`` (and ``last``) under ``controls`` (see :meth:`animate`)."""
    if not controls.any:
        return "animatediff"
    return "animatezero" if last is None else "loop" if last is image else "interpolation"
