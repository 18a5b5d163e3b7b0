"""Our AutoencoderKL against diffusers' (test-only oracle), both loaded from the same synthetic LDM single file.

The file is written from the key/shape rules of docs/checkpoints.md §3 (not from our module), with the real
``first_stage_model.`` prefix, at the tiny width; the full-width key set is checked on the meta device.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.config import VAEConfig
from models.vae import LATENT_SCALE, AutoencoderKL

PREFIX = "first_stage_model."
REL_TOL = 1e-4  # max |ours - oracle| <= REL_TOL * max |oracle|


def vae_shapes(cfg: VAEConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of an LDM VAE checkpoint (no prefix), following the docs/checkpoints.md §3 recipe."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(p, cout, cin, k):
        shapes[p + "weight"], shapes[p + "bias"] = (cout, cin, k, k), (cout,)

    def norm(p, c):
        shapes[p + "weight"], shapes[p + "bias"] = (c,), (c,)

    def rb(p, cin, c):
        norm(p + "norm1.", cin)
        conv(p + "conv1.", c, cin, 3)
        norm(p + "norm2.", c)
        conv(p + "conv2.", c, c, 3)
        if cin != c:
            conv(p + "nin_shortcut.", c, cin, 1)

    def mid(p, c):
        rb(p + "mid.block_1.", c, c)
        norm(p + "mid.attn_1.norm.", c)
        for n in ("q", "k", "v", "proj_out"):
            conv(f"{p}mid.attn_1.{n}.", c, c, 1)
        rb(p + "mid.block_2.", c, c)

    ch, z = cfg.block_channels, cfg.z_channels
    conv("encoder.conv_in.", cfg.ch, cfg.in_channels, 3)
    cin = cfg.ch
    for i in range(len(ch)):
        for j in range(cfg.num_res_blocks):
            rb(f"encoder.down.{i}.block.{j}.", cin, ch[i])
            cin = ch[i]
        if i < len(ch) - 1:
            conv(f"encoder.down.{i}.downsample.conv.", cin, cin, 3)
    mid("encoder.", cin)
    norm("encoder.norm_out.", cin)
    conv("encoder.conv_out.", 2 * z, cin, 3)
    conv("decoder.conv_in.", ch[-1], z, 3)
    mid("decoder.", ch[-1])
    cin = ch[-1]
    for i in reversed(range(len(ch))):
        for j in range(cfg.num_res_blocks + 1):
            rb(f"decoder.up.{i}.block.{j}.", cin, ch[i])
            cin = ch[i]
        if i > 0:
            conv(f"decoder.up.{i}.upsample.conv.", cin, cin, 3)
    norm("decoder.norm_out.", cin)
    conv("decoder.conv_out.", cfg.in_channels, cin, 3)
    conv("quant_conv.", 2 * z, 2 * z, 1)
    conv("post_quant_conv.", z, z, 1)
    return shapes


def random_tensor(key: str, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    """Norm weights near 1, other weights variance-preserving (std 1/sqrt(fan_in)), small biases."""
    x = torch.randn(shape, generator=g)
    if len(shape) == 1:
        return 1.0 + 0.1 * x if "norm" in key and key.endswith("weight") else 0.1 * x
    return x / (torch.tensor(shape[1:]).prod().item() ** 0.5)


def random_state_dict(shapes: dict[str, tuple[int, ...]], prefix: str, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {prefix + k: random_tensor(k, s, g) for k, s in shapes.items()}


def strip_prefix(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in sd.items() if k.startswith(prefix)}


def tensor_signature(tensors) -> list[tuple[int, float, float]]:
    """Order-free fingerprint of a set of tensors: sorted (numel, sum, sum of squares), for 'all weights loaded'."""
    return sorted(
        (t.numel(), round(t.double().sum().item(), 4), round(t.double().square().sum().item(), 4)) for t in tensors
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny single file with the VAE under its real prefix, plus a stray non-VAE key, and a diffusers config dir."""
    from diffusers import AutoencoderKL as DiffusersVAE

    cfg = VAEConfig.tiny()
    root = tmp_path_factory.mktemp("vae")
    sd = random_state_dict(vae_shapes(cfg), PREFIX, seed=0)
    sd["betas"] = torch.linspace(1e-4, 2e-2, 1000)  # a DDPM buffer, as CompVis files carry
    path = root / "tiny_sd15.safetensors"
    save_file(sd, str(path), metadata={"format": "pt"})
    DiffusersVAE(
        in_channels=cfg.in_channels,
        out_channels=cfg.in_channels,
        down_block_types=("DownEncoderBlock2D",) * len(cfg.ch_mult),
        up_block_types=("UpDecoderBlock2D",) * len(cfg.ch_mult),
        block_out_channels=cfg.block_channels,
        layers_per_block=cfg.num_res_blocks,
        latent_channels=cfg.z_channels,
        norm_num_groups=cfg.norm_groups,
        sample_size=64,
        scaling_factor=LATENT_SCALE,
    ).save_config(root / "config" / "vae")
    return cfg, path, root / "config"


@pytest.fixture(scope="module")
def models(checkpoint):
    from diffusers import AutoencoderKL as DiffusersVAE

    cfg, path, config_dir = checkpoint
    file_sd = load_file(str(path))
    ours = AutoencoderKL(cfg).eval()
    ours.load_state_dict(strip_prefix(file_sd, PREFIX), strict=True)
    oracle = DiffusersVAE.from_single_file(str(path), config=str(config_dir), subfolder="vae", local_files_only=True)
    return ours, oracle.eval(), file_sd


def test_full_size_keys_match_checkpoint_rules():
    with torch.device("meta"):
        vae = AutoencoderKL(VAEConfig())
    ours = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    assert ours == vae_shapes(VAEConfig())
    assert len(ours) == 248
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863


def test_oracle_loaded_every_weight(models):
    _, oracle, file_sd = models
    params = list(oracle.state_dict().values())
    assert not any(t.is_meta for t in params)
    assert tensor_signature(params) == tensor_signature(strip_prefix(file_sd, PREFIX).values())


@pytest.fixture(scope="module")
def image():
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 32, 48, generator=g) * 2 - 1  # non-square to catch h/w mix-ups


def assert_close(ours: torch.Tensor, ref: torch.Tensor, what: str) -> float:
    err = (ours - ref).abs().max().item()
    scale = ref.abs().max().item()
    print(f"{what}: max|Δ| {err:.3e}, max|ref| {scale:.3e}, rel {err / scale:.3e}")
    assert ours.shape == ref.shape
    assert err <= REL_TOL * scale, f"{what}: max|Δ| {err:.3e} > {REL_TOL} * {scale:.3e}"
    return err


@torch.no_grad()
def test_encode_matches_diffusers(models, image):
    ours, oracle, _ = models
    z = ours.encode(image)
    assert z.shape == (2, 4, 4, 6)
    assert_close(z, oracle.encode(image).latent_dist.mean * LATENT_SCALE, "encode mean")


@torch.no_grad()
def test_encode_sample_uses_posterior_std(models, image):
    ours, oracle, _ = models
    mean = ours.encode(image)
    z = ours.encode(image, sample=True, generator=torch.Generator().manual_seed(7))
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(7))
    std = oracle.encode(image).latent_dist.std * LATENT_SCALE
    assert not torch.equal(z, mean)
    assert_close(z, mean + std * noise, "encode sample")


@torch.no_grad()
def test_decode_matches_diffusers(models):
    ours, oracle, _ = models
    z = torch.randn(3, 4, 4, 6, generator=torch.Generator().manual_seed(2))  # scaled latents ~ N(0, 1)
    x = ours.decode(z)
    assert x.shape == (3, 3, 32, 48)
    assert_close(x, oracle.decode(z / LATENT_SCALE).sample, "decode")
    torch.testing.assert_close(ours.decode(z, chunk_size=2), x, rtol=0, atol=1e-5)
