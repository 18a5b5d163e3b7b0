"""Weights from a local path or the hub: which values are local, the offline first run (one message naming every
missing file, one connectivity check) and the pinned, verified default downloads. No network: the hub and the
connection are simulated with monkeypatching."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from animatezero import hub
from experiments import generate as gen
from models.readers import file_sha256
from tests.console import run_main


# ------------------------------------------------------------------------------------------------- local or hub
def test_local_paths_are_never_hub_references(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "checkpoints" / "sub").mkdir(parents=True)
    local = [
        "/abs/org/repo/file.safetensors",
        "./org/repo/file.safetensors",
        "../org/repo/file.safetensors",
        "~/org/repo/file.safetensors",
        "C:/models/x/file.safetensors",
        "models\\x\\file.safetensors",
        "model.safetensors",
        "dir/model.safetensors",  # two parts: never a hub file
        "checkpoints/sub/model.safetensors",  # first part exists here
    ]
    for ref in local:
        assert hub.hub_reference(ref) is None, ref
    assert hub.hub_reference("org/repo/file.ckpt@abc") == ("org/repo", "file.ckpt", "abc")
    assert hub.hub_reference("hf://checkpoints/sub/model.safetensors") == ("checkpoints/sub", "model.safetensors", None)
    with pytest.raises(ValueError, match="hf://org/repo"):
        hub.hub_reference("hf://only/two")


def test_missing_directory_and_unreadable_local_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(FileNotFoundError, match=r"^checkpoint=models/x/y.safetensors does not exist"):
        hub.resolve("models/x/y.safetensors")  # looks like org/repo/file, but models/ is here: local, not the hub
    with pytest.raises(IsADirectoryError, match="is a directory; pass the .safetensors/.ckpt file inside it"):
        hub.resolve(str(tmp_path / "models"), key="motion_module")
    f = tmp_path / "w.ckpt"
    f.write_bytes(b"x")
    real_open = open

    def refuse(path, *a, **k):
        if Path(path) == f:
            raise PermissionError(13, "Permission denied")
        return real_open(path, *a, **k)

    monkeypatch.setattr("builtins.open", refuse)
    with pytest.raises(PermissionError, match="cannot be read .*Permission denied"):
        hub.local_file(f, "checkpoint")


def test_every_local_problem_is_reported_at_once(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        hub.resolve_all({"checkpoint": str(tmp_path / "a.safetensors"), "motion_module": str(tmp_path / "b.ckpt")})
    assert "checkpoint=" in str(info.value) and "motion_module=" in str(info.value)


# ------------------------------------------------------------------------------------------------- offline
@pytest.fixture
def empty_hub(monkeypatch):
    """A hub cache with nothing in it; any real download attempt fails the test."""
    import huggingface_hub

    asked = []

    def fake_download(repo_id, filename, revision=None, local_files_only=False, **kwargs):
        asked.append((repo_id, filename, local_files_only))
        if local_files_only:
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        raise AssertionError("a download was attempted although the hub cannot be reached")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    return asked


def test_offline_names_every_missing_file_with_overrides(empty_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    refs = {"checkpoint": hub.DEFAULT_CHECKPOINT, "motion_module": hub.DEFAULT_MOTION_MODULE, "motion.lora": None}
    t = time.perf_counter()
    with pytest.raises(hub.DownloadError) as info:
        hub.resolve_all(refs)
    assert time.perf_counter() - t < 5  # a cache lookup per file, no network, no retries
    message = str(info.value)
    assert "HF_HUB_OFFLINE is set" in message and "2 weight files are not in the Hugging Face cache" in message
    assert f"checkpoint={hub.DEFAULT_CHECKPOINT}" in message and f"motion_module={hub.DEFAULT_MOTION_MODULE}" in message
    assert "checkpoint=/path/v1-5-pruned-emaonly.safetensors motion_module=/path/mm_sd_v15_v2.ckpt" in message
    assert [a[2] for a in empty_hub] == [True, True]


def test_unreachable_hub_is_checked_once(empty_hub, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_ENDPOINT"):
        monkeypatch.delenv(k, raising=False)
    attempts = []

    def no_network(address, timeout=None, **kwargs):
        attempts.append((address, timeout))
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(hub.DownloadError, match="huggingface.co:443 cannot be reached"):
        hub.resolve_all({"checkpoint": hub.DEFAULT_CHECKPOINT, "motion_module": hub.DEFAULT_MOTION_MODULE})
    assert attempts == [(("huggingface.co", 443), 3.0)]


def test_offline_message_from_the_cli_once_and_nothing_on_disk(empty_hub, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(gen.main, ["animatezero", "prompt=a cat, blinking"], monkeypatch, capsys)
    assert code == 2 and "Traceback" not in err
    assert err.count("not in the Hugging Face cache") == 1 and "not in the Hugging Face cache" not in out
    assert "checkpoint=/path/" in err and "motion_module=/path/" in err
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------- pinned downloads
def test_default_hub_files_are_pinned_and_verified(tmp_path, monkeypatch):
    import huggingface_hub

    from animatezero import hub

    fake = tmp_path / "downloaded.ckpt"
    fake.write_bytes(b"not the published file")
    seen = []

    def fake_download(repo_id, filename, revision=None, **kwargs):
        seen.append((repo_id, filename, revision))
        return str(fake)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    for ref in (hub.DEFAULT_CHECKPOINT, hub.DEFAULT_MOTION_MODULE):
        with pytest.raises(hub.DownloadError, match=f"expected {hub.PINS[ref].sha256}"):
            hub.resolve(ref, cache_dir=tmp_path)
    assert seen[0][2] == hub.PINS[hub.DEFAULT_CHECKPOINT].revision  # downloaded at the pinned commit
    assert all(len(pin.sha256) == 64 for pin in hub.PINS.values())
    good = hub.Pin(sha256=file_sha256(fake))
    monkeypatch.setitem(hub.PINS, "org/repo/file.ckpt", good)
    assert hub.resolve("org/repo/file.ckpt", cache_dir=tmp_path) == fake
