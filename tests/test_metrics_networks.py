"""The real evaluator architectures with random weights through the metric functions, and the offline paths of
``evaluation/extractors.py``. No test touches the network: caches point at empty temporary folders and every
download function is replaced by one that fails the test."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from evaluation import domain_sim, first_frame_fidelity, frame_consistency, style_dist, text_sim
from evaluation import extractors as ex
from evaluation.extractors import EvaluatorUnavailable
from evaluation.flow import pair_flows, warping_error_per_pair


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """TORCH_HOME / HF_HOME in an empty tmp folder, offline, and any download attempt is an error."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_download(*args, **kwargs):
        raise AssertionError(f"download attempted: {args} {kwargs}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    ex.clear_cache()
    yield tmp_path
    ex.clear_cache()


def smooth_video(frames=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.avg_pool2d(torch.rand(frames, 3, size + 4, size + 4, generator=g), 5, stride=1)


# ----------------------------------------------------------------------------------------------- random weights


def tiny_open_clip():
    """open_clip's own CLIP class (ViT image tower, causal text transformer) at a tiny width, random weights."""
    import open_clip

    torch.manual_seed(0)
    model = open_clip.model.CLIP(
        embed_dim=32,
        vision_cfg={"layers": 2, "width": 64, "head_width": 32, "patch_size": 8, "image_size": 32},
        text_cfg={"layers": 2, "width": 64, "heads": 2},
        quick_gelu=True,
    )
    return ex.OpenClipEncoder(model, open_clip.get_tokenizer("ViT-L-14"), image_size=32)


def test_open_clip_random_weights_through_clip_metrics():
    enc = tiny_open_clip()
    tokens = enc.tokenizer(["a photo of a cat"])
    assert tokens.shape == (1, 77) and tokens[0, 0] == 49406 and tokens[0, -1] == 0  # open_clip pads with 0
    video = smooth_video(frames=3, size=40)  # non-square crop path: 40 -> short side 32 -> centre crop
    values = [
        text_sim(video, "a photo of a cat", enc),
        domain_sim(video, video[:1], enc),
        frame_consistency(video, enc),
        frame_consistency(video, enc, mode="all_pairs", include_first_frame=False),
    ]
    assert all(math.isfinite(v) and -1 - 1e-6 <= v <= 1 + 1e-6 for v in values)
    assert domain_sim(video[:1], video[:1], enc) == pytest.approx(1.0, abs=1e-5)
    assert text_sim(video, "a photo of a cat", enc) == values[0]  # deterministic
    assert enc.encode_image(video).shape == (3, 32)


def test_raft_small_random_weights_through_warping_error():
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(0)
    model = raft_small(weights=None)
    flow = ex.RaftFlow(model, num_flow_updates=2)
    video = smooth_video(frames=2, size=132)[..., :130]  # 132 x 130: padded to 136 x 136 and cropped back
    forward, backward = pair_flows(video, flow)  # the two RAFT calls warping_error makes
    assert forward.shape == backward.shape == (1, 2, 132, 130) and torch.isfinite(forward).all()
    we = warping_error_per_pair(video, forward, backward)
    assert we.shape == (1,) and math.isfinite(we.item()) and we.item() >= 0
    with pytest.raises(ValueError, match="128"):
        flow(video[:1, :, :64, :64], video[1:, :, :64, :64])
    half = ex.RaftFlow(model, num_flow_updates=1, scale=0.5)
    with pytest.raises(ValueError, match="128"):  # 132 * 0.5 < 128
        half(video[:1], video[1:])


def test_vgg19_random_weights_through_style_dist():
    from torchvision.models.vgg import cfgs, make_layers

    features = make_layers(cfgs["E"])  # exactly torchvision vgg19().features, without building the classifier
    kinds = [type(m).__name__ for m in features]
    assert all(kinds[i] == "ReLU" and kinds[i - 1] == "Conv2d" for i in ex.VGG19_RELU_LAYERS)
    assert [features[i].out_channels for i in ex.VGG19_CONV_LAYERS] == [64, 128, 256, 512, 512]
    assert all(i == 0 or kinds[i - 1] == "MaxPool2d" for i in ex.VGG19_CONV_LAYERS)  # first conv of each block
    torch.manual_seed(0)
    vgg = ex.VGGStyleFeatures(features, size=32)
    video = smooth_video(frames=2, size=48)
    assert [f.shape[1] for f in vgg(video)] == [64, 128, 256, 512, 512]
    assert style_dist(video[:1], video[:1], vgg) == 0.0
    assert style_dist(video, video[:1], vgg) > 0
    conv = ex.VGGStyleFeatures(features, ex.VGG19_CONV_LAYERS, size=32)
    assert (conv(video)[0] < 0).any()  # pre-ReLU outputs survive (in-place ReLU disabled)


def test_lpips_random_trunk_with_bundled_heads():
    lp = ex.LpipsDistance(ex.make_lpips_alex())
    image = smooth_video(frames=1, size=64)
    assert first_frame_fidelity(image, image, lp)["lpips"] == 0.0
    assert first_frame_fidelity(torch.rand(1, 3, 64, 64), image, lp)["lpips"] > 0


# ----------------------------------------------------------------------------------------------- offline


def test_torchvision_networks_offline_raise_evaluator_unavailable(empty_caches):
    with pytest.raises(EvaluatorUnavailable) as err:
        ex.raft_flow()
    msg = str(err.value)
    assert "raft_large" in msg and "raft_large_C_T_V1-22a6c225.pth" in msg
    assert str(empty_caches / "torch" / "hub" / "checkpoints") in msg and "TORCH_HOME" in msg
    with pytest.raises(EvaluatorUnavailable, match="VGG-19"):
        ex.vgg19_style()
    with pytest.raises(EvaluatorUnavailable, match="alexnet-owt"):
        ex.lpips_alex()


def test_failed_download_raises_evaluator_unavailable(empty_caches, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls = []

    def failing_download(url, dst, hash_prefix=None, progress=True):
        calls.append(url)
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", failing_download)
    with pytest.raises(EvaluatorUnavailable, match="network is unreachable"):
        ex.raft_flow("raft_small", "C_T_V2")
    assert calls == ["https://download.pytorch.org/models/raft_small_C_T_V2-01064c6d.pth"]


def test_cached_torchvision_file_loads_offline_and_is_reused(empty_caches):
    from torchvision.models.optical_flow import raft_small

    folder = ex.torch_checkpoint_dir()
    folder.mkdir(parents=True)
    torch.save(raft_small(weights=None).state_dict(), folder / "raft_small_C_T_V2-01064c6d.pth")
    flow = ex.raft_flow("raft_small", "C_T_V2", num_flow_updates=1)
    assert flow is ex.raft_flow("raft_small", "C_T_V2", num_flow_updates=1)
    assert flow.meta["weights_file"] == "raft_small_C_T_V2-01064c6d.pth"


def test_clip_offline_raises_and_never_downloads(empty_caches, monkeypatch):
    import open_clip

    def no_download(*args, **kwargs):
        raise AssertionError("download attempted")

    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", no_download)
    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", no_download)
    with pytest.raises(EvaluatorUnavailable) as err:
        ex.clip_encoder()
    msg = str(err.value)
    assert "ViT-L-14" in msg and "vit_large_patch14_clip_224.openai" in msg
    assert str(empty_caches / "hf" / "hub") in msg and "HF_HOME" in msg

    monkeypatch.delenv("HF_HUB_OFFLINE")  # online, but the download fails
    monkeypatch.setattr(
        open_clip.pretrained, "download_pretrained", lambda *a, **k: (_ for _ in ()).throw(OSError("no route"))
    )
    with pytest.raises(EvaluatorUnavailable, match="no route"):
        ex.clip_encoder()


def test_clip_loader_finds_hf_cache_and_applies_quick_gelu(empty_caches, monkeypatch):
    """The cached-file path resolves offline, and the 'openai' tag's QuickGELU reaches open_clip."""
    import open_clip

    snapshot = empty_caches / "hf" / "hub" / "models--timm--vit_large_patch14_clip_224.openai" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_model.safetensors").write_bytes(b"stub")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("abc")
    seen = {}

    def fake_create_model(name, pretrained=None, force_quick_gelu=False, device="cpu"):
        seen.update(name=name, pretrained=pretrained, quick_gelu=force_quick_gelu)
        return tiny_open_clip().model

    monkeypatch.setattr(open_clip, "create_model", fake_create_model)
    enc = ex.clip_encoder()
    assert seen == {"name": "ViT-L-14", "pretrained": str(snapshot / "open_clip_model.safetensors"), "quick_gelu": True}
    assert enc.meta["pretrained"] == "openai" and enc is ex.clip_encoder()


class ConstantFlowNet(torch.nn.Module):
    """Stands in for RAFT: records its inputs and returns a (1, 2) px flow at whatever resolution it is given."""

    def forward(self, a, b, num_flow_updates=12):
        self.inputs = (a, b)
        flow = torch.ones(a.shape[0], 2, *a.shape[-2:])
        flow[:, 1] = 2.0
        return [flow * 0.5, flow]  # RAFT returns every refinement; the last one is used


def test_raft_wrapper_normalises_pads_and_rescales_flow():
    net = ConstantFlowNet()
    video = torch.rand(2, 3, 260, 300)
    half = ex.RaftFlow(net, scale=0.5)(video[:1], video[1:])
    assert half.shape == (1, 2, 260, 300)
    assert torch.allclose(half[:, 0], torch.full((1, 260, 300), 2.0)) and torch.allclose(
        half[:, 1], torch.full((1, 260, 300), 4.0)
    )
    assert tuple(net.inputs[0].shape[-2:]) == (136, 152)  # 130 x 150 padded to multiples of 8
    full = ex.RaftFlow(net)(video[:1], video[1:])
    assert torch.equal(full[:, 1], torch.full((1, 260, 300), 2.0))
    assert net.inputs[0].min() >= -1 and net.inputs[0].max() <= 1 and net.inputs[0].min() < -0.9  # [0,1] -> [-1,1]
