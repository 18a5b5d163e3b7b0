"""A prompt set x configurations sweep, resumable.

    python -m experiments.sweep experiment=t2v_table                 # AnimateDiff vs AnimateZero on t2v_bench
    python -m experiments.sweep experiment=ablation_fig6 debug=tiny  # the five Fig. 6 rows, tiny weights
    python -m experiments.sweep -m controls=animatediff,paper        # one Hydra job per configuration

Every item (configuration x prompt x seed) is written atomically into its own directory
``<sweep_dir>/<configuration>/<prompt id>_s<seed>/`` with the files of ``animatezero`` (image.png, video.mp4,
video.gif, frames/, run.json). An item whose run.json says ``"status": "done"`` with the same settings is skipped,
so after a crash or Ctrl-C the same command goes on where it stopped. The step-1 image of a prompt is made once and
shared by all of its configurations. Runners started on the same sweep directory (two terminals, a multirun, hosts
sharing a file system) split the items: each item is claimed before it is made (:func:`experiments.runs.claim`).
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path

import hydra
from omegaconf import DictConfig

from experiments import cli

SAMPLER_FIELDS = ("steps", "guidance_scale", "eta", "num_frames", "height", "width")


# model settings left out of the fingerprint: where and how fast the networks run, and the weight files, which are
# in it by content instead (SHA-256, and each LoRA's scale); every other model setting, present now or added later,
# is in it
NOT_FINGERPRINTED = (
    "device",
    "dtype",
    "cpu_threads",
    "offload",
    "vae_chunk_size",
    "compile_cache_dir",
    "synthetic",
    "checkpoint",
    "lora",
)


def settings(cfg: DictConfig, dtype, device: str, checkpoints: dict) -> dict:
    """What, besides the item's prompt, seed and controls, determines its pixels: the sampler, the model files
    (SHA-256), the MotionLoRA and LoRA scales, the dtype, the device kind (cpu, cuda, mps) and every other model
    setting (all but :data:`NOT_FINGERPRINTED`, e.g. ``compile``). Settings at their empty default (null, false,
    [] or {}) are left out, so adding one keeps older sweeps resumable."""
    from experiments import common

    model = {
        k: v
        for k, v in common.plain(cfg.model).items()
        if k not in NOT_FINGERPRINTED and not (v is None or v is False or v == [] or v == {})
    }
    lora_scales = {k: v["scale"] for k, v in checkpoints.items() if k.startswith("lora_")}
    return {
        "sampler": {k: cfg.sampler[k] for k in SAMPLER_FIELDS},
        "checkpoints": {k: v["sha256"] for k, v in checkpoints.items()},
        "lora_scale": cfg.motion.lora_scale,
        **({"lora_scales": lora_scales} if lora_scales else {}),
        "dtype": str(dtype).removeprefix("torch."),
        "device_kind": str(device).partition(":")[0],
        **({"model": model} if model else {}),
    }


def item_fingerprint(item: dict, controls, setup: dict, *, legacy: bool = False) -> str:
    """The item's fingerprint. ``legacy``: as sweeps before the dtype, device kind and model settings were part
    of it computed it (their items still record dtype and device, which :func:`plan` compares instead)."""
    from experiments import common

    fields = {
        "prompt": item["prompt"],
        "negative_prompt": item["negative_prompt"],
        "seed": item["seed"],
        "controls": controls.fingerprint_fields(),
        **setup,
    }
    if legacy:
        fields = {k: v for k, v in fields.items() if k not in ("dtype", "device_kind", "model", "lora_scales")}
    return common.fingerprint(fields)


def reusable(done: dict, fp: str, item: dict, controls, setup: dict) -> bool:
    """Whether a finished item was made with the same settings: the same fingerprint, or (an item of an older
    sweep) the legacy fingerprint with the same recorded dtype and device kind and no model setting beyond those."""
    if done.get("fingerprint") == fp:
        return True
    return (
        "model" not in setup
        and "lora_scales" not in setup
        and done.get("fingerprint") == item_fingerprint(item, controls, setup, legacy=True)
        and done.get("dtype") == setup["dtype"]
        and str(done.get("device", "")).partition(":")[0] == setup["device_kind"]
    )


def plan(
    cfg: DictConfig, root: Path, items: list[dict], configurations: dict, checkpoints: dict, dtype=None, device=None
):
    """``{(label, item dirname): fingerprint}`` of the items still to make. A finished item with other settings
    (checkpoint, sampler, prompt, controls, dtype, device kind or model settings: :func:`settings`) is an error
    unless ``overwrite``. ``dtype`` and ``device``: as resolved for the run (default: from ``cfg.model``)."""
    from experiments import common
    from experiments.runs import inside, read_run

    device = device or common.pick_device(cfg.model.device)
    setup = settings(cfg, dtype or common.pick_dtype(cfg.model.dtype, device), device, checkpoints)

    todo = {}
    for item in items:
        for label, controls in configurations.items():
            fp = item_fingerprint(item, controls, setup)
            done = read_run(inside(root, f"{label}/{item['dirname']}", "sweep item"))
            if done is not None and done.get("status") == "done":
                if reusable(done, fp, item, controls, setup):
                    continue
                if not cfg.overwrite:
                    made = f"{done.get('dtype')} on {str(done.get('device', '?')).partition(':')[0]}"
                    raise cli.ConfigError(
                        f"{root / label / item['dirname']} was made with other settings (checkpoint, sampler, prompt, "
                        f"controls, dtype or device: it was made in {made}, this run is {setup['dtype']} on "
                        f"{setup['device_kind']}). Use another sweep_dir (or name=...), or overwrite=true to redo such "
                        "items."
                    )
            todo[label, item["dirname"]] = fp
    return todo


def sweep(cfg: DictConfig) -> Path:
    """Run (or resume) the sweep; returns its directory. Every argument is checked, and the weights found, before
    the sweep directory is touched."""
    cli.apply_shortcuts(cfg)  # the plain values first, before the heavy imports
    cli.check_values(cfg)
    cli.require_motion_module(cfg)
    from animatezero.io import atomic_path, write_json
    from animatezero.results import psnr
    from experiments import common
    from experiments.runs import (
        RunRecord,
        WandbRun,
        claim,
        claim_holder,
        environment,
        inside,
        prepare_run_dir,
        read_run,
    )

    configurations = common.sweep_configurations(cfg)
    items = common.prompt_items(cfg.prompts, cfg.repeats, cfg.shard, cfg.sampler.negative_prompt)
    common.check_sampler(cfg.sampler)
    common.check_like_the_pipeline(cfg)  # size, steps, guidance, frames by the pipeline's own checks
    device = common.pick_device(cfg.model.device)
    dtype = common.pick_dtype(cfg.model.dtype, device)
    root = cli.check_out_dir(cfg.sweep_dir, overwrite=True)  # a sweep directory is meant to be reused
    common.run_files(cfg, root / "item")  # output names (inside the item, distinct, known formats) checked now
    config = common.plain(cfg)
    config.pop("configurations")
    config["prompts"] = {"name": cfg.prompts.name}

    with common.cpu_threads(cfg.model.cpu_threads):
        common.ensure_synthetic(cfg)
        checkpoints = common.resolve_checkpoints(cfg)
        setup = settings(cfg, dtype, device, checkpoints)  # for the claims' re-check below
        todo = plan(cfg, root, items, configurations, checkpoints, dtype, device)
        total = len(items) * len(configurations)
        pipe = None
        if todo:  # loaded before the sweep folder is touched: a clip too long for the motion module leaves nothing
            pipe = common.load_pipeline(cfg, checkpoints, device, dtype)
            for controls in configurations.values():
                common.check_frames_fit(pipe, controls, int(cfg.sampler.num_frames), two_anchors=False)
        root = prepare_run_dir(root, overwrite=True)
        for label, controls in configurations.items():
            write_json(inside(root, f"{label}/configuration.json"), {"label": label, "controls": asdict(controls)})
        print(
            f"[sweep] {root}: {len(configurations)} configurations x {len(items)} prompts; {len(todo)}/{total} to run"
        )
        if not todo:
            print(f"[sweep] summary: 0 done, {total} skipped (already done), 0 failed")
            return root

        env = {**environment(device), "dtype": str(dtype).removeprefix("torch."), "checkpoints": checkpoints}
        wandb_args = {**common.wandb_args(cfg.wandb), "group": cfg.wandb.group or cfg.name}
        wandb = WandbRun.start(
            **wandb_args, name=f"{cfg.name}-{common.job_num()}", job_type="sweep", config=config, dir=root
        )
        t0, finished, failed = time.perf_counter(), 0, 0
        elsewhere, busy = [], []  # items made meanwhile by another runner; items another runner is making

        def summary(how: str) -> None:
            left = len(todo) - finished - failed - len(elsewhere) - len(busy)
            ended = [(d, who) for d, who in busy if (run := read_run(d)) is not None and run.get("status") == "done"]
            made, making = len(elsewhere) + len(ended), [who for d, who in busy if (d, who) not in ended]
            others = f"{made} made by another runner, " if made else ""
            others += f"{len(making)} being made by another runner ({making[0]}), " if making else ""
            print(
                f"[sweep] {how}: {finished} done, {total - len(todo)} skipped (already done), {others}{failed} failed, "
                f"{left} not run, {time.perf_counter() - t0:.1f} s"
                + ("; run the same command again to resume" if left or failed or making else "")
            )

        sampler = {k: int(cfg.sampler[k]) for k in ("height", "width", "steps", "num_frames")}
        sampler["guidance_scale"] = float(cfg.sampler.guidance_scale)
        claims = {}
        try:
            for item in items:
                for label in configurations:  # claim this prompt's items still to make; skip those others make
                    fp = todo.get((label, item["dirname"]))
                    if fp is None:
                        continue
                    item_dir = inside(root, f"{label}/{item['dirname']}", "sweep item")
                    held = claim(item_dir)
                    if held is None:
                        busy.append((item_dir, claim_holder(item_dir)))
                    elif (
                        (done := read_run(item_dir)) is not None
                        and done.get("status") == "done"
                        and reusable(done, fp, item, configurations[label], setup)
                    ):
                        held.release()  # finished by another runner since the plan was made
                        elsewhere.append(item_dir)
                    else:
                        claims[label] = held
                labels = list(claims)
                if not labels:
                    continue
                timing = RunRecord(root)
                step_one = {k: sampler[k] for k in ("height", "width", "steps", "guidance_scale")}
                with timing.timer("image"), common.progress(sampler["steps"], "image") as step:
                    # step 1 once per prompt, shared by its configurations
                    image = pipe.text_to_image(
                        item["prompt"],
                        negative_prompt=item["negative_prompt"],
                        **step_one,
                        seed=item["seed"],
                        record_kv=any(common.needs_kv(configurations[label]) for label in labels),
                        callback=step,
                    )
                for label in labels:
                    controls, name = configurations[label], f"{label}/{item['dirname']}"
                    record = RunRecord(
                        inside(root, name, "sweep item"),
                        kind="sweep-item",
                        sweep=cfg.name,
                        configuration=label,
                        prompt_id=item["id"],
                        prompt=item["prompt"],
                        negative_prompt=item["negative_prompt"],
                        seeds={"image": item["seed"], "video": item["seed"]},
                        controls=asdict(controls),
                        fingerprint=todo[label, item["dirname"]],
                        config={**config, "controls": {"name": label, **asdict(controls)}},
                        **env,
                    )
                    record.data["timings"].update(timing.data["timings"])
                    with record.timer("video"), common.progress(image.steps, "video") as step:
                        video = pipe.animate(  # with every control off: plain AnimateDiff, the baseline
                            image, controls=controls, num_frames=sampler["num_frames"], seed=item["seed"], callback=step
                        )
                    mode = video.info["mode"]
                    with atomic_path(record.run_dir, directory=True) as tmp:  # the item appears whole, or not at all
                        files = common.run_files(cfg, tmp)
                        with record.timer("write"):
                            common.write_outputs(files, image, video, int(cfg.sampler.fps))
                        metrics = {"first_frame_psnr": round(psnr(video.frames[0], image.image), 3)}
                        record.done(tmp, mode=mode, quick_metrics=metrics, files={k: p.name for k, p in files.items()})
                    record.run_dir.chmod(0o755)
                    claims.pop(label).release()
                    finished += 1
                    print(f"[sweep] {finished}/{len(todo)} {name} ({record.data['timings']['total_s']:.1f} s)")
                    wandb.log({f"{name}/{k}": v for k, v in metrics.items()})
                    if cfg.wandb.log_media:
                        files = common.run_files(cfg, record.run_dir)
                        wandb.log_media(name, image=files["image"], video=files["video"], caption=item["prompt"])
        except KeyboardInterrupt:
            summary("interrupted")
            raise
        except BaseException:
            failed += 1  # the item being made; items are written whole, so it left nothing behind
            summary("stopped by an error")
            raise
        finally:
            for held in claims.values():
                held.release()
            wandb.finish()
    summary("summary")
    return root


@hydra.main(config_path="pkg://configs", config_name="sweep", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    cli.run("python -m experiments.sweep", sweep, cfg)  # bad input: one line on stderr, exit 2


def main() -> None:
    """``python -m experiments.sweep KEY=VALUE ...``: an unknown key is one line and exit 2; then Hydra runs."""
    cli.check_override_keys("python -m experiments.sweep", sys.argv[1:], "sweep")
    _hydra_main()


if __name__ == "__main__":
    main()
