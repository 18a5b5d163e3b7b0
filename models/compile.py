"""``torch.compile`` for the networks, set up so that compiling pays once.

Three things make the difference between a compile that pays once and one that silently does not:

- **einops as graph leaves.** With torch >= 2.8 einops lets TorchDynamo trace into its pattern parser, at every call
  site, every time a graph is traced (measured on this project's CPU: 0.22 s per ``rearrange`` call, about 50x a plain
  ``view``/``transpose``). Registering the einops functions with ``torch._dynamo.allow_in_graph`` keeps each call one
  node; AOTAutograd and Inductor still see the underlying reshapes and permutes.
- **Static shapes, tensor timesteps.** ``dynamic=False``: every distinct input shape (image vs video, frame count,
  size) is its own graph. Callers pass the timestep as a tensor: a Python int is a constant to Dynamo and would trigger
  a recompilation at every sampling step (and, past ``torch._dynamo.config.recompile_limit``, a silent fallback to
  eager).
- **A persistent cache.** Inductor's FX-graph and AOTAutograd caches live in ``TORCHINDUCTOR_CACHE_DIR`` (by default a
  per-user folder under /tmp, lost at reboot and not shared between cluster nodes). :func:`compile_module` points it
  to a folder the caller chooses, unless the user has set the variable, so later processes reuse the compiled code.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_options(compile: bool | str | Mapping[str, Any]) -> dict[str, Any] | None:
    """Normalise a ``compile`` setting into ``torch.compile`` keyword arguments (None: do not compile).

    ``False`` -> None; ``True`` -> the default mode; a mode name (``"reduce-overhead"`` adds CUDA graphs,
    ``"max-autotune"`` also searches kernels); a mapping -> passed through (e.g. ``{"backend": "aot_eager"}``).
    """
    if compile is False or compile is None:
        return None
    if compile is True:
        return {}
    if isinstance(compile, str):
        if compile not in MODES:
            raise ValueError(f"unknown compile mode {compile!r}; expected true/false or one of {', '.join(MODES)}")
        return {"mode": compile}
    if isinstance(compile, Mapping):
        return dict(compile)
    raise TypeError(f"compile must be a bool, a mode name or a dict of torch.compile options, got {compile!r}")


def uses_cuda_graphs(options: Mapping[str, Any] | None) -> bool:
    """Whether these ``torch.compile`` options replay CUDA graphs (which need tensors at fixed addresses)."""
    if options is None:
        return False
    extra = options.get("options") or {}
    return options.get("mode") in ("reduce-overhead", "max-autotune") or bool(extra.get("triton.cudagraphs"))


def use_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    """Point Inductor's on-disk caches at ``cache_dir`` unless the user set ``TORCHINDUCTOR_CACHE_DIR`` to a folder of
    their own (their choice wins); return the folder in use.

    Importing ``torch._dynamo`` writes PyTorch's default (``/tmp/torchinductor_<user>``) into the variable, so a value
    equal to that default counts as unset.
    """
    from torch._inductor.runtime.cache_dir_utils import cache_dir as inductor_cache_dir
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if cache_dir is not None and (not current or os.path.abspath(current) == os.path.abspath(default_cache_dir())):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(Path(cache_dir).expanduser().resolve())
    return Path(inductor_cache_dir())


def einops_as_leaves() -> None:
    """Make einops' functions single graph nodes for TorchDynamo (see the module docstring). Idempotent."""
    import einops

    for fn in (einops.rearrange, einops.repeat, einops.reduce):
        torch._dynamo.allow_in_graph(fn)


def compile_module(
    module: nn.Module, options: Mapping[str, Any] | None = None, cache_dir: str | os.PathLike | None = None
) -> nn.Module:
    """``torch.compile(module, dynamic=False, **options)`` with einops as leaves and the cache in ``cache_dir``."""
    einops_as_leaves()
    use_cache_dir(cache_dir)
    return torch.compile(module, **{"dynamic": False, **(options or {})})
