"""How selective is the toy-world UNet's spatial self-attention? (docs/toyworld.md §4, the K/V-sharing caveat.)

K/V sharing (paper Sec. 4.1) gives every frame's spatial self-attention the first frame's keys and values; in SD1.5,
whose self-attention picks out a few related tokens, a query then fetches the matching content of frame 0. Whether
the toy world can test that depends on its own attention maps. This script samples step-1 images of held-out prompts
and reports, for every resolution level of the spatial self-attention layers (``attn1``; 0 = full latent
resolution), averaged over layers, heads, queries, steps and prompts:

* the normalised entropy of each query's attention weights (1 = uniform over all tokens),
* the largest weight (uniform: 1 / tokens),
* the weight on the query's own token and on its 3x3 neighbourhood, beside what uniform weights would give.

    python scripts/toyworld_attention.py            # 8 held-out prompts, 10 DDIM steps, guidance 5 (about 20 s)
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path

import torch
from einops import rearrange

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from animatezero.hooks import installed, spatial_self_attention_layers  # noqa: E402
from animatezero.pipeline import AnimateZeroPipeline  # noqa: E402
from evaluation.toyworld import EVAL_SAMPLING_SEED as EVAL_SEED  # noqa: E402
from evaluation.toyworld import eval_scenes  # noqa: E402
from models.attention import Attention, default_processor  # noqa: E402

FIELDS = ("entropy", "max_weight", "own", "own_uniform", "near", "near_uniform")


class AttentionStats:
    """A processor that computes the layer as usual and adds its attention weights' statistics to ``sums``."""

    def __init__(self, level: int, sums: dict[int, torch.Tensor], counts: dict[int, int]):
        self.level, self.sums, self.counts = level, sums, counts

    def __call__(self, attn: Attention, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        q, k = (rearrange(f(x), "b n (h d) -> b h n d", h=attn.heads) for f in (attn.to_q, attn.to_k))
        w = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).softmax(-1)  # [b, h, n, n]
        n = w.shape[-1]
        side = math.isqrt(n)  # square latents (the toy world's 8x8 and its halvings)
        ys, xs = torch.arange(n) // side, torch.arange(n) % side
        dist = torch.maximum((ys[:, None] - ys[None]).abs(), (xs[:, None] - xs[None]).abs())  # [n, n] Chebyshev
        near = (dist <= 1).to(w.dtype)
        entropy = -(w * w.clamp_min(1e-12).log()).sum(-1) / math.log(n) if n > 1 else torch.ones(w.shape[:-1])
        row = torch.stack(
            [
                entropy.mean(),
                w.amax(-1).mean(),
                w.diagonal(dim1=-2, dim2=-1).mean(),
                torch.tensor(1 / n),
                (w * near).sum(-1).mean(),
                near.sum(-1).mean() / n,
            ]
        )
        self.sums[self.level] = self.sums.get(self.level, torch.zeros(len(FIELDS))) + row
        self.counts[self.level] += 1
        return default_processor(attn, x, context)


@torch.inference_mode()
def measure(pipe: AnimateZeroPipeline, prompts: int = 8, steps: int = 10, guidance: float = 5.0) -> dict[int, dict]:
    """Per level: the mean of each of :data:`FIELDS` over layers, heads, queries, steps, guidance branches, prompts."""
    sums: dict[int, torch.Tensor] = {}
    counts: dict[int, int] = defaultdict(int)
    procs = {
        name: AttentionStats(info.level, sums, counts)
        for name, info in spatial_self_attention_layers(pipe.unet).items()
    }
    with installed(pipe.unet, procs):
        for k, scene in enumerate(eval_scenes(prompts)):
            pipe.text_to_image(scene.caption, steps=steps, guidance_scale=guidance, seed=EVAL_SEED + k)
    return {lvl: dict(zip(FIELDS, (sums[lvl] / counts[lvl]).tolist())) for lvl in sorted(sums)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--guidance", type=float, default=5.0)
    args = ap.parse_args(argv)
    pipe = AnimateZeroPipeline.toyworld()
    pipe.progress = False
    for level, s in measure(pipe, args.prompts, args.steps, args.guidance).items():
        tokens = round(1 / s["own_uniform"])
        print(
            f"level {level} ({tokens} tokens): entropy {s['entropy']:.3f} of uniform's, max weight {s['max_weight']:.3f}, "
            f"own token {s['own']:.3f} (uniform {s['own_uniform']:.3f}), "
            f"3x3 {s['near']:.3f} (uniform {s['near_uniform']:.3f})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
