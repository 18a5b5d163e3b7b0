"""Shared fixtures: offline hub, disabled W&B, and tiny synthetic SD1.5 + motion-module files with the real key names."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

import pytest  # noqa: E402
import torch  # noqa: E402

# the tiny test models are dominated by per-op overhead: one intra-op thread is fastest (and fair to a busy machine)
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """GPU tests skip cleanly where there is no CUDA device (as on CI)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    """The debug model's cache folder (paths.cache_dir), one per session so its checkpoints are written once."""
    return tmp_path_factory.getbasetemp() / "animatezero_tiny_cache"


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory):
    """Tiny SD1.5 checkpoint and v1/v2/v3 motion modules, written once per session (fp32)."""
    from models.config import CLIPTextConfig, MotionConfig, UNetConfig, VAEConfig
    from models.synthetic import write_motion_module, write_sd15_checkpoint

    root = tmp_path_factory.mktemp("tiny_ckpt")
    files = {"sd15": root / "tiny_sd15.safetensors"}
    write_sd15_checkpoint(
        files["sd15"], UNetConfig.tiny(), VAEConfig.tiny(), CLIPTextConfig.tiny(), seed=0, dtype=torch.float32
    )
    for version in (1, 2, 3):
        files[f"mm_v{version}"] = root / f"tiny_mm_v{version}.ckpt"
        write_motion_module(files[f"mm_v{version}"], MotionConfig.tiny(version), seed=version, dtype=torch.float32)
    return files


@pytest.fixture(scope="session")
def tiny_pipe(tiny_files):
    """An fp32 CPU pipeline on the tiny SD1.5 checkpoint with the v2 motion module."""
    from animatezero.pipeline import AnimateZeroPipeline

    return AnimateZeroPipeline.from_single_files(tiny_files["sd15"], tiny_files["mm_v2"])


@pytest.fixture(scope="session")
def micro_parts():
    """``(unet, vae, text_encoder, tokenizer, motion)`` with random weights at the smallest SD1.5-style UNet that keeps
    every block kind (2 levels of 1 ResBlock, attention at both, v2 motion modules with the mid block): for tests whose
    cost is per traced operation (``torch.compile``), not per FLOP. Pass them to ``AnimateZeroPipeline(*parts)``."""
    from models.clip_text import CLIPTextModel
    from models.config import CLIPTextConfig, MotionConfig, UNetConfig, VAEConfig
    from models.motion_module import MotionModules
    from models.tokenizer import CLIPTokenizer
    from models.unet import UNetModel
    from models.vae import AutoencoderKL

    torch.manual_seed(0)
    cfg = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_levels=(0, 1), context_dim=64)
    motion = MotionModules(MotionConfig(version=2, block_channels=cfg.block_channels, layers_per_block=1))
    return (
        UNetModel(cfg),
        AutoencoderKL(VAEConfig.tiny()),
        CLIPTextModel(CLIPTextConfig.tiny()),
        CLIPTokenizer(),
        motion,
    )
