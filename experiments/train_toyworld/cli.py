"""The trainer's command line (``python scripts/train_toyworld.py``, ``python -m experiments.train_toyworld``): the
recipe from nothing, or ``--from-checkpoint`` for an existing single file. Options: ``--help``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from animatezero.toyworld import DIR as ASSETS
from experiments.train_toyworld.export import done_record, export, file_record, provenance
from experiments.train_toyworld.recipe import DEFAULT_BATCH, DEFAULT_STEPS, POOL_CLIPS, STAGES
from experiments.train_toyworld.stages import (
    latent_pool,
    normalize_latents,
    rescale_latents,
    train_decoder,
    train_detail,
    train_frame0,
    train_motion,
    train_refine,
    train_text,
    train_unet,
    train_vae,
)
from models.tokenizer import CLIPTokenizer

ROOT = Path(__file__).resolve().parents[2]

def motion_for_checkpoint(args, log, tok: CLIPTokenizer, command: str) -> int:
    """``--from-checkpoint``: train only the ``motion`` stage, on the VAE, text encoder and UNet of an existing LDM
    single file (AnimateDiff's own workflow: a motion module for a given SD1.5 checkpoint, read by the ordinary
    loader), then export that checkpoint's weights with the new module. For retraining the motion module when the
    earlier stages' training states are gone (they live in ``--out``, which is not shipped). fp16 -> fp32 -> fp16
    is exact, so the exported checkpoint has the bytes of the one read; the latent pool is encoded with its VAE.
    With ``--frame0`` the checkpoint's UNet first goes through the ``frame0`` stage (:func:`train_frame0`), and the
    exported checkpoint carries the continued UNet. A motion state already in ``--out`` (trained on another UNet)
    is continued, not restarted; each run's manifest entry names the UNet it trained on (``unet``: the first 12
    hex digits of the base checkpoint's SHA-256, ``+ frame0`` when continued).

    ``--motion-module`` takes that module as it is instead of training one (recorded as ``motion_module`` with its
    SHA-256; exported byte for byte); ``--motion-init`` starts the motion stage from that module instead of a fresh
    one (recorded as ``motion_init``): the shipped module is the recipe's, continued so on the ``detail`` UNet it
    runs with (docs/toyworld.md §8). ``--detail`` runs the ``detail`` stage (:func:`train_detail`) on the UNet
    after the motion module: with both, the recipe's last stage for a checkpoint and module whose training states
    are gone."""
    from models.loading import load_motion_module, load_sd15

    unet, vae, text = load_sd15(args.from_checkpoint)
    base = file_record(args.from_checkpoint)
    beside = args.from_checkpoint.with_name("manifest.json")  # a shipped checkpoint's provenance, when it is there
    if beside.is_file():
        known = json.loads(beside.read_text())
        if known.get("files", {}).get(base["path"], {}).get("sha256") == base["sha256"]:
            # a checkpoint exported by an earlier --from-checkpoint run carries its own base's provenance on
            origin = known.get("base_checkpoint", {})
            known = origin if origin.get("sha256") == base["sha256"] else known
            # and one exported by a --frame0 run (a new checkpoint) keeps that run's own base: the chain back to the
            # stages that trained its VAE, text encoder and first UNet
            base |= {k: known[k] for k in ("trained_by", "stages", "latent_pool", "base_checkpoint") if k in known}
    pool = latent_pool(args.out, vae, args.pool_clips, args.seed)
    stages, note, extra = {}, {"unet": base["sha256"][:12]}, {}
    if args.frame0:  # a new UNet: the exported checkpoint then differs from the one read in its UNet weights
        unet = train_frame0(args.out, args, log, pool, tok, text, unet)
        stages["frame0"] = done_record(args.out, "frame0")
        note["unet"] += " + frame0"
    if args.motion_module is not None:
        motion = load_motion_module(args.motion_module, dtype=torch.float32)
        extra["motion_module"] = file_record(args.motion_module)
    else:
        init = None
        if args.motion_init is not None:
            init = load_motion_module(args.motion_init, dtype=torch.float32)
            extra["motion_init"] = file_record(args.motion_init)
        motion = train_motion(args.out, args, log, pool, tok, unet, text, note, init)
        stages["motion"] = done_record(args.out, "motion")
    if args.detail:
        unet = train_detail(args.out, args, log, pool, tok, text, unet)
        stages["detail"] = done_record(args.out, "detail")
    # the latent pool was encoded with this checkpoint's VAE
    meta = provenance(
        command, base_checkpoint=base, **extra, stages=stages, latent_pool=done_record(args.out, "latents")
    )
    export(args.dest, vae, unet, text, motion, meta)
    return 0


def main(argv: list[str] | None = None, prog: str = "scripts/train_toyworld.py") -> int:
    """Train (or resume) the stages ``argv`` asks for and export the files; ``prog`` is how the manifest names the
    command (``trained_by``)."""
    from experiments import train_toyworld

    ap = argparse.ArgumentParser(
        prog=prog, description=train_toyworld.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "toyworld_train", help="training state folder")
    ap.add_argument("--dest", type=Path, default=ASSETS, help="where the shipped files are written")
    ap.add_argument("--stage", choices=(*STAGES, "all"), default="all")
    ap.add_argument("--export-only", action="store_true", help="only write the shipped files from finished stages")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    ap.add_argument(
        "--split",
        type=int,
        default=0,
        help="run the UNet and motion stages' batches as this many parts in threads of their own (see SplitBatch; "
        "0: one part per thread, 1: no split)",
    )
    ap.add_argument("--save-every", type=int, default=100)
    ap.add_argument("--vae-crop", type=int, default=32, help="VAE training crop size (a multiple of 8)")
    ap.add_argument("--pool-clips", type=int, default=POOL_CLIPS, help="clips encoded once for the UNet/motion stages")
    ap.add_argument(
        "--from-checkpoint",
        type=Path,
        help="train only the motion stage, on this LDM single file's VAE, text encoder and UNet (see motion_for_checkpoint)",
    )
    ap.add_argument(
        "--frame0",
        action="store_true",
        help="with --from-checkpoint: first continue the checkpoint's UNet with the frame0 stage (a new checkpoint)",
    )
    ap.add_argument(
        "--motion-module",
        type=Path,
        help="with --from-checkpoint: use this motion module as it is instead of training one (with --detail)",
    )
    ap.add_argument(
        "--motion-init",
        type=Path,
        help="with --from-checkpoint: start the motion stage from this motion module instead of a fresh one "
        "(give --steps-motion and --lr-motion for the continuation)",
    )
    ap.add_argument(
        "--detail",
        action="store_true",
        help="with --from-checkpoint: continue the checkpoint's UNet with the detail stage after the motion module",
    )
    ap.add_argument("--lr-motion", type=float, default=0.0, help="the motion stage's peak learning rate (0: default)")
    ap.add_argument(
        "--restart-schedule",
        action="store_true",
        help="a finished motion stage continued to more steps gets a learning-rate schedule of its own",
    )
    ap.add_argument("--wandb", action="store_true", help="log to Weights & Biases (offline unless WANDB_MODE is set)")
    for s in STAGES:
        ap.add_argument(f"--steps-{s}", type=int, default=DEFAULT_STEPS[s])
        ap.add_argument(f"--batch-{s}", type=int, default=DEFAULT_BATCH[s])
    args = ap.parse_args(argv)
    if args.motion_module is not None and args.motion_init is not None:
        ap.error("--motion-module (use a module as it is) and --motion-init (train from it) exclude each other")
    if args.from_checkpoint is None and (args.motion_module is not None or args.motion_init is not None or args.detail):
        ap.error(
            "--motion-module, --motion-init and --detail go with --from-checkpoint "
            "(the recipe from nothing runs detail itself)"
        )
    if args.from_checkpoint is not None and args.stage not in ("all", "motion"):
        ap.error("--from-checkpoint runs the motion stage (frame0 with --frame0, detail with --detail); drop --stage")
    # every stage builds its modules before its Stage seeds torch, and torch's generator starts from a random seed:
    # seed it here, so that a seed fixes the initialisations too (a resumed stage restores the generator's state)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.split = args.split or torch.get_num_threads()
    args.out.mkdir(parents=True, exist_ok=True)

    run = None
    if args.wandb:
        import wandb

        os.environ.setdefault("WANDB_MODE", "offline")
        run = wandb.init(
            project="animatezero-toyworld", config=vars(args) | {"dest": str(args.dest), "out": str(args.out)}
        )

    def log(values: dict, step: int) -> None:
        if run is not None:
            run.log(values)

    tok = CLIPTokenizer()
    command = f"{prog} " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.from_checkpoint is not None:
        return motion_for_checkpoint(args, log, tok, command)
    wanted = STAGES if args.stage == "all" else STAGES[: STAGES.index(args.stage) + 1]
    vae = train_vae(args.out, args, log)
    scale_file = args.out / "vae_scale.json"
    if not scale_file.exists():
        scale_file.write_text(json.dumps({"scale": normalize_latents(vae)}))
    else:  # the saved VAE state is the unnormalised one; reapply the same exact rescaling
        rescale_latents(vae, json.loads(scale_file.read_text())["scale"])
    if args.stage == "decoder":  # may run beside the UNet/motion stages: the latents do not depend on it
        train_decoder(args.out, args, log, vae)
        return 0
    if "text" not in wanted:
        return 0
    text = train_text(args.out, args, log, tok)
    if "unet" not in wanted:
        return 0
    pool = latent_pool(args.out, vae, args.pool_clips, args.seed)
    unet = train_unet(args.out, args, log, pool, tok, text)
    if args.stage == "unet":
        return 0
    unet = train_refine(args.out, args, log, pool, tok, text, unet)
    if args.stage == "refine":
        return 0
    unet = train_frame0(args.out, args, log, pool, tok, text, unet)
    if args.stage == "frame0":
        return 0
    motion = train_motion(args.out, args, log, pool, tok, unet, text)
    if "detail" in wanted:
        unet = train_detail(args.out, args, log, pool, tok, text, unet)
    vae = train_decoder(args.out, args, log, vae)
    if all((args.out / f"{s}.done").exists() for s in STAGES) or args.export_only:
        stages = {s: done_record(args.out, s) for s in STAGES}
        meta = provenance(command, stages=stages, latent_pool=done_record(args.out, "latents"))
        export(args.dest, vae, unet, text, motion, meta)
    if run is not None:
        run.finish()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
