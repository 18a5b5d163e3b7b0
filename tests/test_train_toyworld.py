"""The toy-world trainer (:mod:`experiments.train_toyworld`, run by ``scripts/train_toyworld.py``) end to end at a
few steps per stage: every stage runs, the exported files are ordinary SD1.5 / AnimateDiff v2 checkpoints that the
pipeline loads and samples from, the manifest's SHA-256 match, a rerun skips the finished stages and exports the same
bytes, a second run from nothing trains the same bytes, and ``--from-checkpoint`` trains a motion module alone for an
existing checkpoint (with ``--frame0``, after continuing its UNet on frame 0), or with ``--motion-module --detail``
runs the last stage alone, or with ``--motion-init`` continues a given module."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from animatezero.pipeline import AnimateZeroPipeline
from experiments.train_toyworld import cli, export, loop, losses, recipe
from models.clip_text import CLIPTextModel
from models.tokenizer import CLIPTokenizer

TINY = [
    *("--threads 1 --save-every 1 --pool-clips 2".split()),
    *("--steps-vae 2 --batch-vae 2 --steps-decoder 2 --batch-decoder 1 --steps-text 2 --batch-text 2".split()),
    *("--steps-unet 2 --batch-unet 2 --steps-refine 2 --batch-refine 2 --steps-frame0 2 --batch-frame0 2".split()),
    *("--steps-motion 2 --batch-motion 1 --steps-detail 2 --batch-detail 2".split()),
]


@pytest.mark.slow  # every stage of the recipe, shortened: over a minute on a 2-core CPU; .ci/run runs it
def test_trainer_runs_every_stage_and_exports_loadable_files(tmp_path, capsys):
    threads = torch.get_num_threads()
    state, dest = tmp_path / "state", tmp_path / "dest"
    try:
        assert cli.main([*TINY, "--out", str(state), "--dest", str(dest)]) == 0
        manifest = json.loads((dest / "manifest.json").read_text())
        assert set(manifest["stages"]) == {"vae", "decoder", "text", "unet", "refine", "frame0", "motion", "detail"}
        assert manifest["latent_pool"]["clips"] == 2 and manifest["latent_pool"]["minutes"] > 0
        for name, entry in manifest["files"].items():
            assert export.sha256(dest / name) == entry["sha256"]
        pipe = AnimateZeroPipeline.from_single_files(
            dest / recipe.CHECKPOINT_NAME, dest / recipe.MOTION_NAME, default_size=(64, 64)
        )
        pipe.progress = False
        video = pipe.text_to_video("a red circle moving right on a black background", steps=2, num_frames=4, seed=0)
        assert video.frames.shape == (4, 3, 64, 64) and torch.isfinite(video.frames).all()

        capsys.readouterr()
        assert cli.main([*TINY, "--out", str(state), "--dest", str(dest)]) == 0  # rerun: nothing to train
        assert "resumed at step 2" in capsys.readouterr().out
        again = json.loads((dest / "manifest.json").read_text())
        assert again["files"] == manifest["files"]  # the same bytes

        # seeded: a second run from nothing trains and exports the same bytes
        fresh = tmp_path / "fresh"
        assert cli.main([*TINY, "--out", str(fresh / "state"), "--dest", str(fresh / "dest")]) == 0
        assert json.loads((fresh / "dest" / "manifest.json").read_text())["files"] == manifest["files"]

        # the exported UNet is the `detail` stage's EMA, which started from the `frame0` stage's (the UNet the motion
        # module trained on), from the `refine` stage's, from the `unet`'s
        chain = ("unet", "refine", "frame0", "detail")
        ema = {s: torch.load(state / f"{s}.pt", weights_only=False)["modules"]["ema_unet"] for s in chain}
        exported = pipe.unet.state_dict()
        assert all(torch.equal(exported[k], v.half().float()) for k, v in ema["detail"].items())
        for later, earlier in (("detail", "frame0"), ("frame0", "refine"), ("refine", "unet")):
            assert any(not torch.equal(ema[later][k], v) for k, v in ema[earlier].items())

        # the text encoder is the `text` stage's, frozen through the UNet and motion stages (as SD freezes CLIP)
        pretrained = torch.load(state / "text.pt", weights_only=False)["modules"]["text"]
        shipped = pipe.text_encoder.state_dict()
        assert all(torch.equal(shipped[k], v.half().float()) for k, v in pretrained.items())

        # --from-checkpoint: a motion module alone, for an existing single file; the checkpoint goes out byte for byte
        base = dest / recipe.CHECKPOINT_NAME
        other = tmp_path / "other"
        args = [*TINY, "--out", str(other / "state"), "--dest", str(other / "dest"), "--from-checkpoint", str(base)]
        assert cli.main(args) == 0
        derived = json.loads((other / "dest" / "manifest.json").read_text())
        base_sha = manifest["files"][base.name]["sha256"]
        assert set(derived["stages"]) == {"motion"} and not (other / "state" / "unet.pt").exists()
        assert derived["files"][base.name] == manifest["files"][base.name]
        assert derived["base_checkpoint"]["sha256"] == manifest["files"][base.name]["sha256"]
        assert derived["base_checkpoint"]["stages"] == manifest["stages"]  # provenance read from the manifest beside it
        mm = derived["files"][recipe.MOTION_NAME]["sha256"]
        assert mm != manifest["files"][recipe.MOTION_NAME]["sha256"]  # a module of its own, not a copy
        with pytest.raises(SystemExit):
            cli.main([*args, "--stage", "unet"])

        # a finished motion stage asked for more steps continues, and the manifest records each run
        assert cli.main([*args, "--steps-motion", "3"]) == 0
        extended = json.loads((other / "dest" / "manifest.json").read_text())["stages"]["motion"]
        assert extended["steps"] == 3
        assert [(r["start"], r["planned"]) for r in extended["runs"]] == [(0, 2), (2, 3)]
        assert all(r["unet"] == base_sha[:12] and "schedule_start" not in r for r in extended["runs"])

        # --restart-schedule: a continuation gets a learning-rate schedule of its own, recorded with its rate
        assert cli.main([*args, "--steps-motion", "5", "--restart-schedule", "--lr-motion", "1e-4"]) == 0
        runs = json.loads((other / "dest" / "manifest.json").read_text())["stages"]["motion"]["runs"]
        assert runs[-1] == {
            "start": 3,
            "planned": 5,
            "threads": 1,
            "lr": 1e-4,
            "schedule_start": 3,
            "unet": base_sha[:12],
        }
        assert loop.lr_at(3 - 3, 5 - 3, 1e-4) == pytest.approx(1e-4 / 50)  # warm-up from the restart

        # a module for a checkpoint that an earlier --from-checkpoint run exported: the provenance is the original's
        again_base = other / "dest" / recipe.CHECKPOINT_NAME
        args2 = [*TINY, "--out", str(tmp_path / "o2"), "--dest", str(tmp_path / "d2"), "--from-checkpoint"]
        assert cli.main([*args2, str(again_base)]) == 0
        second = json.loads((tmp_path / "d2" / "manifest.json").read_text())["base_checkpoint"]
        assert second["stages"] == manifest["stages"] and second["trained_by"] == manifest["trained_by"]

        # --frame0: the checkpoint's UNet continued on frame 0 first; a new checkpoint, the motion state continued
        args0 = [*TINY, "--out", str(other / "state"), "--dest", str(tmp_path / "d0"), "--from-checkpoint", str(base)]
        assert cli.main([*args0, "--steps-motion", "6", "--frame0"]) == 0
        cont = json.loads((tmp_path / "d0" / "manifest.json").read_text())
        assert set(cont["stages"]) == {"frame0", "motion"} and cont["stages"]["frame0"]["steps"] == 2
        assert cont["files"][base.name]["sha256"] != base_sha and cont["base_checkpoint"]["sha256"] == base_sha
        assert cont["stages"]["motion"]["runs"][-1]["unet"] == base_sha[:12] + " + frame0"

        # a module for that new checkpoint: its provenance is the --frame0 run's, with that run's base chained on
        args3 = [*TINY, "--out", str(tmp_path / "o3"), "--dest", str(tmp_path / "d3"), "--from-checkpoint"]
        assert cli.main([*args3, str(tmp_path / "d0" / base.name)]) == 0
        third = json.loads((tmp_path / "d3" / "manifest.json").read_text())["base_checkpoint"]
        assert third["stages"] == cont["stages"] and third["base_checkpoint"] == cont["base_checkpoint"]
        assert third["base_checkpoint"]["stages"] == manifest["stages"]

        # --motion-module --detail: the recipe's last stage for a checkpoint and module whose states are gone; the
        # module goes out byte for byte, the checkpoint with the continued UNet, and the provenance names both
        module = dest / recipe.MOTION_NAME
        args4 = [*TINY, "--out", str(tmp_path / "o4"), "--dest", str(tmp_path / "d4"), "--from-checkpoint", str(base)]
        assert cli.main([*args4, "--motion-module", str(module), "--detail"]) == 0
        fourth = json.loads((tmp_path / "d4" / "manifest.json").read_text())
        assert set(fourth["stages"]) == {"detail"} and fourth["stages"]["detail"]["steps"] == 2
        assert fourth["motion_module"] == {"path": module.name, "sha256": manifest["files"][module.name]["sha256"]}
        assert fourth["files"][module.name] == manifest["files"][module.name]
        assert fourth["files"][base.name]["sha256"] != base_sha
        assert fourth["base_checkpoint"]["stages"] == manifest["stages"]
        assert not (tmp_path / "o4" / "motion.pt").exists()
        with pytest.raises(SystemExit):  # --detail alone belongs to --from-checkpoint; the recipe runs the stage itself
            cli.main([*TINY, "--out", str(tmp_path / "o5"), "--dest", str(tmp_path / "d5"), "--detail"])

        # --motion-init: the motion stage starts from a given module (one with weights of its own, no zeroed
        # proj_out, so that a fresh start would show) and the provenance names it
        gen = torch.Generator().manual_seed(0)
        start = {
            k: (v.float() + 0.1 * torch.randn(v.shape, generator=gen)).half() for k, v in load_file(module).items()
        }
        init = tmp_path / "init.safetensors"
        save_file(start, init)
        args6 = [*TINY, "--out", str(tmp_path / "o6"), "--dest", str(tmp_path / "d6"), "--from-checkpoint", str(base)]
        assert cli.main([*args6, "--motion-init", str(init)]) == 0
        sixth = json.loads((tmp_path / "d6" / "manifest.json").read_text())
        assert sixth["motion_init"] == {"path": init.name, "sha256": export.sha256(init)}
        assert sixth["files"][base.name] == manifest["files"][base.name]
        continued = load_file(tmp_path / "d6" / module.name)
        assert continued.keys() == start.keys()
        assert any(not torch.equal(continued[k], v) for k, v in start.items())  # trained ...
        assert all((continued[k].float() - v.float()).abs().max() < 0.02 for k, v in start.items())  # ... from init
        with pytest.raises(SystemExit):  # a module is either used as it is or trained from, not both
            cli.main([*args6, "--motion-init", str(init), "--motion-module", str(module)])
        with pytest.raises(SystemExit):
            cli.main([*TINY, "--out", str(tmp_path / "o7"), "--motion-init", str(init)])
    finally:
        torch.set_num_threads(threads)


def test_caption_probe_trains_every_attribute_word():
    """The text encoder's pre-training loss reaches the token embedding of every attribute word (the motion words
    included, which a single frame does not show)."""
    torch.manual_seed(0)
    tok, text = CLIPTokenizer(), CLIPTextModel(recipe.CLIP)
    probe = losses.CaptionProbe(recipe.CLIP.width)
    caps = ["a red circle moving left on a black background", "a green square moving right on a gray background"]
    ids = tok(caps)
    loss = probe(text(ids), ids, caps)
    loss.backward()
    grad = text.text_model.embeddings.token_embedding.weight.grad
    for word in ("left", "right", "red", "green", "circle", "square", "black", "gray"):
        (token,) = tok.encode(word)
        assert grad[token].norm() > 0, word
    assert loss.item() > 0
    outside = ["", "a photo of a cat"]
    ids = tok(outside)
    assert probe(text(ids), ids, outside).item() == 0


def test_split_batch_adds_up_its_parts_gradients_in_a_fixed_order():
    """SplitBatch (the UNet and motion stages' batches run as parts in threads of their own): the step's loss and
    gradients are the size-weighted sums of the parts', each part drawing from its own seeded RNGs, so two steps
    from the same RNG state agree bit for bit; with one part it is the plain step on the whole batch."""
    import random

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    params = list(model.parameters())
    calls = []

    def loss_fn(rng, gen, n):
        calls.append((gen is None, n))
        x = torch.randn(n, 4, generator=gen)  # [n, 4]
        target = torch.tensor([[rng.random()] for _ in range(n)])  # [n, 1]
        return (model(x) - target).pow(2).mean(), {}

    split = loop.SplitBatch(loss_fn, batch=5, parts=2, params=params)
    assert split.sizes == [3, 2]
    loss, _ = split(random.Random(7))
    grads = [p.grad.clone() for p in params]

    # by hand, one part after the other, from the same seeds
    rng = random.Random(7)
    seeds = [rng.randrange(2**62) for _ in range(2)]
    want_loss, want = 0.0, [torch.zeros_like(p) for p in params]
    for seed, n in zip(seeds, (3, 2)):
        part, _ = loss_fn(random.Random(seed), torch.Generator().manual_seed(seed), n)
        want_loss = want_loss + part.detach() * n / 5
        for w, g in zip(want, torch.autograd.grad(part * n / 5, params)):
            w += g
    assert torch.allclose(loss, want_loss) and all(torch.allclose(g, w) for g, w in zip(grads, want))

    again, _ = split(random.Random(7))
    assert torch.equal(again, loss) and all(torch.equal(p.grad, g) for p, g in zip(params, grads))
    split.close()

    calls.clear()
    for p in params:
        p.grad = None
    whole = loop.SplitBatch(loss_fn, batch=5, parts=1, params=params)
    whole(random.Random(7))
    assert whole.pool is None and calls == [(True, 5)] and all(p.grad is not None for p in params)
