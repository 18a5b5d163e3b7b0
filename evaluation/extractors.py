"""The real evaluator networks: thin wrappers that fit ``protocols.py``, and lazy, cached loaders for them.

Wrappers (:class:`OpenClipEncoder`, :class:`RaftFlow`, :class:`VGGStyleFeatures`, :class:`LpipsDistance`) take an
already-built network, so tests can hand them random-weight architectures. Loaders (:func:`clip_encoder`,
:func:`raft_flow`, :func:`vgg19_style`, :func:`lpips_alex`) are the only code in ``evaluation/`` that reads weight
files or downloads them, and only when first called (never at import). Weights live in the standard caches
(docs/metrics.md §4): torchvision files in ``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch``), open_clip
files in the Hugging Face cache (``$HF_HUB_CACHE``, default ``$HF_HOME/hub``, default ``~/.cache/huggingface``).

Downloading is refused when ``HF_HUB_OFFLINE`` or ``ANIMATEZERO_EVAL_OFFLINE`` is set to 1 (or
``allow_download=False``). A missing file then, or a failed download, raises :class:`EvaluatorUnavailable`,
whose message names the network, the file and cache folder, and how to fetch it.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from evaluation.video import center_crop, resize_short_side, resize_to

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

VGG19_RELU_LAYERS = (1, 6, 11, 20, 29)  # relu1_1 ... relu5_1 in torchvision's vgg19().features
VGG19_CONV_LAYERS = (0, 5, 10, 19, 28)  # conv1_1 ... conv5_1 (pre-ReLU)
RAFT_MIN_SIZE = 128  # torchvision RAFT's correlation pyramid needs H, W >= 128

OFFLINE_ENV_VARS = ("HF_HUB_OFFLINE", "ANIMATEZERO_EVAL_OFFLINE")


class EvaluatorUnavailable(RuntimeError):
    """An evaluator network's weights are neither cached nor downloadable here."""


# ----------------------------------------------------------------------------------------------- wrappers


def _normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


class OpenClipEncoder:
    """:class:`~evaluation.protocols.ImageTextEncoder` over an open_clip ``CLIP`` model and its tokenizer.

    Image preprocessing is done on tensors (docs/metrics.md §3.1): bicubic antialiased resize of the short side to
    ``image_size``, centre crop, CLIP mean/std. Embeddings come back as float32 on the CPU.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Callable[[list[str]], Tensor],
        *,
        image_size: int = 224,
        mean: Sequence[float] = OPENAI_CLIP_MEAN,
        std: Sequence[float] = OPENAI_CLIP_STD,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        batch_size: int = 16,
        meta: dict | None = None,
    ):
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.tokenizer = tokenizer
        self.image_size, self.mean, self.std = image_size, mean, std
        self.autocast = precision == "fp16" and self.device.type == "cuda"
        self.batch_size = batch_size
        self.meta = meta or {"name": f"open_clip {type(model).__name__}", "weights": "injected"}

    def preprocess(self, images: Tensor) -> Tensor:
        x = resize_short_side(images.float(), self.image_size, mode="bicubic")
        return _normalize(center_crop(x, self.image_size), self.mean, self.std)

    @torch.no_grad()
    def encode_image(self, images: Tensor) -> Tensor:
        out = []
        for chunk in images.split(self.batch_size):
            x = self.preprocess(chunk.to(self.device))
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.autocast):
                out.append(self.model.encode_image(x).float().cpu())
        return torch.cat(out)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> Tensor:
        tokens = self.tokenizer(list(texts)).to(self.device)  # [N, 77]
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.autocast):
            return self.model.encode_text(tokens).float().cpu()


class RaftFlow:
    """:class:`~evaluation.protocols.FlowEstimator` over a torchvision RAFT model.

    Inputs in [0, 1] are mapped to [-1, 1] (torchvision's ``OpticalFlow`` preset), optionally resized by
    ``scale`` (the flow is then resized back and its vectors rescaled to input pixels), replicate-padded
    symmetrically to a multiple of 8, run ``batch_size`` pairs at a time, and cropped back. The last of the
    ``num_flow_updates`` refinements is returned, on the input's device.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        num_flow_updates: int = 12,
        scale: float = 1.0,
        batch_size: int = 4,
        device: str | torch.device = "cpu",
        meta: dict | None = None,
    ):
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.num_flow_updates, self.scale, self.batch_size = num_flow_updates, scale, batch_size
        self.meta = meta or {"name": f"torchvision {type(model).__name__}", "weights": "injected"}

    @torch.no_grad()
    def __call__(self, image1: Tensor, image2: Tensor) -> Tensor:
        out_device = image1.device
        h, w = image1.shape[-2:]
        a, b = image1.float().to(self.device), image2.float().to(self.device)
        if self.scale != 1.0:
            size = (round(h * self.scale), round(w * self.scale))
            a, b = resize_to(a, size), resize_to(b, size)
        sh, sw = a.shape[-2:]
        if min(sh, sw) < RAFT_MIN_SIZE:
            raise ValueError(f"RAFT needs frames of at least {RAFT_MIN_SIZE} px (after scale), got {sh}x{sw}")
        ph, pw = -sh % 8, -sw % 8
        pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
        a = F.pad(a * 2 - 1, pad, mode="replicate")
        b = F.pad(b * 2 - 1, pad, mode="replicate")
        flows = [
            self.model(a[i : i + self.batch_size], b[i : i + self.batch_size], num_flow_updates=self.num_flow_updates)[
                -1
            ]
            for i in range(0, a.shape[0], self.batch_size)
        ]
        flow = torch.cat(flows)[..., pad[2] : pad[2] + sh, pad[0] : pad[0] + sw]  # [B, 2, sh, sw]
        if (sh, sw) != (h, w):
            flow = F.interpolate(flow, size=(h, w), mode="bilinear", align_corners=False)
            flow = flow * torch.tensor([w / sw, h / sh], device=flow.device).view(1, 2, 1, 1)
        return flow.float().to(out_device)


class VGGStyleFeatures:
    """:class:`~evaluation.protocols.FeatureExtractor`: activations of ``features`` (a VGG ``features``
    Sequential) at ``layers``, after an antialiased resize of the short side to ``size`` (None: no resize) and
    ImageNet normalisation. In-place ReLUs are made out-of-place so pre-ReLU (conv) outputs survive."""

    def __init__(
        self,
        features: nn.Sequential,
        layers: Sequence[int] = VGG19_RELU_LAYERS,
        *,
        size: int | None = 256,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
        meta: dict | None = None,
    ):
        self.device = torch.device(device)
        self.layers = tuple(layers)
        self.features = features[: max(self.layers) + 1].eval().to(self.device)
        for m in self.features.modules():
            if isinstance(m, nn.ReLU):
                m.inplace = False
        self.size, self.batch_size = size, batch_size
        self.meta = meta or {"name": "vgg features", "layers": list(self.layers), "size": size, "weights": "injected"}

    @torch.no_grad()
    def __call__(self, images: Tensor) -> list[Tensor]:
        per_layer: list[list[Tensor]] = [[] for _ in self.layers]
        for chunk in images.split(self.batch_size):
            x = chunk.float().to(self.device)
            if self.size is not None:
                x = resize_short_side(x, self.size)
            x = _normalize(x, IMAGENET_MEAN, IMAGENET_STD)
            for i, module in enumerate(self.features):
                x = module(x)
                if i in self.layers:
                    per_layer[self.layers.index(i)].append(x)
        return [torch.cat(chunks) for chunks in per_layer]


class LpipsDistance:
    """:class:`~evaluation.protocols.PerceptualDistance` over an ``lpips.LPIPS`` module; [0, 1] inputs."""

    def __init__(self, net: nn.Module, *, device: str | torch.device = "cpu", meta: dict | None = None):
        self.device = torch.device(device)
        self.net = net.eval().to(self.device)
        self.meta = meta or {"name": "lpips", "weights": "injected"}

    @torch.no_grad()
    def __call__(self, a: Tensor, b: Tensor) -> Tensor:
        d = self.net(a.float().to(self.device), b.float().to(self.device), normalize=True)  # [N, 1, 1, 1]
        return d.flatten().float().cpu()


# ----------------------------------------------------------------------------------------------- caches


def offline_mode() -> bool:
    """True when an offline variable (``HF_HUB_OFFLINE``, ``ANIMATEZERO_EVAL_OFFLINE``) is set to 1/true/yes."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in OFFLINE_ENV_VARS)


def torch_checkpoint_dir() -> Path:
    """Where torchvision keeps downloaded weights: ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


def _download_allowed(allow_download: bool | None) -> bool:
    return (not offline_mode()) if allow_download is None else allow_download


def _unavailable(network: str, file: str, folder: Path | str, fetch: str, reason: str) -> EvaluatorUnavailable:
    return EvaluatorUnavailable(
        f"Evaluator network {network} is unavailable: {reason}.\n"
        f"  weights file: {file}\n"
        f"  looked in:    {folder}\n"
        f"  to fetch it:  {fetch}\n"
        f"  Or copy the file there from a machine that has it, point the cache elsewhere (TORCH_HOME for "
        f"torchvision, HF_HOME / HF_HUB_CACHE for open_clip), or pass weights_path=... . Unset HF_HUB_OFFLINE / "
        f"ANIMATEZERO_EVAL_OFFLINE to allow the download."
    )


def load_torchvision_weights(
    network: str, weights: Any, *, weights_path: str | os.PathLike | None = None, allow_download: bool | None = None
) -> tuple[dict[str, Tensor], dict]:
    """State dict of a torchvision ``WeightsEnum`` member, read from ``weights_path`` or the torch hub cache,
    downloading into the cache only when allowed. Returns ``(state_dict, meta)``."""
    url = weights.url
    filename = os.path.basename(url)
    path = Path(weights_path) if weights_path is not None else torch_checkpoint_dir() / filename
    fetch = (
        f"run once with network access: python -c \"import torch; torch.hub.load_state_dict_from_url('{url}')\""
        f" (downloads into {torch_checkpoint_dir()})"
    )
    if not path.is_file():
        if weights_path is not None:
            raise _unavailable(network, filename, path.parent, fetch, f"weights_path {path} does not exist")
        if not _download_allowed(allow_download):
            raise _unavailable(network, filename, path.parent, fetch, "not in the cache and downloads are disabled")
        path.parent.mkdir(parents=True, exist_ok=True)
        match = torch.hub.HASH_REGEX.search(filename)
        try:
            torch.hub.download_url_to_file(url, str(path), hash_prefix=match.group(1) if match else None)
        except Exception as e:  # noqa: BLE001 - any network/IO failure means "unavailable"
            raise _unavailable(network, filename, path.parent, fetch, f"download from {url} failed ({e})") from e
    state = torch.load(path, map_location="cpu", weights_only=True)
    meta = {"weights": str(path), "weights_file": filename, "url": url}
    if weights_path is not None:  # a user-supplied file: its name carries no verified hash prefix
        meta["sha256"] = file_sha256(path)
    return state, meta


def _sha256_from_hf_blob(path: str) -> str | None:
    """HF caches store LFS files as ``blobs/<sha256>``; read the hash from the resolved name when it is one."""
    name = os.path.basename(os.path.realpath(path))
    return name if len(name) == 64 and all(c in "0123456789abcdef" for c in name) else None


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file (streamed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


_CACHE: dict[tuple, Any] = {}


def _cached(key: tuple, build: Callable[[], Any]) -> Any:
    if key not in _CACHE:
        _CACHE[key] = build()
    return _CACHE[key]


def clear_cache() -> None:
    """Forget every loaded network (frees their memory once no one else holds them)."""
    _CACHE.clear()


# ----------------------------------------------------------------------------------------------- loaders


def _open_clip_cached_file(model_name: str, pretrained: str, cache_dir: Path) -> str | None:
    import open_clip
    from huggingface_hub import try_to_load_from_cache
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if cfg.get("hf_hub"):
        repo_id, filename = os.path.split(cfg["hf_hub"])
        names = [filename] if filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
        if filename.endswith(".bin"):
            names.insert(0, filename[: -len(".bin")] + ".safetensors")
        for name in names:
            found = try_to_load_from_cache(repo_id, name, cache_dir=str(cache_dir))
            if isinstance(found, str):
                return found
    if cfg.get("url"):
        legacy = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(cfg["url"])
        if legacy.is_file():
            return str(legacy)
    return None


def clip_encoder(
    model_name: str = "ViT-L-14",
    pretrained: str = "openai",
    *,
    device: str = "cpu",
    precision: str = "fp32",
    weights_path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    allow_download: bool | None = None,
) -> OpenClipEncoder:
    """open_clip ``model_name`` with the ``pretrained`` tag's weights (default OpenAI ViT-L/14), cached.

    The tag's QuickGELU setting is applied (open_clip 3.x does not do this itself for the plain ``ViT-L-14``
    config with the ``openai`` tag; without it the OpenAI weights run with the wrong activation).
    """
    key = ("clip", model_name, pretrained, device, precision, str(weights_path), str(cache_dir), allow_download)
    return _cached(
        key,
        lambda: _build_clip(model_name, pretrained, device, precision, weights_path, cache_dir, allow_download),
    )


def _build_clip(model_name, pretrained, device, precision, weights_path, cache_dir, allow_download) -> OpenClipEncoder:
    import open_clip

    network = f"CLIP {model_name} ({pretrained}, open_clip)"
    cache = Path(cache_dir) if cache_dir is not None else hf_cache_dir()
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained) or {}
    target = cfg.get("hf_hub") or cfg.get("url") or pretrained
    fetch = (
        f'run once with network access: python -c "import open_clip; '
        f"open_clip.create_model('{model_name}', pretrained='{pretrained}', cache_dir='{cache}')\""
    )
    if weights_path is not None:
        path = str(weights_path)
        if not os.path.isfile(path):
            raise _unavailable(network, path, os.path.dirname(path) or ".", fetch, "weights_path does not exist")
    elif os.path.isfile(pretrained):
        path = pretrained
    else:
        if not cfg:
            raise ValueError(f"unknown open_clip tag {pretrained!r} for {model_name}")
        path = _open_clip_cached_file(model_name, pretrained, cache)
        if path is None:
            if not _download_allowed(allow_download):
                raise _unavailable(network, target, cache, fetch, "not in the cache and downloads are disabled")
            try:
                path = open_clip.pretrained.download_pretrained(cfg, cache_dir=str(cache))
            except Exception as e:  # noqa: BLE001
                raise _unavailable(network, target, cache, fetch, f"download failed ({e})") from e
            if not path:
                raise _unavailable(network, target, cache, fetch, "open_clip returned no file")
    model = open_clip.create_model(
        model_name, pretrained=path, force_quick_gelu=bool(cfg.get("quick_gelu", False)), device="cpu"
    )
    image_size = model.visual.image_size
    image_size = image_size[0] if isinstance(image_size, tuple | list) else image_size
    meta = {
        "name": f"open_clip {model_name}",
        "pretrained": pretrained,
        "weights": path,
        "sha256": _sha256_from_hf_blob(path) or (file_sha256(path) if weights_path is not None else None),
        "image_size": image_size,
        "precision": precision,
    }
    return OpenClipEncoder(
        model,
        open_clip.get_tokenizer(model_name),
        image_size=image_size,
        mean=cfg.get("mean", OPENAI_CLIP_MEAN),
        std=cfg.get("std", OPENAI_CLIP_STD),
        device=device,
        precision=precision,
        meta=meta,
    )


def raft_flow(
    model: str = "raft_large",
    weights: str = "C_T_V1",
    *,
    device: str = "cpu",
    num_flow_updates: int = 12,
    scale: float = 1.0,
    batch_size: int = 4,
    weights_path: str | os.PathLike | None = None,
    allow_download: bool | None = None,
) -> RaftFlow:
    """torchvision RAFT (default ``raft_large`` with ``C_T_V1``, the port of the original raft-things), cached."""
    key = ("raft", model, weights, device, num_flow_updates, scale, batch_size, str(weights_path), allow_download)

    def build() -> RaftFlow:
        from torchvision.models import optical_flow

        enum = {"raft_large": optical_flow.Raft_Large_Weights, "raft_small": optical_flow.Raft_Small_Weights}[model]
        state, meta = load_torchvision_weights(
            f"{model} ({weights})", enum[weights], weights_path=weights_path, allow_download=allow_download
        )
        net = getattr(optical_flow, model)(weights=None)
        net.load_state_dict(state)
        meta = {
            "name": f"torchvision {model}",
            "weights_enum": weights,
            "num_flow_updates": num_flow_updates,
            "scale": scale,
            **meta,
        }
        return RaftFlow(
            net, num_flow_updates=num_flow_updates, scale=scale, batch_size=batch_size, device=device, meta=meta
        )

    return _cached(key, build)


def vgg19_style(
    layers: str = "relu",
    *,
    size: int | None = 256,
    device: str = "cpu",
    weights_path: str | os.PathLike | None = None,
    allow_download: bool | None = None,
) -> VGGStyleFeatures:
    """torchvision VGG-19 (IMAGENET1K_V1) features at relu{1..5}_1 (``layers="relu"``) or conv{1..5}_1, cached."""
    key = ("vgg19", layers, size, device, str(weights_path), allow_download)

    def build() -> VGGStyleFeatures:
        from torchvision.models import VGG19_Weights, vgg19

        state, meta = load_torchvision_weights(
            "VGG-19 (IMAGENET1K_V1)",
            VGG19_Weights.IMAGENET1K_V1,
            weights_path=weights_path,
            allow_download=allow_download,
        )
        net = vgg19(weights=None)
        net.load_state_dict(state)
        idx = {"relu": VGG19_RELU_LAYERS, "conv": VGG19_CONV_LAYERS}[layers]
        meta = {"name": "torchvision vgg19", "layers": list(idx), "size": size, **meta}
        return VGGStyleFeatures(net.features, idx, size=size, device=device, meta=meta)

    return _cached(key, build)


def lpips_alex(
    *, device: str = "cpu", weights_path: str | os.PathLike | None = None, allow_download: bool | None = None
) -> LpipsDistance:
    """LPIPS v0.1 with the AlexNet trunk: linear heads from the ``lpips`` wheel, trunk weights
    (``alexnet-owt-7be5be79.pth``) through the same cache/offline logic as the other torchvision files."""
    key = ("lpips", device, str(weights_path), allow_download)

    def build() -> LpipsDistance:
        from torchvision.models import AlexNet_Weights, alexnet

        state, meta = load_torchvision_weights(
            "LPIPS AlexNet trunk (IMAGENET1K_V1)",
            AlexNet_Weights.IMAGENET1K_V1,
            weights_path=weights_path,
            allow_download=allow_download,
        )
        trunk = alexnet(weights=None)
        trunk.load_state_dict(state)
        net = make_lpips_alex()
        for i in range(1, net.net.N_slices + 1):
            for name, module in getattr(net.net, f"slice{i}").named_children():
                module.load_state_dict(trunk.features[int(name)].state_dict())
        return LpipsDistance(net, device=device, meta={"name": "lpips alex v0.1", **meta})

    return _cached(key, build)


def make_lpips_alex() -> nn.Module:
    """``lpips.LPIPS(net="alex")`` with its bundled linear heads and a random (not downloaded) AlexNet trunk."""
    import lpips

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's deprecation warnings for lpips' `pretrained=` call
        return lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
