"""Helpers shared by ``scripts/benchmark.py`` and ``scripts/parity_full.py``: cached synthetic checkpoints and the
diffusers/transformers oracle built offline from the same files (docs/checkpoints.md §4).

* :func:`synthetic_checkpoints` writes (once, cached by path) an SD1.5 single file and a v2 motion module with
  random weights from ``models.synthetic`` at tiny or full (real SD1.5 / motion v2) size.
* :func:`write_config_dir` writes the local diffusers config folder that ``from_single_file(config=...)`` needs
  (§4.1): ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/`` (rebuilt from open_clip's BPE, §1.5),
  ``motion_adapter/`` and ``scheduler/`` (the §4.2 DDIM settings).
* :func:`load_unet2d`, :func:`load_vae`, :func:`load_text_encoder`, :func:`load_motion_adapter`,
  :func:`build_animatediff` load diffusers' side; :func:`patch_motion_norms` is the §4.4 per-frame GroupNorm patch
  that makes diffusers compute the original SD1.5 AnimateDiff.

diffusers and transformers are imported lazily here and never by the runtime packages.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from einops import rearrange
from torch import Tensor, nn

from models.config import CLIPTextConfig, MotionConfig, UNetConfig, VAEConfig
from models.synthetic import write_motion_module, write_sd15_checkpoint

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

LATENT_SCALE = 0.18215
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
SD15_SEED, MOTION_SEED = 0, 2


def default_cache_dir() -> Path:
    """``$ANIMATEZERO_SYNTHETIC_CACHE`` or ``~/.cache/animatezero/synthetic``."""
    env = os.environ.get("ANIMATEZERO_SYNTHETIC_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "animatezero" / "synthetic"


@dataclass(frozen=True)
class SyntheticFiles:
    """Paths of one synthetic SD1.5 file and one motion-module file, with the architectures they were written at."""

    sd15: Path
    motion: Path
    unet: UNetConfig
    vae: VAEConfig
    clip: CLIPTextConfig
    motion_cfg: MotionConfig


def model_configs(size: str) -> tuple[UNetConfig, VAEConfig, CLIPTextConfig, MotionConfig]:
    """``full``: SD1.5 + motion v2 (the defaults); ``tiny``: the test widths with the same key layout."""
    if size == "full":
        return UNetConfig(), VAEConfig(), CLIPTextConfig(), MotionConfig.for_version(2)
    if size == "tiny":
        return UNetConfig.tiny(), VAEConfig.tiny(), CLIPTextConfig.tiny(), MotionConfig.tiny(2)
    raise ValueError(f"size must be 'tiny' or 'full', got {size!r}")


def synthetic_checkpoints(
    size: str, cache_dir: str | os.PathLike | None = None, file_dtype: str | None = None, log=print
) -> SyntheticFiles:
    """Write the synthetic files once and reuse them (the writer renames a finished temp file into place, so an
    existing path is a complete file). Full size is stored in fp16 (2.1 GB + 0.9 GB), tiny in fp32; loaders cast."""
    file_dtype = file_dtype or ("fp16" if size == "full" else "fp32")
    unet, vae, clip, motion = model_configs(size)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    sd15 = root / f"synthetic_sd15_{size}_{file_dtype}_seed{SD15_SEED}.safetensors"
    mm = root / f"synthetic_mm_v2_{size}_{file_dtype}_seed{MOTION_SEED}.safetensors"
    if not sd15.exists():
        log(f"[synthetic] writing {sd15} ...")
        write_sd15_checkpoint(sd15, unet, vae, clip, seed=SD15_SEED, dtype=DTYPES[file_dtype])
    if not mm.exists():
        log(f"[synthetic] writing {mm} ...")
        write_motion_module(mm, motion, seed=MOTION_SEED, dtype=DTYPES[file_dtype])
    return SyntheticFiles(sd15, mm, unet, vae, clip, motion)


# --------------------------------------------------------------------------------------------------------- configs
def diffusers_unet_config(cfg: UNetConfig) -> dict:
    """``UNet2DConditionModel`` config equal to ``cfg`` (SD1.x: ``attention_head_dim`` is really the head count)."""
    attn = [level in cfg.attention_levels for level in range(len(cfg.block_channels))]
    return dict(
        _class_name="UNet2DConditionModel",
        sample_size=64,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        block_out_channels=list(cfg.block_channels),
        layers_per_block=cfg.num_res_blocks,
        attention_head_dim=cfg.num_heads,
        cross_attention_dim=cfg.context_dim,
        norm_num_groups=cfg.norm_groups,
        norm_eps=1e-5,
        flip_sin_to_cos=True,
        freq_shift=0,
        use_linear_projection=False,
    )


def diffusers_vae_config(cfg: VAEConfig) -> dict:
    n = len(cfg.ch_mult)
    return dict(
        _class_name="AutoencoderKL",
        in_channels=cfg.in_channels,
        out_channels=cfg.in_channels,
        down_block_types=["DownEncoderBlock2D"] * n,
        up_block_types=["UpDecoderBlock2D"] * n,
        block_out_channels=list(cfg.block_channels),
        layers_per_block=cfg.num_res_blocks,
        latent_channels=cfg.z_channels,
        norm_num_groups=cfg.norm_groups,
        sample_size=512,
        scaling_factor=LATENT_SCALE,
    )


def transformers_clip_config(cfg: CLIPTextConfig) -> dict:
    """``CLIPTextConfig`` of SD1.5's text tower (ViT-L/14: quick_gelu, pad = EOS)."""
    return dict(
        architectures=["CLIPTextModel"],
        model_type="clip_text_model",
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.width,
        intermediate_size=cfg.mlp_dim,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        max_position_embeddings=cfg.max_positions,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=cfg.width,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )


def diffusers_adapter_config(cfg: MotionConfig) -> dict:
    """``MotionAdapter`` config (§4.1: v2 = mid block, 32 positions)."""
    return dict(
        _class_name="MotionAdapter",
        block_out_channels=list(cfg.block_channels),
        motion_layers_per_block=cfg.layers_per_block,
        motion_mid_block_layers_per_block=1,
        motion_num_attention_heads=cfg.num_heads,
        motion_norm_num_groups=cfg.norm_groups,
        motion_max_seq_length=cfg.max_positions,
        use_motion_mid_block=cfg.mid_block,
    )


SCHEDULER_CONFIG = dict(  # §4.2: reproduces AnimateDiff's DDIM (diffusers 0.11.1 defaults + its kwargs)
    _class_name="DDIMScheduler",
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="linear",
    steps_offset=1,
    clip_sample=False,
    set_alpha_to_one=True,
    timestep_spacing="leading",
    prediction_type="epsilon",
)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP reversible byte -> printable-character map (the 256 base symbols of the BPE vocabulary)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {b: chr(b) for b in printable} | {b: chr(256 + n) for n, b in enumerate(others)}


def write_tokenizer_files(out: Path) -> None:
    """``vocab.json`` + ``merges.txt`` from open_clip's ``bpe_simple_vocab_16e6.txt.gz`` (docs/checkpoints.md §1.5):
    merges = lines[1 : 49152-256-2+1]; vocab = 256 byte symbols, the same with ``</w>``, the merged pairs, then the
    two specials (49408 entries)."""
    from models.tokenizer import default_bpe_path

    lines = gzip.open(default_bpe_path(), "rt", encoding="utf-8").read().split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (out / "merges.txt").write_text("\n".join(["#version: 0.2", *merges]) + "\n")
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            dict(
                tokenizer_class="CLIPTokenizer",
                model_max_length=77,
                bos_token="<|startoftext|>",
                eos_token="<|endoftext|>",
                pad_token="<|endoftext|>",
                unk_token="<|endoftext|>",
                do_lower_case=True,
            )
        )
    )


def write_config_dir(files: SyntheticFiles, root: str | os.PathLike) -> Path:
    """The local config folder of §4.1 for ``files``' architectures; returns it."""
    root = Path(root)
    for sub, cfg in (
        ("unet", diffusers_unet_config(files.unet)),
        ("vae", diffusers_vae_config(files.vae)),
        ("text_encoder", transformers_clip_config(files.clip)),
        ("motion_adapter", diffusers_adapter_config(files.motion_cfg)),
        ("scheduler", SCHEDULER_CONFIG),
    ):
        (root / sub).mkdir(parents=True, exist_ok=True)
        (root / sub / "config.json").write_text(json.dumps(cfg, indent=1))
    write_tokenizer_files(root / "tokenizer")
    return root


# ---------------------------------------------------------------------------------------------------- diffusers side
def quiet() -> None:
    """Silence diffusers' and transformers' info/warning logs (e.g. "modules that should be kept in float32: []")."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.set_verbosity_error()


def load_unet2d(files: SyntheticFiles, config_dir: Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    import diffusers

    quiet()
    return diffusers.UNet2DConditionModel.from_single_file(
        str(files.sd15), config=str(config_dir), subfolder="unet", local_files_only=True, torch_dtype=dtype
    ).eval()


def load_vae(files: SyntheticFiles, config_dir: Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    import diffusers

    quiet()

    return diffusers.AutoencoderKL.from_single_file(
        str(files.sd15), config=str(config_dir), subfolder="vae", local_files_only=True, torch_dtype=dtype
    ).eval()


def load_text_encoder(files: SyntheticFiles, config_dir: Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    """transformers' ``CLIPTextModel`` via diffusers' converter (it knows transformers 5 dropped ``text_model.``)."""
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from safetensors import safe_open
    from transformers import CLIPTextModel

    quiet()
    with safe_open(str(files.sd15), framework="pt") as f:  # only the text tower, not the 2 GB UNet
        sd = {k: f.get_tensor(k) for k in f.keys() if k.startswith("cond_stage_model.")}
    model = create_diffusers_clip_model_from_ldm(
        CLIPTextModel, sd, config=str(config_dir), subfolder="text_encoder", local_files_only=True, torch_dtype=dtype
    )
    return model.to(dtype).eval()


def load_tokenizer(config_dir: Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(config_dir / "tokenizer"))


def load_motion_adapter(files: SyntheticFiles, config_dir: Path, dtype: torch.dtype = torch.float32) -> nn.Module:
    import diffusers

    quiet()

    adapter = diffusers.MotionAdapter.from_single_file(
        str(files.motion), config=str(config_dir / "motion_adapter"), local_files_only=True, torch_dtype=dtype
    )
    return adapter.to(dtype).eval()


def ddim_scheduler():
    import diffusers

    return diffusers.DDIMScheduler(**{k: v for k, v in SCHEDULER_CONFIG.items() if not k.startswith("_")})


class PerFrameGroupNorm(nn.Module):
    """§4.4 oracle patch: diffusers' ``AnimateDiffTransformer3D`` normalises ``[b, c, f, h, w]`` with statistics over
    all frames; the SD1.5 motion modules normalise each frame. This wrapper makes diffusers compute the latter."""

    def __init__(self, norm: nn.GroupNorm):
        super().__init__()
        self.norm = norm

    def forward(self, x: Tensor) -> Tensor:  # [b, c, f, h, w]
        y = self.norm(rearrange(x, "b c f h w -> (b f) c h w"))
        return rearrange(y, "(b f) c h w -> b c f h w", b=x.shape[0])


def patch_motion_norms(model: nn.Module) -> int:
    """Wrap the GroupNorm of every diffusers motion module in ``model`` (v2: 21); returns how many were wrapped."""
    modules = [m for m in model.modules() if type(m).__name__ == "AnimateDiffTransformer3D"]
    for m in modules:
        if not isinstance(m.norm, PerFrameGroupNorm):
            m.norm = PerFrameGroupNorm(m.norm)
    return len(modules)


def unpatch_motion_norms(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(getattr(m, "norm", None), PerFrameGroupNorm):
            m.norm = m.norm.norm


def motion_unet(unet2d: nn.Module, adapter: nn.Module) -> nn.Module:
    """diffusers' ``UNetMotionModel`` from the 2-D UNet and the adapter (copies the weights)."""
    import diffusers

    quiet()

    return diffusers.UNetMotionModel.from_unet2d(unet2d, adapter).eval()


def build_animatediff(
    files: SyntheticFiles,
    config_dir: Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    unet: nn.Module | None = None,
    vae: nn.Module | None = None,
    text_encoder: nn.Module | None = None,
    adapter: nn.Module | None = None,
):
    """diffusers' ``AnimateDiffPipeline`` from the same files (SDPA attention, §4.2 DDIM), unpatched (stock diffusers;
    call :func:`patch_motion_norms` on ``pipe.unet`` for the SD1.5 numerics). Pass already loaded parts to reuse them;
    ``unet`` may be a ``UNet2DConditionModel`` (converted) or a ``UNetMotionModel``."""
    import diffusers

    quiet()

    adapter = adapter if adapter is not None else load_motion_adapter(files, config_dir, dtype)
    pipe = diffusers.AnimateDiffPipeline(
        vae=vae if vae is not None else load_vae(files, config_dir, dtype),
        text_encoder=text_encoder if text_encoder is not None else load_text_encoder(files, config_dir, dtype),
        tokenizer=load_tokenizer(config_dir),
        unet=unet if unet is not None else load_unet2d(files, config_dir, dtype),
        motion_adapter=adapter,
        scheduler=ddim_scheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device=device, dtype=dtype)


def build_stable_diffusion(
    files: SyntheticFiles, config_dir: Path, *, vae: nn.Module | None = None, text_encoder: nn.Module | None = None
):
    """diffusers' ``StableDiffusionPipeline`` (text-to-image) from the same files, §4.2 DDIM, no safety checker; pass
    already loaded parts (e.g. an AnimateDiff reference's ``vae``/``text_encoder``) to reuse them."""
    import diffusers

    quiet()
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae if vae is not None else load_vae(files, config_dir),
        text_encoder=text_encoder if text_encoder is not None else load_text_encoder(files, config_dir),
        tokenizer=load_tokenizer(config_dir),
        unet=load_unet2d(files, config_dir),
        scheduler=ddim_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def max_err(ours: Tensor, ref: Tensor) -> dict[str, float]:
    """``{"max_abs": max |ours - ref|, "scale": max |ref|, "rel": max_abs / scale}`` (computed in float64)."""
    ours, ref = ours.detach().double().cpu(), ref.detach().double().cpu()
    if ours.shape != ref.shape:
        raise ValueError(f"shape mismatch: ours {list(ours.shape)} vs reference {list(ref.shape)}")
    err, scale = (ours - ref).abs().max().item(), ref.abs().max().item()
    return {"max_abs": err, "scale": scale, "rel": err / scale if scale > 0 else float("inf")}
