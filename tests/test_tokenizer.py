"""Our CLIP tokenizer against open_clip's SimpleTokenizer and a transformers CLIPTokenizer built offline from the
same BPE file. open_clip pads with 0; SD1.5 (and ours, and HF's) pad with EOS = 49407."""

from __future__ import annotations

import ast
import builtins
import gzip
import importlib.util
import json
from pathlib import Path

import pytest
import torch

import models.tokenizer
from models.tokenizer import BOS, EOS, NUM_MERGES, CLIPTokenizer, default_bpe_path

PROMPTS = [
    "a photo of a cat",
    "A Photo of  a CAT",
    "  a corgi running on the beach, golden hour, 4k, highly detailed  ",
    "an astronaut riding a horse on mars, trending on artstation",
    "close-up of a woman's face; she's smiling (soft light) #portrait @2x",
    "1girl, solo, cherry blossoms, 8k uhd, dslr",
    "café crème brûlée — naïve façade",
    "",
]
LONG = " ".join(f"word{i} and a cat" for i in range(40))


@pytest.fixture(scope="module")
def tok():
    return CLIPTokenizer()


@pytest.fixture(scope="module")
def open_clip_tokenizer():
    """open_clip's SimpleTokenizer, loaded from its file: importing the open_clip package costs ~10 s (timm etc.)."""
    pytest.importorskip("ftfy")
    spec = importlib.util.spec_from_file_location("open_clip_tokenizer", default_bpe_path().parent / "tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SimpleTokenizer()


def test_exact_ids(tok):
    ids = tok("a photo of a cat")
    assert ids.shape == (1, 77) and ids.dtype == torch.long
    assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert (ids[0, 7:] == EOS).all()
    assert tok.encode("a photo of a cat") == [320, 1125, 539, 320, 2368]


def test_matches_open_clip_up_to_padding(tok, open_clip_tokenizer):
    ours, ref = tok(PROMPTS), open_clip_tokenizer(PROMPTS)
    for row, prompt in enumerate(PROMPTS):
        n = len(tok.encode(prompt)) + 2
        assert ours[row, :n].tolist() == ref[row, :n].tolist(), prompt
        assert (ours[row, n:] == EOS).all() and (ref[row, n:] == 0).all()


def test_long_prompt_truncates_with_warning(tok, open_clip_tokenizer):
    n = len(tok.encode(LONG))
    assert n > 75
    with pytest.warns(UserWarning, match=f"dropping the last {n - 75}"):
        ids = tok(LONG)
    assert ids.shape == (1, 77)
    assert ids[0, 0] == BOS and ids[0, -1] == EOS
    assert ids[0, 1:-1].tolist() == tok.encode(LONG)[:75]
    assert ids.tolist() == open_clip_tokenizer(LONG).tolist()  # no padding here, so no difference


def test_decode_round_trip(tok):
    assert tok.decode(tok("A photo of  a CAT!")[0].tolist()) == "a photo of a cat !"


def test_bpe_path_injectable(tok):
    assert tok.encode(PROMPTS[2]) == CLIPTokenizer(bpe_path=str(default_bpe_path())).encode(PROMPTS[2])


def test_does_not_import_open_clip(monkeypatch):
    """The BPE file is found through the package spec; importing open_clip itself would cost ~10 s."""
    tree = ast.parse(Path(models.tokenizer.__file__).read_text())
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    assert not [m for m in imported if m.split(".")[0] == "open_clip"]

    real_import = builtins.__import__

    def guarded_import(name, *args, **kwargs):
        assert not name.startswith("open_clip"), "CLIPTokenizer() must not import open_clip"
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", guarded_import)
    CLIPTokenizer()


def test_matches_transformers_tokenizer_built_offline(tok, tmp_path):
    """SD1.5's tokenizer (HF CLIPTokenizer, padding='max_length', truncation) rebuilt from the bundled BPE file."""
    transformers = pytest.importorskip("transformers")
    lines = gzip.open(default_bpe_path(), "rt", encoding="utf-8").read().split("\n")
    (tmp_path / "vocab.json").write_text(json.dumps(tok.encoder))
    (tmp_path / "merges.txt").write_text("\n".join(["#version: 0.2", *lines[1 : NUM_MERGES + 1]]) + "\n")
    hf = transformers.CLIPTokenizer.from_pretrained(tmp_path)
    ordinary = [p for p in PROMPTS if p]
    ref = hf(ordinary + [LONG], padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with pytest.warns(UserWarning):
        ours = tok(ordinary + [LONG])
    assert ours.tolist() == ref.tolist()
