"""Train the toy-world model: SD1.5 + AnimateDiff at a small width, in the original file formats, on CPU.

The trainer of the shipped files in ``animatezero/assets/toyworld/``: :mod:`.recipe` (widths, stages, step counts,
data), :mod:`.losses`, :mod:`.loop` (resumable stages, split batches, EMA), :mod:`.stages`, :mod:`.export` and the
command line (:mod:`.cli`; ``python scripts/train_toyworld.py`` or ``python -m experiments.train_toyworld``).

AnimateDiff's recipe, on the procedural world of :mod:`evaluation.toyworld`:

1. ``vae``: the SD1.5 VAE architecture at a small width (``ch`` 64, mult 1,1,1,1, one ResBlock per level: 64x64 RGB
   <-> 8x8x4) as an autoencoder (L1 + MSE + a small KL) on 32x32 crops that always hold the object, then rescaled
   exactly so that its latents times SD's 0.18215 have unit variance; ``decoder`` then fine-tunes its decoder on
   whole frames with the encoder frozen (as SD's ft-MSE VAE), beside the later stages if wanted.
2. ``text``: a CLIP text encoder of the real architecture (width 32, 2 layers, the real 49,408-token vocabulary and
   tokenizer) pre-trained on the world's captions (:class:`CaptionProbe`: the caption's four attributes from its
   end-of-text/padding tokens), then frozen, as SD freezes CLIP.
3. ``unet``: the SD1.5 UNet (``model_channels`` 64, mult 1,1,1,1, two ResBlocks per level, attention at levels 0-2)
   trained from scratch on single frames (text-to-image; eps prediction on AnimateDiff's linear-beta schedule, 10%
   empty captions for classifier-free guidance, EMA weights) with :func:`high_noise_loss`, which weights the loss
   toward high noise, where the prompt decides the picture. Widths are at least 64 where it matters: SD's GroupNorms
   have 32 groups, and at one channel per group the UNet's output norm would erase every per-image constant.
   ``refine`` then continues the UNet's EMA weights for a short stage at a low learning rate, half of its frames
   being their clip's frame 0 (the frame that AnimateZero's step 1 draws), and ``frame0`` for another on frame 0
   only (so that the UNet keeps which way a caption's motion goes: :func:`train_frame0`).
4. ``motion``: an AnimateDiff motion module in the v2 layout (with the mid-block module; ``proj_out``
   zero-initialised as in AnimateDiff) trained on 16-frame clips with the same loss, the spatial UNet and the text
   encoder frozen.
5. ``detail``: the ``frame0`` UNet continued with the plain eps loss at low noise (timesteps below 400, where an
   object's corners are drawn), the motion module frozen and unused, as a community SD1.5 fine-tune is made after
   the motion module it runs with (:func:`train_detail`).
6. ``export``: an LDM single file (``model.diffusion_model.*``, ``first_stage_model.*``,
   ``cond_stage_model.transformer.text_model.*``) and a motion module (``down_blocks.*``) as fp16 safetensors, with
   their SHA-256, into ``animatezero/assets/toyworld/``.

Every stage is seeded and resumable: it saves its state every ``--save-every`` steps and at the end, and a rerun
continues where it stopped (a finished stage is skipped). ``--wandb`` logs to Weights & Biases (offline unless
``WANDB_MODE`` says otherwise).

    python scripts/train_toyworld.py                       # the recipe, from nothing: under 2 h on 2 cores
    python scripts/train_toyworld.py --steps-motion 6000   # a shorter motion stage (the directions only)
    python scripts/train_toyworld.py --stage unet          # up to one stage (the decoder may run beside the others)
    python scripts/train_toyworld.py --export-only         # write the shipped files from finished stages
    python scripts/train_toyworld.py --from-checkpoint CK.safetensors --motion-module MM.safetensors --detail
                                                           # the detail stage alone, for an existing pair of files
    python scripts/train_toyworld.py --from-checkpoint CK.safetensors --motion-init MM.safetensors --steps-motion 2000 \
        --lr-motion 2e-4                                   # continue a module on a checkpoint (the shipped files' last step)
"""

from __future__ import annotations

from experiments.train_toyworld.cli import main

__all__ = ["main"]
