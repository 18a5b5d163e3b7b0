"""The training loop: a resumable, seeded stage (:class:`Stage`), its learning-rate schedule, a step's batch split
into parts run in threads of their own (:class:`SplitBatch`), and the EMA of the exported weights."""

from __future__ import annotations

import copy
import json
import math
import os
import random
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from experiments.train_toyworld.recipe import DEFAULT_LR, EMA_DECAY


class Stage:
    """One resumable training stage: modules, optimizer, step counter and RNG, saved atomically to ``<out>/<name>.pt``."""

    def __init__(self, name: str, out: Path, modules: dict[str, nn.Module], params, lr: float, seed: int):
        self.name, self.path = name, out / f"{name}.pt"
        self.modules = modules
        self.opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
        self.step, self.seconds = 0, 0.0
        self.runs: list[dict] = []  # one entry per (re)start: {"start", "planned", "threads", ...}, for the manifest
        self.schedule_start = 0  # the step the learning-rate schedule counts from (see run_stage's ``restart``)
        self.rng = random.Random(seed)
        torch.manual_seed(seed)
        if self.path.exists():
            state = torch.load(self.path, map_location="cpu", weights_only=False)
            for k, m in modules.items():
                m.load_state_dict(state["modules"][k])
            self.opt.load_state_dict(state["opt"])
            self.step, self.seconds = state["step"], state["seconds"]
            self.runs = state.get("runs", [])
            self.schedule_start = state.get("schedule_start", 0)
            self.rng.setstate(state["rng"])
            torch.set_rng_state(state["torch_rng"])
            print(f"[{name}] resumed at step {self.step} ({self.seconds / 60:.1f} min so far)")

    def save(self) -> None:
        state = {
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "opt": self.opt.state_dict(),
            "step": self.step,
            "seconds": self.seconds,
            "runs": self.runs,
            "schedule_start": self.schedule_start,
            "rng": self.rng.getstate(),
            "torch_rng": torch.get_rng_state(),
        }
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)

    def done_marker(self) -> Path:
        return self.path.with_suffix(".done")


def lr_at(step: int, total: int, base: float, warmup: int = 50) -> float:
    """Linear warm-up, then cosine decay to 10%."""
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))


class SplitBatch:
    """Run a step's batch as ``parts`` parts, each in a thread of its own with one intra-op thread, and add up their
    gradients in a fixed order. The toy networks' operations are too small for intra-op threads to pay: on the 2-core
    CPU a motion-stage step of 2 clips takes 302 ms with 2 intra-op threads and 252 ms as two one-clip parts
    (docs/toyworld.md §2). Each part draws from its own ``random.Random`` and
    ``torch.Generator``, seeded from the stage's RNG, so a seed still fixes the run.

    ``loss_fn(rng, gen, n)`` returns ``(loss, extra)``: the mean loss over ``n`` samples drawn from ``rng`` and
    ``gen``. The step's loss is the parts' mean weighted by their sizes, and so are the gradients."""

    def __init__(self, loss_fn, batch: int, parts: int, params: list[Tensor]):
        from concurrent.futures import ThreadPoolExecutor

        self.loss_fn, self.batch, self.params = loss_fn, batch, params
        self.sizes = [batch // parts + (i < batch % parts) for i in range(min(parts, batch))]
        self.pool = ThreadPoolExecutor(len(self.sizes)) if len(self.sizes) > 1 else None
        self.parts = len(self.sizes) if self.pool is not None else 1  # what the manifest records

    def _part(self, seed_size: tuple[int, int]) -> tuple[Tensor, tuple[Tensor, ...]]:
        seed, n = seed_size
        loss, _ = self.loss_fn(random.Random(seed), torch.Generator().manual_seed(seed), n)
        loss = loss * (n / self.batch)
        return loss.detach(), torch.autograd.grad(loss, self.params)

    def __call__(self, rng: random.Random) -> tuple[Tensor, dict]:
        """One step's loss, with every parameter's ``.grad`` set."""
        if self.pool is None:
            loss, extra = self.loss_fn(rng, None, self.batch)
            loss.backward()
            return loss, extra
        seeds = [rng.randrange(2**62) for _ in self.sizes]
        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, threads // len(self.sizes)))
        try:
            parts = list(self.pool.map(self._part, zip(seeds, self.sizes)))
        finally:
            torch.set_num_threads(threads)
        for p, *grads in zip(self.params, *(g for _, g in parts)):
            p.grad = torch.stack(grads).sum(0)
        return torch.stack([loss for loss, _ in parts]).sum(), {}

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def run_stage(
    stage: Stage,
    total: int,
    base_lr: float,
    loss_fn,
    save_every: int,
    log,
    ema=None,
    restart: bool = False,
    note=None,
    split: tuple[int, int] | None = None,
) -> None:
    """Train ``stage`` up to ``total`` steps with :func:`lr_at`'s schedule. The schedule spans the stage from step 0,
    so a finished stage continued to a larger ``total`` picks it up part-way; with ``restart`` such a continuation
    (and only a continuation: the stage's done marker says it finished at the current step) starts a schedule of its
    own instead, warm-up and cosine over the new steps. ``note``: extra fields for this run's manifest entry.

    ``loss_fn(rng)`` returns ``(loss, extra)``; with ``split = (batch, parts)`` it is ``loss_fn(rng, gen, n)`` instead,
    run by :class:`SplitBatch`."""
    from tqdm import tqdm

    for m in stage.modules.values():
        m.train()
    params = [p for g in stage.opt.param_groups for p in g["params"]]
    step_fn = SplitBatch(loss_fn, *split, params) if split else None
    marker = stage.done_marker()
    if restart and marker.exists() and json.loads(marker.read_text())["steps"] == stage.step < total:
        stage.schedule_start = stage.step
    if stage.step < total:  # a resumed stage's earlier runs stop where this one starts
        run = {"start": stage.step, "planned": total, "threads": torch.get_num_threads()}
        if step_fn is not None and step_fn.parts > 1:
            run["parts"] = step_fn.parts
        if stage.schedule_start or base_lr != DEFAULT_LR.get(stage.name, base_lr):
            run |= {"lr": base_lr, "schedule_start": stage.schedule_start}
        stage.runs.append(run | (note or {}))
    bar = tqdm(total=total, initial=stage.step, desc=stage.name, dynamic_ncols=True)
    while stage.step < total:
        t0 = time.perf_counter()
        for group in stage.opt.param_groups:
            group["lr"] = lr_at(stage.step - stage.schedule_start, total - stage.schedule_start, base_lr)
        stage.opt.zero_grad(set_to_none=True)
        if step_fn is not None:
            loss, extra = step_fn(stage.rng)
        else:
            loss, extra = loss_fn(stage.rng)
            loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        stage.opt.step()
        if ema is not None:
            ema.update()
        stage.step += 1
        stage.seconds += time.perf_counter() - t0
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", **{k: f"{v:.3g}" for k, v in extra.items()})
        if stage.step % 50 == 0 or stage.step == total:
            log(
                {
                    f"{stage.name}/loss": loss.item(),
                    f"{stage.name}/grad_norm": float(grad_norm),
                    **{f"{stage.name}/{k}": v for k, v in extra.items()},
                },
                step=stage.step,
            )
        if stage.step % save_every == 0 or stage.step == total:
            stage.save()
    bar.close()
    done = {"steps": stage.step, "minutes": stage.seconds / 60}
    if step_fn is not None:
        step_fn.close()
        if step_fn.parts > 1:
            done["parts"] = step_fn.parts
    if len(stage.runs) > 1:  # restarted or extended: say how (the learning-rate schedule spans each run's plan)
        done["runs"] = stage.runs
    stage.done_marker().write_text(json.dumps(done))


class EMA(nn.Module):
    """Exponential moving average of a module's parameters (the weights that are exported)."""

    def __init__(self, module: nn.Module, decay: float = EMA_DECAY):
        super().__init__()
        self.module, self.decay = module, decay
        self.shadow = copy.deepcopy(module).requires_grad_(False)

    @torch.no_grad()
    def update(self) -> None:
        for s, p in zip(self.shadow.parameters(), self.module.parameters()):
            s.lerp_(p.detach(), 1 - self.decay)

    def state_dict(self, *args, **kwargs):
        return self.shadow.state_dict(*args, **kwargs)

    def load_state_dict(self, sd, *args, **kwargs):
        return self.shadow.load_state_dict(sd, *args, **kwargs)

