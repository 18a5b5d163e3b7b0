"""Bad input, faults and reduced-precision paths of the pipeline (checkpoint files: test_bad_checkpoints.py; CLI and
sweeps: test_cli.py, test_sweep_e2e.py)."""

import pytest
import torch

from animatezero.hub import DownloadError, parse_hub_reference, resolve
from animatezero.pipeline import AnimateZeroPipeline

SIZE = 64


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"height": 60}, "height must be a multiple of 8"),
        ({"width": 4096}, "width must be a multiple of 8 between 64 and 2048"),
        ({"height": 0}, "height must be"),
        ({"steps": 0}, "steps must be an integer in 1..1000"),
        ({"steps": -3}, "steps must be"),
        ({"guidance_scale": -1.0}, "guidance_scale must be >= 0"),
        ({"guidance_scale": float("nan")}, "guidance_scale must be >= 0"),
        ({"latents": torch.zeros(1, 4, 9, 8)}, r"latents must have shape \[1, 4, 8, 8\]"),
    ],
)
def test_text_to_image_rejects_bad_arguments_before_work(tiny_pipe, kwargs, match, monkeypatch):
    calls = []
    monkeypatch.setattr(tiny_pipe.runner, "forward", lambda *a, **k: calls.append(1))
    with pytest.raises(ValueError, match=match):
        tiny_pipe.text_to_image("x", **{"height": SIZE, "width": SIZE, "steps": 2, **kwargs})
    assert not calls  # nothing ran


@pytest.mark.parametrize("frames", [0, -1, 2.5])
def test_bad_frame_counts(tiny_pipe, frames):
    with pytest.raises(ValueError, match="num_frames must be an integer"):
        tiny_pipe.text_to_video("x", num_frames=frames, height=SIZE, width=SIZE, steps=1)


def test_animate_rejects_mismatched_latents_and_missing_motion(tiny_pipe, tiny_files):
    image = tiny_pipe.text_to_image("x", height=SIZE, width=SIZE, steps=1, seed=0)
    with pytest.raises(ValueError, match=r"latents must have shape \[1, 4, 3, 8, 8\]"):
        tiny_pipe.animate(image, num_frames=3, latents=torch.zeros(1, 4, 3, 16, 16))
    no_motion = AnimateZeroPipeline.from_single_files(tiny_files["sd15"])
    with pytest.raises(ValueError, match="no motion module"):
        no_motion.animate(image)


def test_fp16_vae_overflow_is_retried_in_fp32(tiny_files, monkeypatch):
    """A non-finite reduced-precision decode warns and decodes again in float32."""
    pipe = AnimateZeroPipeline.from_single_files(tiny_files["sd15"], dtype=torch.bfloat16)
    real_decode = pipe.vae.decode

    def overflowing(z, chunk_size=None):
        out = real_decode(z, chunk_size=chunk_size)
        return out if z.dtype == torch.float32 else out * float("inf")

    monkeypatch.setattr(pipe.vae, "decode", overflowing)
    with pytest.warns(UserWarning, match="overflowed in reduced precision"):
        images = pipe.decode(torch.randn(2, 4, 8, 8))
    assert torch.isfinite(images).all() and images.shape == (2, 3, 64, 64)
    assert next(pipe.vae.parameters()).dtype == torch.bfloat16  # back to the pipeline's dtype


def test_out_of_memory_names_the_memory_options(tiny_pipe, monkeypatch):
    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(tiny_pipe.runner, "forward", oom)
    with pytest.raises(torch.cuda.OutOfMemoryError, match="(?s)Tried to allocate.*vae_chunk_size.*offload=True"):
        tiny_pipe.text_to_image("x", height=SIZE, width=SIZE, steps=1, seed=0)


def test_reduced_precision_stays_close_to_fp32(tiny_files, tiny_pipe):
    """The bf16 path (what runs on CPU of the fast paths) against fp32: one guided UNet step and a short sample."""
    bf16 = AnimateZeroPipeline.from_single_files(tiny_files["sd15"], tiny_files["mm_v2"], dtype=torch.bfloat16)
    x = torch.randn(2, 4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ctx = tiny_pipe.encode_prompt(["", "a cat"])
    with torch.inference_mode():
        ref = tiny_pipe.unet(x, 500, ctx, motion=tiny_pipe.motion_module)
        low = bf16.unet(x.bfloat16(), 500, ctx.bfloat16(), motion=bf16.motion_module).float()
    rel = ((low - ref).abs().max() / ref.abs().max()).item()
    assert rel < 3e-2, rel  # bf16 has 8 mantissa bits: ~4e-3 per op, a few % through the network
    a = tiny_pipe.text_to_image("a cat", height=SIZE, width=SIZE, steps=2, seed=1)
    b = bf16.text_to_image("a cat", height=SIZE, width=SIZE, steps=2, seed=1)
    assert (a.image - b.image).abs().mean().item() < 2e-2


def test_offload_gives_the_same_result(tiny_files, tiny_pipe):
    off = AnimateZeroPipeline.from_single_files(tiny_files["sd15"], tiny_files["mm_v2"], offload=True)
    a = tiny_pipe.text_to_image("a cat", height=SIZE, width=SIZE, steps=2, seed=1)
    b = off.text_to_image("a cat", height=SIZE, width=SIZE, steps=2, seed=1)
    assert torch.equal(a.image, b.image)


def test_hub_references(tmp_path, monkeypatch):
    assert parse_hub_reference("guoyww/animatediff/mm_sd_v15_v2.ckpt@abc123") == (
        "guoyww/animatediff",
        "mm_sd_v15_v2.ckpt",
        "abc123",
    )
    assert parse_hub_reference("hf://org/repo/sub/dir/file.safetensors") == (
        "org/repo",
        "sub/dir/file.safetensors",
        None,
    )
    assert parse_hub_reference("model.safetensors") is None
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve(tmp_path / "missing.safetensors")

    fetched = tmp_path / "fetched.ckpt"
    fetched.write_bytes(b"weights")
    seen = {}

    def fake_download(repo_id, filename, revision=None, **kwargs):
        seen.update(repo_id=repo_id, filename=filename, revision=revision)
        return str(fetched)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    assert resolve("org/repo/file.ckpt@deadbeef") == fetched and seen["revision"] == "deadbeef"
    with pytest.raises(DownloadError, match="SHA-256"):
        resolve("org/repo/file.ckpt", sha256="0" * 64)

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to the hub")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(DownloadError, match="(?s)could not download 'file.ckpt'.*local path"):
        resolve("org/repo/file.ckpt")


def test_no_eval_or_exec_in_the_package():
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1]
    offenders = [
        str(p)
        for folder in ("animatezero", "models", "experiments", "evaluation", "scripts")
        for p in (root / folder).rglob("*.py")
        if re.search(r"(?<![\w.])(eval|exec)\(", p.read_text())
    ]
    assert offenders == []
