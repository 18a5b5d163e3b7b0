"""``compile=``: the UNet is traced once per input shape and control set, never again per sampling step or per call,
with no graph break on any path (fullgraph), and Inductor's cache is reused by a later process.

Tracing runs with a counting backend (Dynamo's tracing, no code generation), so the test is about what decides
compilation cost, not about Inductor's kernels; those run in ``scripts/benchmark.py --compile``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from animatezero import AnimateZeroPipeline, Controls
from models.compile import compile_options, uses_cuda_graphs

ROOT = Path(__file__).resolve().parents[1]
KW = dict(height=64, width=64, steps=3)


def test_compile_options():
    assert compile_options(False) is None and compile_options(True) == {}
    assert compile_options("reduce-overhead") == {"mode": "reduce-overhead"}
    assert compile_options({"backend": "eager"}) == {"backend": "eager"}
    with pytest.raises(ValueError, match="unknown compile mode 'fast'"):
        compile_options("fast")
    with pytest.raises(TypeError, match="compile must be"):
        compile_options(3)
    assert uses_cuda_graphs({"mode": "reduce-overhead"}) and uses_cuda_graphs({"options": {"triton.cudagraphs": True}})
    assert not uses_cuda_graphs({}) and not uses_cuda_graphs(None)


def test_cuda_graphs_refused_with_offload(micro_parts, tmp_path):
    with pytest.raises(ValueError, match="CUDA graphs.*offload=True"):
        AnimateZeroPipeline(*micro_parts, offload=True, compile="reduce-overhead")
    # without CUDA graphs: fine
    AnimateZeroPipeline(*micro_parts, offload=True, compile={"backend": "eager"}, compile_cache_dir=tmp_path)


@pytest.mark.slow  # Dynamo/Inductor compilation: minutes on a small CPU; .ci/run runs it (pytest -m slow)
def test_compiled_unet_traced_once_per_shape_and_controls(micro_parts, tmp_path):
    graphs = []

    def counting(gm, example_inputs):  # a torch.compile backend: record the graph, run it as traced
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    options = {"backend": counting, "fullgraph": True}  # fullgraph: any graph break is an error
    pipe = AnimateZeroPipeline(*micro_parts, compile=options, compile_cache_dir=tmp_path)
    eager = AnimateZeroPipeline(*micro_parts)  # the same networks, not compiled

    def both(call):
        return call(pipe), call(eager)

    ours, ref = both(lambda p: p.text_to_video("a cat", num_frames=4, seed=1, **KW))
    assert len(graphs) == 1  # three steps, one trace: the timestep is a tensor input, not a constant
    torch.testing.assert_close(ours.latents, ref.latents, rtol=0, atol=1e-5)
    both(lambda p: p.text_to_video("a dog", num_frames=4, seed=2, **KW))
    assert len(graphs) == 1  # another prompt and noise: same graph

    (image, ours), (_, ref) = both(lambda p: p.generate("a cat", num_frames=4, seed=3, **KW))
    assert len(graphs) == 3  # + the image UNet recording K/V, + the video UNet under the paper's controls
    torch.testing.assert_close(ours.latents, ref.latents, rtol=0, atol=1e-5)
    again, ref = both(lambda p: p.animate(p.text_to_image("a cat", record_kv=True, seed=3, **KW), num_frames=4, seed=3))
    assert len(graphs) == 3  # new processor objects and another K/V bank per call: no new trace
    torch.testing.assert_close(again.frames, ref.frames, rtol=0, atol=1e-5)
    torch.testing.assert_close(again.frames, ours.frames, rtol=0, atol=1e-5)  # animate(t2i(record)) == generate
    both(lambda p: p.animate(image, num_frames=4, seed=4, controls=Controls(kv_steps=(0.0, 0.5))))
    assert len(graphs) == 4  # K/V shared in the first half of the steps: the plain branch in the second half
    ours, ref = both(lambda p: p.interpolate(image, image, num_frames=4, seed=5))
    assert len(graphs) == 5  # two anchors: cross-faded keys/values, a window anchored at both ends
    torch.testing.assert_close(ours.frames, ref.frames, rtol=0, atol=1e-5)
    torch._dynamo.reset()


CHILD = """
import json, sys, torch
sys.path.insert(0, sys.argv[2])
from torch._dynamo.utils import counters
from models.compile import compile_module
net = compile_module(torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU()), cache_dir=sys.argv[1])
net(torch.randn(2, 8))
print(json.dumps(dict(counters["inductor"])))
"""


@pytest.mark.slow  # Dynamo/Inductor compilation: minutes on a small CPU; .ci/run runs it (pytest -m slow)
@pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None, reason="Inductor on CPU needs a C++ compiler"
)
def test_compile_cache_reused_by_a_later_process(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    cache = tmp_path / "torch_compile"

    def run() -> dict:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(cache), str(ROOT)], env=env, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    first, second = run(), run()
    assert first.get("fxgraph_cache_miss") == 1 and not first.get("fxgraph_cache_hit")
    assert second.get("fxgraph_cache_hit") == 1 and not second.get("fxgraph_cache_miss")
    assert (cache / "fxgraph").is_dir()
