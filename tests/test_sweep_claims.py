"""Runners sharing one sweep directory split its items: each item is claimed (a lock on ``.<item>.claim``) before it
is made, so two identical sweeps no longer both compute everything and each report all done. A claim dies with its
process (``kill -9`` included), so the items of a dead runner are taken over."""

import re
import subprocess
import sys
import textwrap
import threading
import time

from experiments import common
from experiments import sweep as sw
from experiments.runs import claim, claim_path, read_run
from tests.sweeps import sweep_cfg

CONFIGURATIONS = "configurations={animatediff:{preset:animatediff},paper:{preset:paper}}"
ITEMS = ["animatediff/cat_s1", "animatediff/waves_s2", "paper/cat_s1", "paper/waves_s2"]




def item_dirs(root):
    return sorted(p.parent.relative_to(root).as_posix() for p in root.rglob("run.json"))


def test_two_runners_split_the_items(tmp_path, tiny_cache, monkeypatch, capsys):
    root = tmp_path / "sweep"
    cfgs = [sweep_cfg(tiny_cache, root, CONFIGURATIONS) for _ in range(2)]
    made, errors = [], []
    both_loaded = threading.Barrier(2)
    real_load = common.load_pipeline

    def load_pipeline(*args, **kwargs):
        pipe = real_load(*args, **kwargs)
        both_loaded.wait(timeout=300)  # both runners have planned all four items before either makes one

        def slow(method):
            def call(*a, **k):
                made.append(threading.current_thread().name)
                time.sleep(1.0)  # long enough for the other runner to meet this item's claim
                return method(*a, **k)

            return call

        pipe.animate, pipe.text_to_video = slow(pipe.animate), slow(pipe.text_to_video)
        return pipe

    monkeypatch.setattr(common, "load_pipeline", load_pipeline)

    def runner(cfg):
        try:
            sw.sweep(cfg)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=runner, args=(cfg,), name=f"runner{i}") for i, cfg in enumerate(cfgs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert errors == []
    assert item_dirs(root) == ITEMS and all(read_run(root / i)["status"] == "done" for i in ITEMS)
    assert len(made) == 4  # each item made once (without claims: 8, every item twice)
    assert sorted(made) == ["runner0", "runner0", "runner1", "runner1"]  # and the work split between them
    out = capsys.readouterr().out
    summaries = [line for line in out.splitlines() if "summary:" in line]
    assert len(summaries) == 2 and all("summary: 2 done" in line for line in summaries)
    for line in summaries:  # each reports the other's two items (made by now, or still being made)
        assert sum(int(n) for n in re.findall(r"(\d+) (?:being )?made by another runner", line)) == 2, line
    assert not list(root.rglob(".*claim"))  # claims are removed with their items


HOLD = textwrap.dedent(
    """
    import fcntl, json, os, socket, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
    print("held", flush=True)
    time.sleep(600)
    """
)


def test_a_held_claim_is_left_alone_and_a_dead_runners_claim_is_taken_over(tmp_path, tiny_cache, capsys):
    root = tmp_path / "sweep"
    cfg = lambda: sweep_cfg(tiny_cache, root, "prompts.items=[{id: cat, prompt: x, seed: 1}]")  # noqa: E731
    path = claim_path(root / "paper" / "cat_s1")
    path.parent.mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "held"
        sw.sweep(cfg())  # another runner (alive) holds the only item: it is not made here
        assert read_run(root / "paper" / "cat_s1") is None
        out = capsys.readouterr().out
        assert f"1 being made by another runner (pid {other.pid} on" in out and "0 done" in out
    finally:
        other.kill()  # kill -9: the claim file stays, its lock goes with the process
        other.wait()
    assert path.exists()
    sw.sweep(cfg())
    assert read_run(root / "paper" / "cat_s1")["status"] == "done" and not path.exists()
    assert "summary: 1 done" in capsys.readouterr().out


def test_claim_is_exclusive_until_released(tmp_path):
    item = tmp_path / "label" / "item"
    first = claim(item)
    assert first is not None and claim(item) is None  # a second open file description cannot take it
    first.release()
    again = claim(item)
    assert again is not None
    again.release()
    assert not claim_path(item).exists()
