"""Bad sweep items and values: one line naming the item, exit status 2, before the sweep folder exists."""

import pytest

from experiments import sweep as sw
from tests.console import run_main

BAD = [
    ("prompts.items=[{id: a, prompt: x, seed: -5}]", "prompts.items[0] (id 'a', prompt set 'smoke'): seed=-5"),
    ("prompts.items=[{id: a, seed: 1}]", "prompts.items[0] (id 'a', prompt set 'smoke') has no prompt"),
    ("prompts.items=[{id: a, prompt: x}]", "has no seed"),
    ("prompts.items=[{id: a, prompt: x, seed: 1.5}]", "seed=1.5 is not a whole number"),
    ("prompts.items=[{id: a, prompt: 7, seed: 1}]", "prompt and negative_prompt must be text"),
    ("prompts.items=[x]", "prompts.items[0] of prompt set 'smoke' is 'x'"),
    ("prompts.items=[{id: a, prompt: x, seed: 18446744073709551615}]", "with repeats=2"),
    ("size=4096", "size=4096: height must be"),
    ("frames=2000", "more than the 1024"),
    ("sweep_dir=", "sweep_dir= is empty"),
]


@pytest.mark.parametrize("arg, named", BAD, ids=[a[:40] for a, _ in BAD])
def test_bad_sweep_value(tmp_path, monkeypatch, capsys, arg, named):
    root = tmp_path / "sweep"
    argv = ["sweep", "debug=tiny", "prompts=smoke", f"paths.cache_dir={tmp_path / 'cache'}", f"sweep_dir={root}"]
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(sw.main, [*argv, "repeats=2", arg], monkeypatch, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and named in lines[0], err
    assert not root.exists() and sorted(p.name for p in tmp_path.iterdir()) == []
