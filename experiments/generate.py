"""One prompt -> the step-1 image and its animation (the ``animatezero`` console script).

    animatezero prompt="a cat, blinking"
    animatezero prompt="a cat, blinking" checkpoint=toonyou.safetensors motion_module=mm_sd_v15_v2.ckpt seed=7
    animatezero prompt="a cat, blinking" controls=animatediff      # plain AnimateDiff text-to-video
    animatezero prompt="a cat, blinking" debug=tiny                 # tiny random weights on CPU, in seconds

Writes image.png, video.mp4, video.gif, frames/ and run.json into a fresh run directory (``out_dir``, by default
outputs/generate/<date>/<time>). Every option is in configs/generate.yaml; ``--cfg job`` prints the config.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from experiments import cli

TEXT_KEYS = ("prompt", "negative_prompt", "sampler.negative_prompt", "end_prompt", "end_image_prompt")


def check(cfg: DictConfig) -> None:
    """Everything that can be wrong with the arguments, checked before anything is created or loaded: a command
    that fails here leaves nothing on disk. Fixes ``out_dir`` (its timestamp is taken once)."""
    from animatezero.hub import local_file, resolve_all

    if OmegaConf.is_missing(cfg, "prompt"):
        if cfg.image is None:
            raise cli.ConfigError('give a prompt, e.g. animatezero prompt="a cat, blinking" (or image=photo.png)')
        cfg.prompt = ""  # a real image with no description
    cli.apply_shortcuts(cfg)
    cli.check_values(cfg)
    cli.require_motion_module(cfg)
    for key in ("image", "end_image"):
        if cfg[key] is not None:
            local_file(cfg[key], key, image=True)
    cfg.out_dir = str(
        cfg.out_dir if cfg.out_dir is not None else cli.default_run_dir(cfg.paths.output_root, "generate")
    )
    cli.check_out_dir(cfg.out_dir, overwrite=cfg.overwrite)
    loras = cli.lora_refs(cfg)  # SD1.5 LoRAs (model.lora / lora=): every entry checked here
    if cfg.model.synthetic is None and cfg.motion.synthetic is None:
        # missing local weights, or hub files missing while offline, are reported now, before torch is even imported
        refs = {"checkpoint": cfg.checkpoint, "motion_module": cfg.motion_module, "motion.lora": cfg.motion.lora}
        refs |= loras
        resolve_all(refs, download=False, cache_dir=cfg.paths.cache_dir)


def generate(cfg: DictConfig) -> Path:
    """Run one ``animatezero`` command; returns the run directory."""
    check(cfg)  # before the heavy imports: a bad value or missing weights are reported in about a second
    from dataclasses import asdict

    from animatezero.checks import new_seed
    from animatezero.results import psnr
    from experiments import common
    from experiments.runs import RunRecord, WandbRun, environment, prepare_run_dir

    label, controls = common.controls_from_group(cfg.controls)
    inverts = "image=" if cfg.image else "extend=" if int(cfg.extend) else None
    common.check_sampler(cfg.sampler, inverts)
    device = common.pick_device(cfg.model.device)
    dtype = common.pick_dtype(cfg.model.dtype, device)
    files = common.run_files(cfg, cfg.out_dir)
    two_anchors = bool(cfg.loop or cfg.end_image is not None or cfg.end_image_prompt is not None)
    common.check_like_the_pipeline(cfg, min_frames=2 if two_anchors else 1)  # the pipeline's own checks, now
    seed = int(cfg.seed) if cfg.seed is not None else new_seed()
    # The weights are found (or downloaded) and loaded before the run folder exists: missing or bad weights, or a
    # clip longer than the motion module allows, leave nothing.
    t = time.perf_counter()
    with common.cpu_threads(cfg.model.cpu_threads):
        common.ensure_synthetic(cfg)
        checkpoints = common.resolve_checkpoints(cfg)
        resolve_s = round(time.perf_counter() - t, 4)
        t = time.perf_counter()
        pipe = common.load_pipeline(cfg, checkpoints, device, dtype)
        load_s = round(time.perf_counter() - t, 4)
    if not cfg.candidates:
        common.check_frames_fit(pipe, controls, int(cfg.sampler.num_frames), two_anchors=two_anchors)
    existed = Path(cfg.out_dir).expanduser().exists()
    out_dir = prepare_run_dir(cfg.out_dir, overwrite=cfg.overwrite)
    config = common.plain(cfg)

    record = RunRecord(
        out_dir,
        kind="generate",
        prompt=cfg.prompt,
        negative_prompt=cfg.negative_prompt,
        configuration=label,
        seeds={"image": seed, "video": seed},
        controls=asdict(controls),
        files={} if cfg.candidates else {k: p.name for k, p in files.items()},
        dtype=str(dtype).removeprefix("torch."),
        config=config,
        checkpoints=checkpoints,
        **environment(device),
    )
    record.data["timings"].update(resolve_s=resolve_s, load_s=load_s)
    try:
        record.write()  # before any output: a disk too full for it fails here, naming run.json
    except OSError:
        if not existed and not any(out_dir.iterdir()):
            out_dir.rmdir()  # nothing left behind
        raise
    wandb = WandbRun.start(
        **common.wandb_args(cfg.wandb), name=out_dir.name, job_type="generate", config=config, dir=out_dir
    )
    try:
        with common.cpu_threads(cfg.model.cpu_threads):
            if cfg.candidates:
                return write_candidates(pipe, cfg, seed, out_dir, record, wandb)
            image, video, mode = image_and_video(pipe, cfg, controls, seed, record)
            for k in range(int(cfg.extend)):
                with record.timer("extend"):
                    video = pipe.continue_video(
                        video,
                        num_frames=int(cfg.sampler.num_frames),
                        steps=image.steps,
                        guidance_scale=image.guidance_scale,
                        negative_prompt=image.negative_prompt,
                        controls=controls,
                        seed=seed + 1 + k,
                    )
            with record.timer("write"):
                common.write_outputs(files, image, video, int(cfg.sampler.fps))
    except BaseException as e:
        record.failed(e)  # never raises: on a full disk run.json is rewritten in place, and `e` names what failed
        wandb.finish()
        raise
    metrics = {"first_frame_psnr": round(psnr(video.frames[0], image.image), 3)}
    # what step 1 kept for step 2 (the recorded keys/values are the large part) and the anchors' reproduction
    record.done(mode=mode, quick_metrics=metrics, image_info=image.info, video_info=video.info)

    wandb.summary({**metrics, **record.data["timings"], "mode": mode})
    if cfg.wandb.log_media:
        wandb.log_media("run", image=files["image"], video=files["video"], caption=cfg.prompt, fps=int(cfg.sampler.fps))
    wandb.finish()
    print(f"[animatezero] {mode}: {out_dir} ({record.data['timings']['total_s']:.1f} s)")
    return out_dir


def image_and_video(pipe, cfg: DictConfig, controls, seed: int, record):
    """Step 1 and step 2 -> ``(image, video, mode)``, each pipeline call with a progress bar. The plain case runs in
    lockstep (``pipe.generate``: one step's keys/values in memory, the same result); otherwise ``pipe.animate``
    decides the kind of clip (with every control off: plain AnimateDiff text-to-video with the image's prompt, seed
    and sampler)."""
    from experiments.common import needs_kv, progress

    sampler = cfg.sampler
    frames = int(sampler.num_frames)
    step_one = {  # the settings step 2 reuses, so the trajectories line up
        "height": int(sampler.height),
        "width": int(sampler.width),
        "steps": int(sampler.steps),
        "guidance_scale": float(sampler.guidance_scale),
        "negative_prompt": cfg.negative_prompt,
    }
    one_image = not (cfg.image or cfg.loop or cfg.end_image or cfg.end_image_prompt or cfg.end_prompt)
    if controls.any and cfg.lockstep and one_image:
        with record.timer("image_and_video"), progress(step_one["steps"], "image+video") as step:
            image, video = pipe.generate(
                cfg.prompt, **step_one, seed=seed, num_frames=frames, controls=controls, callback=step
            )
        return image, video, video.info["mode"]

    def make_image(prompt: str, seed: int):
        with progress(step_one["steps"], "image") as step:
            return pipe.text_to_image(prompt, **step_one, seed=seed, record_kv=needs_kv(controls), callback=step)

    def invert(path: str):
        return pipe.invert_image(path, cfg.prompt, **step_one)

    with record.timer("image"):
        image = invert(cfg.image) if cfg.image is not None else make_image(cfg.prompt, seed)
        if cfg.image is not None:
            print(f"[animatezero] {cfg.image}: VAE reconstruction PSNR {image.info['psnr_db']:.2f} dB")
        last = None  # the last frame's image, for loops and interpolation
        if cfg.loop:
            last = image
        elif cfg.end_image is not None:
            last = invert(cfg.end_image)
        elif cfg.end_image_prompt is not None:
            last = make_image(cfg.end_image_prompt, int(cfg.end_seed) if cfg.end_seed is not None else seed)
    with record.timer("video"), progress(image.steps, "video") as step:
        video = pipe.animate(  # the pipeline decides: animatezero, loop, interpolation or (controls off) animatediff
            image, last=last, controls=controls, num_frames=frames, seed=seed, end_prompt=cfg.end_prompt, callback=step
        )
    return image, video, video.info["mode"]


def write_candidates(pipe, cfg: DictConfig, seed: int, out_dir: Path, record, wandb) -> Path:
    """Interactive generation, step 1: candidate images for consecutive seeds; animate one by rerunning with its seed
    (the same seed and settings reproduce the image exactly)."""
    from experiments.common import progress

    seeds = list(range(seed, seed + int(cfg.candidates)))
    sampler, paths = cfg.sampler, {}
    for s in seeds:
        with progress(int(sampler.steps), "image") as step:
            image = pipe.text_to_image(
                cfg.prompt,
                negative_prompt=cfg.negative_prompt,
                height=int(sampler.height),
                width=int(sampler.width),
                steps=int(sampler.steps),
                guidance_scale=float(sampler.guidance_scale),
                seed=s,
                callback=step,
            )
        paths[s] = image.save(out_dir / "candidates" / f"seed_{s}.png").relative_to(out_dir).as_posix()
    # run.json lists only what this run wrote: the candidate images (no image.png or video)
    record.done(mode="candidates", candidates=paths, files={f"seed_{s}": p for s, p in paths.items()})
    wandb.finish()
    print(f"[animatezero] {len(seeds)} candidates in {out_dir / 'candidates'}; animate one with seed=<its seed>")
    return out_dir


@hydra.main(config_path="pkg://configs", config_name="generate", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    cli.run("animatezero", generate, cfg)  # bad input or no weights: one line on stderr, exit 2, no traceback


def quote_text_overrides(argv: list[str]) -> list[str]:
    """Quote free-text values (``prompt=a cat, blinking`` after the shell removed its quotes), which Hydra's
    override grammar would otherwise split at commas or reject for brackets, and escape every ``${`` in them: a
    prompt is taken as typed, never as an interpolation (``${oc.env:TOKEN}`` would put a secret in run.json and
    W&B; ``price $5 ${`` would be a grammar error)."""
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+~") in TEXT_KEYS:
            quoted = len(value) >= 2 and value[0] in "'\"" and value[-1] == value[0]
            # backslashes before ${ are doubled (they are literal too), then the ${ itself is escaped
            escape = lambda text: re.sub(r"(\\*)\$\{", lambda m: m[1] * 2 + "\\${", text)  # noqa: E731
            if quoted:
                arg = f"{key}={value[0]}{escape(value[1:-1])}{value[0]}"
            else:
                arg = f"{key}='{escape(value).replace(chr(39), chr(92) + chr(39))}'"
        out.append(arg)
    return out


def main() -> None:
    """The ``animatezero`` console script."""
    cli.check_override_keys("animatezero", sys.argv[1:], "generate")
    sys.argv = [sys.argv[0], *quote_text_overrides(sys.argv[1:])]
    _hydra_main()


if __name__ == "__main__":
    main()
