"""A prompt set x configurations sweep, resumable.

    python -m experiments.sweep experiment=t2v_table                 # AnimateDiff vs AnimateZero on t2v_bench
    python -m experiments.sweep experiment=ablation_fig6 debug=tiny  # the five Fig. 6 rows, tiny weights
    python -m experiments.sweep -m controls=animatediff,paper        # one Hydra job per configuration

Every item (configuration x prompt x seed) is written atomically into its own directory
``<sweep_dir>/<configuration>/<prompt id>_s<seed>/`` with the files of ``animatezero`` (image.png, video.mp4,
video.gif, frames/, run.json). An item whose run.json says ``"status": "done"`` with the same settings is skipped,
so after a crash or Ctrl-C the same command goes on where it stopped. The step-1 image of a prompt is made once and
shared by all of its configurations.
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


def plan(cfg: DictConfig, root: Path, items: list[dict], configurations: dict, checkpoints: dict):
    """``{(label, item dirname): fingerprint}`` of the items still to make. A finished item with another
    fingerprint (other checkpoint, sampler, prompt or controls) is an error unless ``overwrite``."""
    from experiments import common
    from experiments.runs import inside, read_run

    todo = {}
    for item in items:
        for label, controls in configurations.items():
            fp = common.fingerprint(
                {
                    "prompt": item["prompt"],
                    "negative_prompt": item["negative_prompt"],
                    "seed": item["seed"],
                    "sampler": {k: cfg.sampler[k] for k in SAMPLER_FIELDS},
                    "controls": controls.fingerprint_fields(),
                    "checkpoints": {k: v["sha256"] for k, v in checkpoints.items()},
                    "lora_scale": cfg.motion.lora_scale,
                    "lora_scales": {k: v["scale"] for k, v in checkpoints.items() if k.startswith("lora_")},
                }
            )
            done = read_run(inside(root, f"{label}/{item['dirname']}", "sweep item"))
            if done is not None and done.get("status") == "done":
                if done.get("fingerprint") == fp:
                    continue
                if not cfg.overwrite:
                    raise cli.ConfigError(
                        f"{root / label / item['dirname']} was made with other settings (checkpoint, sampler, prompt "
                        "or controls). Use another sweep_dir (or name=...), or overwrite=true to redo such items."
                    )
            todo[label, item["dirname"]] = fp
    return todo


def sweep(cfg: DictConfig) -> Path:
    """Run (or resume) the sweep; returns its directory. Every argument is checked, and the weights found, before
    the sweep directory is touched."""
    cli.apply_shortcuts(cfg)  # the plain values first, before the heavy imports
    cli.check_values(cfg)
    from animatezero.io import atomic_path, write_json
    from animatezero.results import psnr
    from experiments import common
    from experiments.runs import RunRecord, WandbRun, environment, inside, prepare_run_dir

    configurations = common.sweep_configurations(cfg)
    items = common.prompt_items(cfg.prompts, cfg.repeats, cfg.shard, cfg.sampler.negative_prompt)
    common.check_sampler(cfg.sampler)
    device = common.pick_device(cfg.model.device)
    dtype = common.pick_dtype(cfg.model.dtype, device)
    root = cli.check_out_dir(cfg.sweep_dir, overwrite=True)  # a sweep directory is meant to be reused
    common.run_files(cfg, root / "item")  # output names (inside the item, distinct) checked before any work
    config = common.plain(cfg)
    config.pop("configurations")
    config["prompts"] = {"name": cfg.prompts.name}

    with common.cpu_threads(cfg.model.cpu_threads):
        common.ensure_synthetic(cfg)
        checkpoints = common.resolve_checkpoints(cfg)
        todo = plan(cfg, root, items, configurations, checkpoints)
        total = len(items) * len(configurations)
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

        def summary(how: str) -> None:
            left = len(todo) - finished - failed
            print(
                f"[sweep] {how}: {finished} done, {total - len(todo)} skipped (already done), {failed} failed, "
                f"{left} not run, {time.perf_counter() - t0:.1f} s"
                + ("; run the same command again to resume" if left or failed else "")
            )

        sampler = {k: int(cfg.sampler[k]) for k in ("height", "width", "steps", "num_frames")}
        sampler["guidance_scale"] = float(cfg.sampler.guidance_scale)
        try:
            pipe = common.load_pipeline(cfg, checkpoints, device, dtype)
            for item in items:
                labels = [label for label in configurations if (label, item["dirname"]) in todo]
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
