"""Our CLIPTextModel against transformers' (test-only oracle), both loaded from the same synthetic LDM single file.

The file holds the text tower under its real prefix ``cond_stage_model.transformer.text_model.`` (with the old
``position_ids`` buffer). The oracle is built by diffusers' ``create_diffusers_clip_model_from_ldm``, which knows
that transformers 5 dropped the ``text_model.`` level; the test checks that every oracle weight really came from
the file, since a prefix mismatch would otherwise load nothing, silently.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.clip_text import CLIPTextModel
from models.config import CLIPTextConfig

PREFIX = "cond_stage_model.transformer.text_model."
REL_TOL = 1e-4  # max |ours - oracle| <= REL_TOL * max |oracle|

CONFIGS = {
    "tiny": CLIPTextConfig.tiny(),  # width 64, one head
    "multihead": CLIPTextConfig(width=128, layers=2, heads=2, mlp_dim=512),
}


def clip_shapes(cfg: CLIPTextConfig) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the SD1.5 text tower (below ``text_model.``), following the docs/checkpoints.md §3 recipe."""
    w = cfg.width
    shapes = {
        "embeddings.token_embedding.weight": (cfg.vocab_size, w),
        "embeddings.position_embedding.weight": (cfg.max_positions, w),
        "final_layer_norm.weight": (w,),
        "final_layer_norm.bias": (w,),
    }
    for i in range(cfg.layers):
        p = f"encoder.layers.{i}."
        for n in ("q", "k", "v", "out"):
            shapes[f"{p}self_attn.{n}_proj.weight"], shapes[f"{p}self_attn.{n}_proj.bias"] = (w, w), (w,)
        for n in ("layer_norm1", "layer_norm2"):
            shapes[f"{p}{n}.weight"], shapes[f"{p}{n}.bias"] = (w,), (w,)
        shapes[p + "mlp.fc1.weight"], shapes[p + "mlp.fc1.bias"] = (cfg.mlp_dim, w), (cfg.mlp_dim,)
        shapes[p + "mlp.fc2.weight"], shapes[p + "mlp.fc2.bias"] = (w, cfg.mlp_dim), (w,)
    return shapes


def random_state_dict(cfg: CLIPTextConfig, seed: int) -> dict[str, torch.Tensor]:
    """Norm weights near 1, linear weights std 1/sqrt(fan_in), embeddings std 1, small biases."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in clip_shapes(cfg).items():
        x = torch.randn(shape, generator=g)
        if "embedding" in key:
            sd[key] = x
        elif len(shape) == 2:
            sd[key] = x / shape[1] ** 0.5
        else:
            sd[key] = 1.0 + 0.1 * x if "norm" in key and key.endswith("weight") else 0.1 * x
    return sd


def hf_config(cfg: CLIPTextConfig):
    from transformers import CLIPTextConfig as HFConfig

    return HFConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.width,
        intermediate_size=cfg.mlp_dim,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        max_position_embeddings=cfg.max_positions,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )


@pytest.fixture(scope="module", params=list(CONFIGS))
def models(request, tmp_path_factory):
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel as HFCLIPTextModel

    cfg = CONFIGS[request.param]
    root = tmp_path_factory.mktemp(f"clip_{request.param}")
    weights = random_state_dict(cfg, seed=0)
    sd = {PREFIX + k: v for k, v in weights.items()}
    sd[PREFIX + "embeddings.position_ids"] = torch.arange(cfg.max_positions)[None]  # as transformers < 4.31 saved
    path = root / "tiny_sd15.safetensors"
    save_file(sd, str(path), metadata={"format": "pt"})
    hf_config(cfg).save_pretrained(root / "config" / "text_encoder")

    file_sd = load_file(str(path))  # both models read the same file
    ours = CLIPTextModel(cfg).eval()
    ours.load_state_dict(
        {"text_model." + k.removeprefix(PREFIX): v for k, v in file_sd.items() if not k.endswith("position_ids")},
        strict=True,
    )
    oracle = create_diffusers_clip_model_from_ldm(
        HFCLIPTextModel, file_sd, config=str(root / "config"), subfolder="text_encoder", local_files_only=True
    )
    return cfg, ours, oracle.eval(), weights


def test_full_size_keys_match_checkpoint_rules():
    with torch.device("meta"):
        clip = CLIPTextModel(CLIPTextConfig())
    ours = {k: tuple(v.shape) for k, v in clip.state_dict().items()}
    assert ours == {"text_model." + k: s for k, s in clip_shapes(CLIPTextConfig()).items()}
    assert len(ours) == 196  # no position_ids buffer
    assert sum(p.numel() for p in clip.parameters()) == 123_060_480


def test_oracle_loaded_every_weight(models):
    _, _, oracle, weights = models
    # transformers >= 5.6 has no `text_model.` level in CLIPTextModel's state dict; older versions do.
    loaded = {
        k.removeprefix("text_model."): v for k, v in oracle.state_dict().items() if not k.endswith("position_ids")
    }
    assert loaded.keys() == weights.keys()
    for k, v in weights.items():
        assert torch.equal(loaded[k], v), k


def token_ids(batch: int, seed: int) -> torch.Tensor:
    """SD1.5-shaped ids: BOS, a random-length run of random tokens, EOS, EOS padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((batch, 77), 49407)
    for row in range(batch):
        n = int(torch.randint(1, 76, (1,), generator=g))
        ids[row, 0] = 49406
        ids[row, 1 : n + 1] = torch.randint(0, 49406, (n,), generator=g)
    return ids


@torch.no_grad()
def test_last_hidden_state_matches_transformers(models):
    cfg, ours, oracle, _ = models
    ids = token_ids(3, seed=1)
    out = ours(ids)
    ref = oracle(input_ids=ids).last_hidden_state
    assert out.shape == (3, 77, cfg.width)
    err, scale = (out - ref).abs().max().item(), ref.abs().max().item()
    print(f"CLIP width {cfg.width} heads {cfg.heads}: max|Δ| {err:.3e}, max|ref| {scale:.3e}, rel {err / scale:.3e}")
    assert err <= REL_TOL * scale


@torch.no_grad()
def test_causal(models):
    """Changing a later token leaves the hidden states of all earlier positions unchanged."""
    _, ours, _, _ = models
    ids = token_ids(1, seed=2)
    changed = ids.clone()
    changed[0, 40] = 1234
    a, b = ours(ids), ours(changed)
    torch.testing.assert_close(a[:, :40], b[:, :40], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 40:], b[:, 40:])
