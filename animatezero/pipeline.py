"""The two-step pipeline (paper Sec. 4, Fig. 3): step 1 text-to-image with the SD1.5 UNet, recording the trajectory
(and, when asked, the spatial self-attention keys/values); step 2 image-to-video with the same UNet plus AnimateDiff
motion modules under AnimateZero's controls. Plain AnimateDiff text-to-video is step 2 with every control off.
"""

from __future__ import annotations

import os
import warnings
from contextlib import ExitStack

import torch
from torch import Tensor

from animatezero.controls import Controls, spatial_processors, steps_in_range, temporal_processors
from animatezero.hooks import installed, spatial_self_attention_layers
from animatezero.processors import KVBank, RecordKV, StepState
from animatezero.results import ImageResult, VideoResult
from models.ddim import DDIMSchedule, ddim_sample
from models.guidance import cfg_denoiser

MIN_SIZE, MAX_SIZE = 64, 2048


def check_size(height: int, width: int) -> None:
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or value % 8 or not MIN_SIZE <= value <= MAX_SIZE:
            raise ValueError(
                f"{name} must be a multiple of 8 between {MIN_SIZE} and {MAX_SIZE} pixels, got {value!r} "
                f"(e.g. {max(MIN_SIZE, min(MAX_SIZE, round(value / 64) * 64)) if isinstance(value, int) else 512})"
            )


def check_sampling(steps: int, guidance_scale: float) -> None:
    if not isinstance(steps, int) or steps < 1 or steps > 1000:
        raise ValueError(f"steps must be an integer in 1..1000, got {steps!r}")
    if not guidance_scale >= 0 or guidance_scale != guidance_scale:
        raise ValueError(f"guidance_scale must be >= 0 (1 = no guidance), got {guidance_scale!r}")


def new_seed() -> int:
    return int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF


class AnimateZeroPipeline:
    """SD1.5 + AnimateDiff with AnimateZero's controls.

    Attributes ``unet``, ``vae``, ``text_encoder``, ``tokenizer`` and ``motion_module`` are the hand-written modules
    from ``models/``; ``schedule`` is AnimateDiff's DDIM schedule (used for both steps so their latents line up).
    """

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
    ):
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.motion_module = motion_module
        self.schedule = schedule or DDIMSchedule()
        self.device, self.dtype = torch.device(device), dtype
        self.vae_chunk_size = vae_chunk_size
        for m in (unet, vae, text_encoder, motion_module):
            if m is not None:
                m.to(self.device, dtype).eval().requires_grad_(False)

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
        from animatezero.hub import resolve
        from models.checkpoint import load_motion_lora, load_motion_module, load_sd15
        from models.tokenizer import CLIPTokenizer

        unet, vae, text_encoder = load_sd15(resolve(checkpoint), device=device, dtype=dtype)
        motion = None
        if motion_module is not None:
            motion = load_motion_module(resolve(motion_module), unet_config=unet.config, device=device, dtype=dtype)
            if motion_lora is not None:
                load_motion_lora(resolve(motion_lora), motion, alpha=motion_lora_scale)
        elif motion_lora is not None:
            raise ValueError("a motion LoRA needs a motion module: pass motion_module= as well")
        return cls(unet, vae, text_encoder, CLIPTokenizer(), motion, device=device, dtype=dtype, **kwargs)

    # building blocks ------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode_prompt(self, prompt: str | list[str]) -> Tensor:
        """Prompt(s) -> CLIP last hidden state ``[b, 77, d]`` (pad to 77 with end-of-text, truncate like SD)."""
        ids = self.tokenizer(prompt).to(self.device)  # [b, 77]
        return self.text_encoder(ids).to(self.dtype)  # [b, 77, d]

    def noise(self, shape: tuple[int, ...], seed: int) -> Tensor:
        """Initial latents from a CPU generator, so a seed means the same noise on every device."""
        g = torch.Generator("cpu").manual_seed(seed)
        return torch.randn(shape, generator=g, dtype=torch.float32).to(self.device, self.dtype)

    @torch.inference_mode()
    def decode(self, latents: Tensor) -> Tensor:
        """Latents ``[b, 4, h, w]`` -> images ``[b, 3, H, W]`` in [0, 1] (float32). In fp16 a non-finite result is
        retried in fp32 with a warning (the SD VAE can overflow in half precision)."""
        images = self.vae.decode(latents.to(self.dtype), chunk_size=self.vae_chunk_size)
        if not torch.isfinite(images).all() and self.dtype != torch.float32:
            warnings.warn("the VAE decode overflowed in reduced precision; decoding again in float32", stacklevel=2)
            self.vae.float()
            try:
                images = self.vae.decode(latents.float(), chunk_size=self.vae_chunk_size)
            finally:
                self.vae.to(self.dtype)
        return (images.float() / 2 + 0.5).clamp(0, 1)

    def _model(self, x: Tensor, t: int, context: Tensor) -> Tensor:
        return self.unet(x, t, context, motion=self.motion_module if x.ndim == 5 else None)

    def _denoiser(self, cond: Tensor, uncond: Tensor, scale: float, state: StepState):
        guided = cfg_denoiser(self._model, cond, uncond, scale)

        def denoise(x: Tensor, t: int) -> Tensor:
            state.t = t
            return guided(x, t)

        return denoise

    def _check_latents(self, latents: Tensor, shape: tuple[int, ...]) -> Tensor:
        if tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {list(shape)}, got {list(latents.shape)}")
        return latents.to(self.device, self.dtype)

    # step 1 ----------------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def text_to_image(
        self,
        prompt: str,
        *,
        negative_prompt: str = "",
        height: int = 512,
        width: int = 512,
        steps: int = 25,
        guidance_scale: float = 7.5,
        seed: int | None = None,
        latents: Tensor | None = None,
        record_kv: bool = False,
    ) -> ImageResult:
        """Step 1: DDIM text-to-image with the spatial UNet alone, keeping every intermediate latent and, with
        ``record_kv``, the spatial self-attention keys/values of every layer, step and guidance branch."""
        check_size(height, width)
        check_sampling(steps, guidance_scale)
        shape = (1, 4, height // 8, width // 8)
        seed = seed if seed is not None or latents is not None else new_seed()
        x = self._check_latents(latents, shape) if latents is not None else self.noise(shape, seed)
        state = StepState()
        bank = KVBank() if record_kv else None
        recorders = {n: RecordKV(n, bank, state) for n in spatial_self_attention_layers(self.unet)} if bank else {}
        trajectory: list[Tensor] = []
        denoise = self._denoiser(self.encode_prompt(prompt), self.encode_prompt(negative_prompt), guidance_scale, state)
        with installed(self.unet, recorders):
            z0 = ddim_sample(denoise, x, self.schedule, steps, callback=lambda s: trajectory.append(s.x))
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

    # step 2 ----------------------------------------------------------------------------------------------------------
    def _require_motion(self) -> None:
        if self.motion_module is None:
            raise ValueError(
                "this pipeline has no motion module: load one with "
                "AnimateZeroPipeline.from_single_files(checkpoint, motion_module='mm_sd_v15_v2.ckpt')"
            )

    def _check_frames(self, num_frames: int) -> None:
        if not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames must be a positive integer, got {num_frames!r}")

    @torch.inference_mode()
    def _sample_video(
        self,
        x: Tensor,
        cond: Tensor,
        uncond: Tensor,
        guidance_scale: float,
        steps: int,
        controls: Controls,
        image: ImageResult | None,
        callback=None,
    ) -> Tensor:
        num_frames = x.shape[2]
        timesteps = self.schedule.timesteps(steps)
        state = StepState()
        replace = None
        if controls.insert_latent:
            insert_at = steps_in_range(timesteps, controls.insert_steps)
            final = controls.insert_steps[1] >= 1.0

            def replace(i: int, x: Tensor) -> Tensor:  # latent insertion (paper Sec. 4.1)
                if (i < steps and timesteps[i] in insert_at) or (i == steps and final):
                    x = x.clone()
                    x[:, :, 0] = image.trajectory[i].to(x.dtype)
                return x

        bank = image.kv_bank if image is not None else None
        sp = spatial_processors(controls, self.unet, num_frames, timesteps, state, bank) if image is not None else {}
        tp = temporal_processors(controls, self.motion_module, num_frames, self.motion_module.config.max_positions)
        denoise = self._denoiser(cond, uncond, guidance_scale, state)
        with ExitStack() as stack:
            stack.enter_context(installed(self.unet, sp))
            stack.enter_context(installed(self.motion_module, tp))
            return ddim_sample(denoise, x, self.schedule, steps, replace=replace, callback=callback)

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
        height: int = 512,
        width: int = 512,
        steps: int = 25,
        guidance_scale: float = 7.5,
        seed: int | None = None,
        latents: Tensor | None = None,
        callback=None,
    ) -> VideoResult:
        """Plain AnimateDiff text-to-video (the baseline): the video UNet with global temporal attention."""
        self._require_motion()
        self._check_frames(num_frames)
        check_size(height, width)
        check_sampling(steps, guidance_scale)
        shape = (1, 4, num_frames, height // 8, width // 8)
        seed = seed if seed is not None or latents is not None else new_seed()
        x = self._check_latents(latents, shape) if latents is not None else self.noise(shape, seed)
        cond, uncond = self.encode_prompt(prompt), self.encode_prompt(negative_prompt)
        z0 = self._sample_video(x, cond, uncond, guidance_scale, steps, Controls.animatediff(), None, callback)
        return self._video_result(z0, prompt, seed)

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
        callback=None,
    ) -> VideoResult:
        """Step 2 (paper Sec. 4): animate ``image`` (a step-1 result) into a clip whose first frame is that image.

        ``prompt=None`` reuses the image's prompt; another prompt steers the motion. Sampling uses the image's steps
        (the trajectories must line up), guidance scale and negative prompt unless given.
        """
        self._require_motion()
        self._check_frames(num_frames)
        controls = controls if controls is not None else Controls.paper()
        guidance_scale = image.guidance_scale if guidance_scale is None else guidance_scale
        check_sampling(image.steps, guidance_scale)
        if image.timesteps != self.schedule.timesteps(image.steps):
            raise ValueError("the image was made with another noise schedule; make it with this pipeline")
        prompt = image.prompt if prompt is None else prompt
        negative_prompt = image.negative_prompt if negative_prompt is None else negative_prompt
        h, w = image.latent.shape[-2:]
        shape = (1, 4, num_frames, h, w)
        seed = seed if seed is not None or latents is not None else new_seed()
        x = self._check_latents(latents, shape) if latents is not None else self.noise(shape, seed)
        cond, uncond = self.encode_prompt(prompt), self.encode_prompt(negative_prompt)
        z0 = self._sample_video(x, cond, uncond, guidance_scale, image.steps, controls, image, callback)
        return self._video_result(z0, prompt, seed)
