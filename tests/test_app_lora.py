"""The app's LoRA field (experiments/app.py, docs/lora.md §1): entries parsed and files resolved by the CLI's code and
refused before any work, merged into the session's one model only when they change, the base weights given back
exactly when cleared, and each run's run.json recording the LoRAs as the CLI does (``lora_i``: ref, path, SHA-256,
scale). On the tiny random-weight model, with synthetic LoRAs in the kohya layout (``models.synthetic.write_lora``)."""

import hashlib
import json

import pytest
import torch

from animatezero.controls import Controls
from experiments import app, cli
from models.config import CLIPTextConfig, UNetConfig
from models.synthetic import write_lora

SAMPLING = {"steps": 2, "guidance": 7.5, "height": 64, "width": 64}
TINY = UNetConfig.tiny(), CLIPTextConfig.tiny()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("app_lora")
    write_lora(root / "style.safetensors", "kohya", *TINY, conv=True, seed=1)
    write_lora(root / "other.safetensors", "peft", *TINY, seed=2)
    write_lora(root / "sdxl.safetensors", "sdxl_kohya", *TINY, seed=3)
    return root


def load(root, *overrides, out=None):
    cfg = app.compose_config(["debug=tiny", f"paths.cache_dir={root / 'cache'}", *overrides])
    return app.Session.load(cfg, out or root / "out")


def weights(pipe):
    return {f"{c}.{k}": v.clone() for c in ("unet", "text_encoder") for k, v in getattr(pipe, c).state_dict().items()}


def same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_launch_configs_loras_fill_the_field(root):
    session = load(root, f"lora=[{root / 'style.safetensors'}:0.8]")
    assert session.lora_text == f"{root / 'style.safetensors'}:0.8"
    assert session.pipe.loras == [(str(root / "style.safetensors"), 0.8)]
    assert load(root).lora_text == ""


def test_setting_a_lora_changes_the_output_and_clearing_it_gives_back_the_base_weights(root, monkeypatch):
    session = load(root)
    merges = []
    set_loras = session.pipe.set_loras
    monkeypatch.setattr(session.pipe, "set_loras", lambda loras: merges.append(loras) or set_loras(loras))
    base = weights(session.pipe)
    (plain,) = session.candidates(prompt="a cat", seed=3, **SAMPLING, loras="")
    assert merges == []  # nothing merged, nothing asked: no merge

    field = f"{root / 'style.safetensors'}:0.8, {root / 'other.safetensors'}"
    (styled,) = session.candidates(prompt="a cat", seed=3, **SAMPLING, loras=field)
    assert merges == [[(str(root / "style.safetensors"), 0.8), (str(root / "other.safetensors"), 1.0)]]
    assert not same(weights(session.pipe), base)
    assert (styled.image - plain.image).abs().max() > 1e-3  # the same seed, another picture
    session.candidates(prompt="a cat", seed=3, **SAMPLING, loras=f"[{field}]")  # the CLI's brackets are fine too
    assert len(merges) == 1  # unchanged: not merged again

    (again,) = session.candidates(prompt="a cat", seed=3, **SAMPLING, loras="  ")
    assert merges[-1] == [] and same(weights(session.pipe), base)  # the base weights, bit for bit
    assert torch.equal(again.image, plain.image)
    assert not any(k.startswith("lora_") for k in session.checkpoints)


@pytest.mark.parametrize(
    ("field", "error", "match"),
    [
        ("missing.safetensors:0.8", FileNotFoundError, r"lora\[0\].*missing\.safetensors"),
        ("{style}:nan", cli.ConfigError, r"lora\[0\].*scale is not a finite number"),
        ("{style}:0.5, {style}:1e999", cli.ConfigError, r"lora\[1\].*not a finite number"),
        ("{sdxl}", ValueError, r"sdxl\.safetensors is an SDXL LoRA.*use a LoRA trained on SD1\.5"),
    ],
)
def test_a_bad_entry_is_refused_before_any_work(root, tmp_path, field, error, match):
    session = load(root, f"lora=[{root / 'style.safetensors'}:0.8]", out=tmp_path)
    before, checkpoints = weights(session.pipe), dict(session.checkpoints)
    steps = []
    field = field.format(style=root / "style.safetensors", sdxl=root / "sdxl.safetensors")
    with pytest.raises(error, match=f"(?s){match}") as e:  # (?s): the layout check lists the keys that do not fit
        session.candidates(prompt="a cat", **SAMPLING, loras=field, progress=lambda *a, **k: steps.append(a))
    assert isinstance(e.value, cli.user_errors())  # shown in the page as a message, not as an internal error
    assert steps == [] and same(weights(session.pipe), before) and session.checkpoints == checkpoints
    with pytest.raises(error):
        session.animate(session.candidates(prompt="a cat", **SAMPLING)[0], Controls.paper(), frames=4, loras=field)
    assert not (tmp_path / "app").exists()  # no run folder either


def test_run_json_records_each_loras_file_hash_and_scale(root):
    session = load(root)
    style = root / "style.safetensors"
    (image,) = session.candidates(prompt="a cat", seed=1, **SAMPLING, loras=f"{style}:0.7")
    run = session.animate(image, Controls.paper(), frames=4, loras=f"{style}:0.7")
    record = json.loads(run.files["run"].read_text())["checkpoints"]
    sha = hashlib.sha256(style.read_bytes()).hexdigest()
    assert record["lora_0"] == {"ref": f"{style}", "path": f"{style}", "sha256": sha, "scale": 0.7}
    assert "lora_1" not in record and record["checkpoint"]["sha256"]

    longer = session.extend(run, frames=3, loras="")  # the continuation was made without it, and says so
    assert not any(k.startswith("lora_") for k in json.loads(longer.files["run"].read_text())["checkpoints"])
