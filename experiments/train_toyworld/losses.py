"""The losses: noising on AnimateDiff's schedule, the high-noise-weighted eps loss of the UNet and motion stages,
the text encoder's caption probe, and the text-to-image loss on frames of the latent pool."""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from evaluation import toyworld as tw
from experiments.train_toyworld.recipe import CAPTION_DROPOUT, HIGH_NOISE_CAP, PROBE_TEMPERATURE
from models.clip_text import CLIPTextModel
from models.tokenizer import EOS, CLIPTokenizer


def noisy(
    x0: Tensor, alphas: Tensor, high: bool = False, gen: torch.Generator | None = None, t_max: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """(x_t, t, eps) for the training timesteps of ``x0 [b, ...]``: uniform below ``t_max`` (default T), or with
    ``high`` drawn as ``T (1 - u^2)`` (density rising towards t = T, where the prompt decides the picture). ``gen``:
    the generator to draw from (torch's global one if None)."""
    b = x0.shape[0]
    n = alphas.numel()
    if high:
        t = (n * (1 - torch.rand(b, generator=gen) ** 2)).long().clamp(0, n - 1)
    else:
        t = torch.randint(0, t_max or n, (b,), generator=gen)
    eps = torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
    a = alphas[t].view(b, *([1] * (x0.ndim - 1)))
    return a.sqrt() * x0 + (1 - a).sqrt() * eps, t, eps


def high_noise_loss(pred: Tensor, eps: Tensor, t: Tensor, alphas: Tensor, cap: float = HIGH_NOISE_CAP) -> Tensor:
    """eps-prediction MSE weighted by ``min(1 / alpha_bar_t, cap)`` (normalised by the weights' sum).

    With eps prediction, what the prompt decides (background, color, shape, direction) is settled at high noise,
    where an error in x_0 reaches the eps loss only scaled by ``alpha_bar_t / (1 - alpha_bar_t)`` (below 0.01 near
    t = T): the plain loss gives the text almost no gradient, and a model trained on it draws random objects
    whatever the prompt (measured: the first shipped model's cond/uncond predictions differed by 0.5 %). ``1/alpha``
    is the v-prediction loss written for an eps model; the cap keeps the low-noise end (detail) in the mix. The
    network, its output and the sampler stay SD1.5's."""
    w = (1 / alphas[t]).clamp(max=cap)  # [b]
    err = (pred - eps).pow(2).flatten(1).mean(dim=1)  # [b]
    return (w * err).sum() / w.sum()


class CaptionProbe(nn.Module):
    """The text encoder's pre-training objective (stage ``text``): classify each of the caption's four attributes
    from the mean of its end-of-text/padding tokens (the last hidden states the UNet reads), by cosine similarity to
    one learned prototype per class at a fixed temperature, so only an angular separation of the tokens lowers it,
    not a rescaled head. Its prototypes are training state; they are not exported.

    SD freezes a CLIP text encoder that contrastive pre-training taught to tell captions apart; this is that step for
    the toy world, with the caption's known attributes standing in for the paired image. Trained jointly with the
    UNet from scratch instead (the recipe before this one), the encoder let the words a single frame does not need
    collapse: captions differing only in the motion word came out 0.4 % apart, in the shape word 1 %
    (docs/toyworld.md)."""

    ATTRIBUTES = {
        "color": tuple(tw.COLORS),
        "shape": tw.SHAPES,
        "motion": tw.MOTIONS,
        "background": tuple(tw.BACKGROUNDS),
    }

    def __init__(self, width: int):
        super().__init__()
        self.prototypes = nn.ParameterDict(
            {k: nn.Parameter(torch.randn(len(names), width)) for k, names in self.ATTRIBUTES.items()}
        )

    def forward(self, hidden: Tensor, ids: Tensor, captions: list[str]) -> Tensor:
        """Mean cross-entropy over the attributes of the captions in the grammar (0 if none is)."""
        attrs = [tw.parse_caption(c) for c in captions]
        keep = [i for i, a in enumerate(attrs) if a is not None]
        if not keep:
            return hidden.sum() * 0
        pad = (ids[keep] == EOS).to(hidden.dtype).unsqueeze(-1)  # [n, 77, 1]
        pooled = F.normalize((hidden[keep] * pad).sum(1) / pad.sum(1), dim=-1)  # [n, d]
        losses = []
        for name, classes in self.ATTRIBUTES.items():
            logits = pooled @ F.normalize(self.prototypes[name], dim=-1).T / PROBE_TEMPERATURE  # [n, classes]
            target = torch.tensor([classes.index(attrs[i][name]) for i in keep])
            losses.append(F.cross_entropy(logits, target))
        return torch.stack(losses).mean()


def drop_captions(rng: random.Random, caps: list[str]) -> list[str]:
    return ["" if rng.random() < CAPTION_DROPOUT else c for c in caps]


@torch.no_grad()
def caption_context(rng: random.Random, text: CLIPTextModel, tok: CLIPTokenizer, caps: list[str]) -> Tensor:
    """The frozen text encoder's last hidden states ``[b, 77, 32]`` for ``caps``, 10 % of them emptied (for
    classifier-free guidance)."""
    return text(tok(drop_captions(rng, caps)))


def frame_loss(
    rng, gen, unet, text, tok, pool, alphas: Tensor, batch: int, first_frame: float = 0.0, t_max: int | None = None
) -> Tensor:
    """The text-to-image loss of the ``unet``, ``refine``, ``frame0`` and ``detail`` stages on one frame of each of
    ``batch`` clips drawn from the latent pool, that frame being frame 0 with probability ``first_frame`` and a
    uniformly drawn frame otherwise (with ``first_frame`` 0 the draws are the ``unet`` stage's as they always were):
    :func:`high_noise_loss` on high-noise-biased timesteps, or with ``t_max`` the plain eps MSE on timesteps drawn
    uniformly below it (:func:`train_detail`)."""
    captions, latents = pool
    idx = [rng.randrange(len(captions)) for _ in range(batch)]
    first = [rng.random() < first_frame for _ in idx] if first_frame else [False] * batch
    frames = torch.tensor([0 if f else rng.randrange(latents.shape[2]) for f in first])
    z0 = latents[torch.tensor(idx), :, frames]  # [b, 4, 8, 8]: one frame of each drawn clip
    zt, t, eps = noisy(z0, alphas, high=t_max is None, gen=gen, t_max=t_max)
    ctx = caption_context(rng, text, tok, [captions[i] for i in idx])  # [b, 77, 32]
    pred = unet(zt, t, ctx)
    return high_noise_loss(pred, eps, t, alphas) if t_max is None else F.mse_loss(pred, eps)

