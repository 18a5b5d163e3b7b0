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
