"""A sweep resumes only items made with the same settings: the fingerprint covers the dtype, the device kind and
every model setting that changes the pixels (a bf16 item is no longer silently reused by an fp32 run), while an item
of an older sweep, fingerprinted before these were, still resumes when its recorded dtype and device match."""

import json

import pytest
import torch

from animatezero.controls import Controls
from experiments import cli, common
from experiments import sweep as sw
from experiments.runs import read_run
from tests import sweeps

ONE_ITEM = "prompts.items=[{id: cat, prompt: x, seed: 1}]"



def sweep_cfg(cache, sweep_dir, *overrides):
    return sweeps.sweep_cfg(cache, sweep_dir, *overrides, prompts=ONE_ITEM)


@pytest.fixture
def loads(monkeypatch):
    count = []
    real = common.load_pipeline
    monkeypatch.setattr(common, "load_pipeline", lambda *a, **k: count.append(1) or real(*a, **k))
    return count


def test_a_dtype_change_is_not_resumed(tmp_path, tiny_cache, loads):
    root = tmp_path / "sweep"
    item = root / "paper" / "cat_s1"
    sw.sweep(sweep_cfg(tiny_cache, root, "model.dtype=bfloat16"))
    assert read_run(item)["dtype"] == "bfloat16"
    with pytest.raises(cli.ConfigError, match="other settings.*bfloat16 on cpu, this run is float32 on cpu"):
        sw.sweep(sweep_cfg(tiny_cache, root, "model.dtype=float32"))
    assert len(loads) == 1  # refused before loading anything
    sw.sweep(sweep_cfg(tiny_cache, root, "model.dtype=float32", "overwrite=true"))
    assert read_run(item)["dtype"] == "float32" and len(loads) == 2
    sw.sweep(sweep_cfg(tiny_cache, root, "model.dtype=float32"))  # now resumes: nothing to do
    assert len(loads) == 2


def test_an_item_of_an_older_sweep_resumes_when_its_dtype_and_device_match(tmp_path, tiny_cache, loads):
    root = tmp_path / "sweep"
    item = root / "paper" / "cat_s1"
    sw.sweep(sweep_cfg(tiny_cache, root))
    run = json.loads((item / "run.json").read_text())
    cfg = sweep_cfg(tiny_cache, root)
    setup = sw.settings(cfg, torch.float32, "cpu", run["checkpoints"])
    entry = {"prompt": "x", "negative_prompt": run["negative_prompt"], "seed": 1}
    run["fingerprint"] = sw.item_fingerprint(entry, Controls.paper(), setup, legacy=True)  # as older sweeps wrote it
    (item / "run.json").write_text(json.dumps(run))
    sw.sweep(sweep_cfg(tiny_cache, root))
    assert len(loads) == 1  # resumed, nothing redone
    with pytest.raises(cli.ConfigError, match="other settings"):
        sw.sweep(sweep_cfg(tiny_cache, root, "model.dtype=bfloat16"))


def test_settings_cover_every_model_setting_but_the_runtime_ones(tiny_cache, tmp_path):
    base = sw.settings(sweep_cfg(tiny_cache, tmp_path), torch.float32, "cuda:1", {})
    assert base["dtype"] == "float32" and base["device_kind"] == "cuda" and "model" not in base
    assert sw.settings(sweep_cfg(tiny_cache, tmp_path), torch.float32, "cuda:0", {}) == base  # same kind
    runtime = sweep_cfg(tiny_cache, tmp_path, "model.cpu_threads=2", "model.vae_chunk_size=2", "model.offload=true")
    assert sw.settings(runtime, torch.float32, "cuda:1", {}) == base
    # a model setting added later is covered without naming it; at its empty default it stays out
    later = sweep_cfg(tiny_cache, tmp_path, "+model.vae_tiling=true")
    assert sw.settings(later, torch.float32, "cuda:1", {})["model"] == {"vae_tiling": True}
    assert sw.settings(sweep_cfg(tiny_cache, tmp_path, "+model.vae_tiling=null"), torch.float32, "cuda:1", {}) == base
    # LoRAs count by content (SHA-256) and scale, not by path
    lora = {"lora_0": {"ref": "a/style.safetensors", "path": "a/style.safetensors", "sha256": "f00", "scale": 0.5}}
    moved = {"lora_0": {**lora["lora_0"], "ref": "b/style.safetensors", "path": "b/style.safetensors"}}
    with_lora = sw.settings(sweep_cfg(tiny_cache, tmp_path), torch.float32, "cuda:1", lora)
    assert with_lora["lora_scales"] == {"lora_0": 0.5} and with_lora["checkpoints"] == {"lora_0": "f00"}
    assert sw.settings(sweep_cfg(tiny_cache, tmp_path), torch.float32, "cuda:1", moved) == with_lora
