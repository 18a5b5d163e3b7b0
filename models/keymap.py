"""diffusers module names <-> our LDM module names for the SD1.5 UNet (the one place this mapping lives).

Our UNet is named like the LDM checkpoint (``input_blocks.4.1.transformer_blocks.0.attn1.to_q``); files made with
diffusers-based tools (LoRAs, AnimateDiff's adapter, diffusers' ``MotionAdapter``) name the same layers the diffusers
way (``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q``). The block correspondence is the table in
docs/checkpoints.md §1.3, written here as a rule over a :class:`models.config.UNetConfig` so tiny test models map the
same way as SD1.5:

* down level ``i``, layer ``j``: ``down_blocks.i.{resnets,attentions}.j`` = ``input_blocks.{1 + i(R+1) + j}.{0,1}``;
  its downsampler ``down_blocks.i.downsamplers.0.conv`` = ``input_blocks.{(i+1)(R+1)}.0.op`` (R = res blocks per level);
* ``mid_block.resnets.0`` / ``attentions.0`` / ``resnets.1`` = ``middle_block.0`` / ``.1`` / ``.2``;
* up level ``i`` (deepest first), layer ``j``: ``up_blocks.i.{resnets,attentions}.j`` = ``output_blocks.{i(R+1) + j}.
  {0,1}``, its upsampler ``up_blocks.i.upsamplers.0.conv`` = ``output_blocks.{i(R+1) + R}.{1 or 2}.conv``;
* inside a ResNet: ``norm1 conv1 time_emb_proj norm2 conv2 conv_shortcut`` = ``in_layers.0 in_layers.2 emb_layers.1
  out_layers.0 out_layers.3 skip_connection``; inside a transformer the names are the same;
* ``conv_in`` = ``input_blocks.0.0``, ``time_embedding.linear_{1,2}`` = ``time_embed.{0,2}``, ``conv_norm_out`` /
  ``conv_out`` = ``out.0`` / ``out.2``.

Use :func:`unet_diffusers_to_ldm` for one name, :func:`unet_module_map` for every module of a UNet. The text encoder
needs no map: ours carries the Hugging Face names.
"""

from __future__ import annotations

from models.config import UNetConfig

# inside a ResNet block: diffusers ResnetBlock2D -> LDM ResBlock
RESNET_NAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}

# whole modules outside the blocks
TOP_LEVEL = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def unet_block_prefixes(cfg: UNetConfig) -> dict[str, tuple[str, str]]:
    """``{diffusers block prefix: (LDM prefix, kind)}`` with kind ``"resnet"``, ``"attention"`` or ``"sampler"``
    (the prefixes end with a dot)."""
    r, levels = cfg.num_res_blocks, len(cfg.block_channels)
    out: dict[str, tuple[str, str]] = {}
    for i in range(levels):
        for j in range(r):
            n = 1 + i * (r + 1) + j
            out[f"down_blocks.{i}.resnets.{j}."] = (f"input_blocks.{n}.0.", "resnet")
            if i in cfg.attention_levels:
                out[f"down_blocks.{i}.attentions.{j}."] = (f"input_blocks.{n}.1.", "attention")
        if i < levels - 1:
            out[f"down_blocks.{i}.downsamplers.0.conv."] = (f"input_blocks.{(i + 1) * (r + 1)}.0.op.", "sampler")
    out["mid_block.resnets.0."] = ("middle_block.0.", "resnet")
    out["mid_block.attentions.0."] = ("middle_block.1.", "attention")
    out["mid_block.resnets.1."] = ("middle_block.2.", "resnet")
    for i in range(levels):
        level = levels - 1 - i  # up_blocks.0 is the deepest level
        attention = level in cfg.attention_levels
        for j in range(r + 1):
            n = i * (r + 1) + j
            out[f"up_blocks.{i}.resnets.{j}."] = (f"output_blocks.{n}.0.", "resnet")
            if attention:
                out[f"up_blocks.{i}.attentions.{j}."] = (f"output_blocks.{n}.1.", "attention")
        if level > 0:
            n = i * (r + 1) + r
            out[f"up_blocks.{i}.upsamplers.0.conv."] = (f"output_blocks.{n}.{2 if attention else 1}.conv.", "sampler")
    return out


def unet_diffusers_to_ldm(name: str, cfg: UNetConfig) -> str | None:
    """Our LDM module path for a diffusers UNet module path (``down_blocks.0.resnets.1.conv1`` ->
    ``input_blocks.2.0.in_layers.2``); None when ``name`` is not a UNet module of this shape. Names are module paths
    (no ``.weight``); whether the module exists in a given UNet is for the caller to check."""
    if name in TOP_LEVEL:
        return TOP_LEVEL[name]
    dotted = name + "."
    for prefix, (ldm, kind) in unet_block_prefixes(cfg).items():
        if not dotted.startswith(prefix):
            continue
        rest = name[len(prefix) :]
        if kind == "sampler":
            return ldm.rstrip(".") if rest == "" else None
        if kind == "resnet":
            return ldm + RESNET_NAMES[rest] if rest in RESNET_NAMES else None
        return ldm + rest if rest else ldm.rstrip(".")
    return None


def unet_ldm_to_diffusers(name: str, cfg: UNetConfig) -> str | None:
    """The inverse of :func:`unet_diffusers_to_ldm`: the diffusers path of one of our LDM module paths (None when
    it is not a UNet module of this shape)."""
    top = {v: k for k, v in TOP_LEVEL.items()}
    if name in top:
        return top[name]
    resnet = {v: k for k, v in RESNET_NAMES.items()}
    dotted = name + "."
    for diff_prefix, (prefix, kind) in unet_block_prefixes(cfg).items():
        if not dotted.startswith(prefix):
            continue
        rest = name[len(prefix) :]
        if kind == "sampler":
            return diff_prefix.rstrip(".") if rest == "" else None
        if kind == "resnet":
            return diff_prefix + resnet[rest] if rest in resnet else None
        return diff_prefix + rest if rest else diff_prefix.rstrip(".")
    return None


def unet_module_map(cfg: UNetConfig, ldm_names: list[str]) -> dict[str, str]:
    """``{diffusers module path: LDM module path}`` for the given modules of a UNet of shape ``cfg`` (e.g. every
    ``n`` of ``unet.named_modules()`` that has a weight); modules without a diffusers name are left out."""
    table = {}
    for name in ldm_names:
        diffusers_name = unet_ldm_to_diffusers(name, cfg)
        if diffusers_name is not None:
            table[diffusers_name] = name
    return table
