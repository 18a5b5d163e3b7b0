"""How the networks run: where they live (on the device, or in CPU memory with ``offload``), the UNet's forward
(optionally ``torch.compile``d, see :mod:`models.compile`) and the CUDA-graph step marking a compiled forward needs.

A sampler calls the runner like a noise predictor, ``runner(x, t, context) -> eps``; everything about *how* that call
runs is kept here, out of the samplers and out of the method.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from models.compile import compile_module, compile_options, uses_cuda_graphs


class UNetRunner:
    """Runs ``unet`` (with ``motion`` for 5-d video latents ``[b, c, f, h, w]``) on ``device``.

    ``offload``: the networks wait in CPU memory and :meth:`using` moves them to ``device`` while they run.
    ``compile``: ``False``, ``True``, a ``torch.compile`` mode or a dict of options (:func:`models.compile.
    compile_options`); compiled code is cached in ``cache_dir``. ``oom_advice`` is appended to a CUDA out-of-memory
    error raised inside :meth:`using` (the caller knows which of its options bound memory).
    """

    def __init__(
        self,
        unet: nn.Module,
        motion: nn.Module | None = None,
        *,
        device: str | torch.device = "cpu",
        offload: bool = False,
        compile: bool | str | dict = False,
        cache_dir: str | os.PathLike | None = None,
        oom_advice: str = "",
    ):
        options = compile_options(compile)
        self.cuda_graphs = uses_cuda_graphs(options)
        if offload and self.cuda_graphs:
            raise ValueError(
                f"compile={compile!r} replays CUDA graphs, which need the weights at fixed addresses, but offload=True "
                "moves them at every call: use compile=True (no CUDA graphs) or offload=False"
            )
        self.unet, self.motion = unet, motion
        self.device, self.offload, self.oom_advice = torch.device(device), offload, oom_advice
        self.forward = unet if options is None else compile_module(unet, options, cache_dir)
        self._timesteps: dict[tuple[int, torch.device], Tensor] = {}

    @property
    def home(self) -> torch.device:
        """Where the networks wait between calls: CPU memory with ``offload``, else the device."""
        return torch.device("cpu") if self.offload else self.device

    def timestep(self, t: int, device: torch.device) -> Tensor:
        """Timestep ``t`` as a 0-d tensor on ``device``, made once: a Python int would be a constant to a compiled UNet
        (re-traced at every step), and a fresh host-to-device copy per call would synchronise with the GPU."""
        key = (t, device)
        if key not in self._timesteps:
            self._timesteps[key] = torch.tensor(t, device=device)
        return self._timesteps[key]

    def __call__(self, x: Tensor, t: int, context: Tensor) -> Tensor:
        """Predicted noise for ``x`` (``[b, 4, h, w]`` image or ``[b, 4, f, h, w]`` video latents) at timestep ``t``."""
        motion = self.motion if x.ndim == 5 else None
        if self.cuda_graphs:
            # each UNet call is a new CUDA-graph step: the previous call's outputs have been used (the noise
            # prediction) or copied by whoever keeps them
            torch.compiler.cudagraph_mark_step_begin()
        return self.forward(x, self.timestep(t, x.device), context, motion=motion)

    @contextmanager
    def using(self, *modules: nn.Module | None) -> Iterator[None]:
        """Run with ``modules`` on the device: a no-op unless ``offload``, then they go back to CPU memory after. A CUDA
        out-of-memory error is re-raised with ``oom_advice``."""
        modules = [m for m in modules if m is not None]
        if self.offload:
            for m in modules:
                m.to(self.device)
        try:
            yield
        except torch.cuda.OutOfMemoryError as e:
            if not self.oom_advice:
                raise
            raise torch.cuda.OutOfMemoryError(f"{e}\n{self.oom_advice}") from e
        finally:
            if self.offload:
                for m in modules:
                    m.to("cpu")
