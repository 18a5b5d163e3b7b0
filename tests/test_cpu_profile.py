"""The CPU speed script runs end to end at a tiny size (its figures are for people; these runs check that it works
and that what it compares is the same computation)."""

import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import cpu_profile  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _keep_thread_count():
    """The script sets the process's torch thread count (default 1); the rest of the suite keeps its own."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_window_profile_compares_equal_layers(capsys):
    cpu_profile.main(["window", "--tokens", "8", "--dim", "32", "--heads", "2", "--repeats", "1"])
    out = capsys.readouterr().out
    err = float(re.search(r"max error vs gathered keys ([0-9.e+-]+)", out).group(1))
    assert err < 1e-5, out
    assert re.search(r"\d+\.\d\dx", out), out


def test_step_profile_runs_both_sides_on_the_same_input(capsys):
    cpu_profile.main(["step", "--size", "tiny", "--height", "32", "--width", "32", "--frames", "2", "--repeats", "1"])
    out = capsys.readouterr().out
    assert "ours / diffusers, process CPU time" in out, out
    diff = float(re.search(r"max \|ours - diffusers\| = ([0-9.e+-]+)", out).group(1))
    assert diff < 1e-4, out


def test_cached_allocator_mode_runs_and_says_so():
    """``--allocator cached`` switches glibc's malloc for the whole process, so it runs in a child process here."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "cpu_profile.py"
    args = ["window", "--tokens", "8", "--dim", "32", "--heads", "2", "--repeats", "1", "--allocator", "cached"]
    run = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "cached allocator" in run.stdout, run.stdout
    err = float(re.search(r"max error vs gathered keys ([0-9.e+-]+)", run.stdout).group(1))
    assert err < 1e-5, run.stdout
