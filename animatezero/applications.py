"""What the two steps make possible beyond text-to-video (paper Sec. 5 "applications", and our extensions): clips
between two images and loops, candidate images to choose from, animating real images (fitting, VAE encoding, DDIM
inversion), and continuing a clip. A mixin of :class:`animatezero.pipeline.AnimateZeroPipeline`, so each is a method
(``pipe.loop(image)``) built only from the pipeline's public steps and its runner."""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from animatezero.checks import MIN_SIZE, check_prompts, check_size
from animatezero.controls import Controls
from animatezero.io import check_image_file, check_image_size, image_tensor, load_image
from animatezero.results import ImageResult, VideoResult, psnr
from models.ddim import ddim_invert


class Applications:
    """The applications, as methods of the pipeline (``self`` is an ``AnimateZeroPipeline``)."""

    def interpolate(self, first: ImageResult, last: ImageResult, prompt: str | None = None, **kwargs) -> VideoResult:
        """A clip from ``first`` to ``last`` (our extension of the paper's interpolation application; see
        docs/method.md): both trajectories are inserted (frame 0 and frame f-1), keys/values cross-fade from the first
        image's to the last's, and the window attention is anchored at both ends. Both anchor frames are reproduced
        exactly. ``kwargs`` are :meth:`animate`'s."""
        return self.animate(first, prompt, last=last, **kwargs)

    def loop(self, image: ImageResult, prompt: str | None = None, **kwargs) -> VideoResult:
        """A looping clip: first and last frame are both ``image``."""
        return self.animate(image, prompt, last=image, **kwargs)

    def candidates(self, prompt: str, seeds: list[int], **kwargs) -> list[ImageResult]:
        """Interactive generation, step 1: several images of one prompt; animate the one you like."""
        return [self.text_to_image(prompt, seed=seed, **kwargs) for seed in seeds]

    @torch.inference_mode()
    def invert_latent(
        self,
        latent: Tensor,
        prompt: str = "",
        *,
        steps: int | None = None,
        guidance_scale: float | None = None,
        negative_prompt: str = "",
        image: Tensor | None = None,
    ) -> ImageResult:
        """DDIM inversion of a clean latent ``[1, 4, h, w]`` along this pipeline's timesteps (conditional branch only,
        as usual for inversion), giving a trajectory that :meth:`animate` consumes. ``guidance_scale`` is the one the
        animation will use."""
        check_prompts(prompt=prompt, negative_prompt=negative_prompt)
        steps, guidance_scale = self.sampling(steps, guidance_scale)
        latent = latent.to(self.device, self.dtype)
        cond = self.encode_prompt(prompt)
        with self.runner.using(self.unet):
            trajectory = ddim_invert(lambda x, t: self.runner(x, t, cond), latent, self.schedule, steps)
        return self._image_result(trajectory, steps, prompt, negative_prompt, guidance_scale, None, image=image)

    @torch.inference_mode()
    def invert_image(
        self,
        image: str | os.PathLike | Tensor | np.ndarray | Image.Image,
        prompt: str = "",
        *,
        height: int | None = None,
        width: int | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        negative_prompt: str = "",
    ) -> ImageResult:
        """Real-image animation, step 1: fit the image to the model's grid (:func:`fit_image`), VAE-encode it and
        DDIM-invert it. ``result.image`` is the VAE reconstruction (what frame 0 will show);
        ``result.info["psnr_db"]`` is its PSNR against the fitted input.

        ``image``: a file path (decoded within a budget set by the requested size: :func:`animatezero.io.load_image`),
        a PIL image, or a tensor or array (``[3, H, W]`` or ``[H, W, 3]``, grey or RGBA too; uint8 0..255 or float
        0..1: :func:`animatezero.io.image_tensor`). Every argument is checked before anything is decoded."""
        check_prompts(prompt=prompt, negative_prompt=negative_prompt)
        self.sampling(steps, guidance_scale)
        short_side = min(self.default_size)
        if isinstance(image, (str, os.PathLike)):
            if height is None or width is None:  # the grid follows the file's upright size, read from its header
                height, width = fit_size(*check_image_file(image), height, width, short_side)
            height, width = check_size(height, width)  # before the file is decoded
            pixels = load_image(image, (height, width))  # [3, h, w] in [0, 1], h and w >= the request
        else:
            pixels = image_tensor(image)  # [3, h, w] in [0, 1]
        pixels = fit_image(pixels, height, width, short_side=short_side)  # [3, H, W] in [0, 1]
        with self.runner.using(self.vae):
            latent = self.vae.encode((pixels[None] * 2 - 1).to(self.device, self.dtype))  # [1, 4, H/8, W/8]
        result = self.invert_latent(
            latent, prompt, steps=steps, guidance_scale=guidance_scale, negative_prompt=negative_prompt
        )
        result.info.update(
            psnr_db=psnr(result.image, pixels),
            source=str(image) if isinstance(image, (str, os.PathLike)) else "tensor",
        )
        return result

    @torch.inference_mode()
    def continue_video(
        self,
        video: VideoResult,
        prompt: str | None = None,
        *,
        num_frames: int = 16,
        steps: int | None = None,
        guidance_scale: float | None = None,
        negative_prompt: str = "",
        controls: Controls | None = None,
        seed: int | None = None,
        callback=None,
    ) -> VideoResult:
        """A longer clip: the last frame of ``video`` (its latent, DDIM-inverted) is animated into a new clip that is
        appended without repeating the shared frame, so the join is seamless. ``callback`` sees every step of the new
        clip's sampling, as in :meth:`animate`."""
        prompt = video.prompt if prompt is None else prompt
        last = self.invert_latent(
            video.latents[:, :, -1],
            prompt,
            steps=steps,
            guidance_scale=guidance_scale,
            negative_prompt=negative_prompt,
            image=video.frames[-1],
        )
        more = self.animate(last, prompt, controls=controls, num_frames=num_frames, seed=seed, callback=callback)
        return VideoResult(
            frames=torch.cat([video.frames, more.frames[1:]]),
            latents=torch.cat([video.latents, more.latents[:, :, 1:].to(video.latents.device)], dim=2),
            prompt=prompt,
            seed=more.seed,
            info={"mode": more.info["mode"], "segments": [video.num_frames, more.num_frames - 1]},
        )


def fit_size(h: int, w: int, height: int | None, width: int | None, short_side: int = 512) -> tuple[int, int]:
    """The grid an ``h`` x ``w`` image is fitted to: ``height`` and ``width`` where given; otherwise the short side
    becomes ``short_side`` and each side a multiple of 8 (the VAE's factor)."""
    if height is None or width is None:
        scale = short_side / min(h, w)
        height = height or max(MIN_SIZE, int(h * scale) // 8 * 8)
        width = width or max(MIN_SIZE, int(w * scale) // 8 * 8)
    return height, width


def fit_image(image: Tensor, height: int | None = None, width: int | None = None, short_side: int = 512) -> Tensor:
    """Center-crop and resize ``[3, H, W]`` to the model's grid. With ``height``/``width`` given: the largest centered
    region of that aspect ratio, resized to exactly that size. Without: the short side becomes ``short_side`` and each
    side a multiple of 8 (the VAE's factor).

    The crop comes first, so the resize allocates the output size and never an upscaled copy of the whole source (a
    1x20000 strip fitted to 512x512 would otherwise need 63 GB); overly elongated or huge inputs are refused by
    :func:`animatezero.io.check_image_size`."""
    _, h, w = image.shape
    check_image_size(h, w)
    height, width = check_size(*fit_size(h, w, height, width, short_side))
    # the centered source region with the target's aspect ratio: [3, crop_h, crop_w]
    if w * height > h * width:
        crop_h, crop_w = h, max(1, round(h * width / height))
    else:
        crop_h, crop_w = max(1, round(w * height / width)), w
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    region = image[:, top : top + crop_h, left : left + crop_w]
    resized = F.interpolate(region[None], size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    return resized[0].clamp(0, 1)  # [3, height, width]
