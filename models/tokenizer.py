"""CLIP's byte-level BPE tokenizer, as SD1.5 uses it: ``[BOS] + tokens[:75] + [EOS]``, padded with EOS to 77.

A small re-implementation of OpenAI CLIP's ``simple_tokenizer``. The merges come from ``bpe_simple_vocab_16e6.txt.gz``,
the file OpenAI ships and the ``open_clip_torch`` wheel bundles; by default it is read from the installed
``open_clip`` package directory without importing ``open_clip`` (which would pull in timm and friends). Nothing is
downloaded. ``ftfy`` text repair is applied when ``ftfy`` is importable, as in CLIP; ordinary prompts do not need it.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import warnings
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import regex
import torch

try:
    import ftfy
except ImportError:  # only changes mojibake / odd unicode; plain prompts tokenize the same
    ftfy = None

BOS = 49406  # <|startoftext|>
EOS = 49407  # <|endoftext|>, also SD1.5's pad token
CONTEXT_LENGTH = 77
NUM_MERGES = 49152 - 256 - 2  # merges used by CLIP: the vocab is 256 bytes x {plain, </w>} + merges + 2 specials

_SPECIALS = ("<|startoftext|>", "<|endoftext|>")
# CLIP's pre-tokenizer: specials, English contractions, letter runs, single digits, runs of other non-space symbols.
_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


def default_bpe_path() -> Path:
    """``bpe_simple_vocab_16e6.txt.gz`` inside the installed ``open_clip`` package (located, not imported)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "CLIP BPE vocabulary not found: install open_clip_torch (it bundles bpe_simple_vocab_16e6.txt.gz) "
            "or pass bpe_path= to CLIPTokenizer"
        )
    return Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"


@cache
def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible byte -> printable-character map: printable Latin-1 bytes map to themselves, the
    other 68 bytes (controls, space, ...) to code points 256 and up, so BPE symbols never contain whitespace."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {b: chr(b) for b in printable} | {b: chr(256 + n) for n, b in enumerate(others)}


def clean(text: str) -> str:
    """CLIP's normalisation: ftfy repair, HTML unescape (twice), whitespace collapse, lowercase."""
    if ftfy is not None:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return " ".join(text.split()).lower()


class CLIPTokenizer:
    """Prompt(s) -> ids ``[b, 77]`` (int64) in SD1.5's layout; ``encode`` gives the bare BPE ids."""

    def __init__(self, bpe_path: str | Path | None = None, context_length: int = CONTEXT_LENGTH):
        self.context_length = context_length
        with gzip.open(bpe_path or default_bpe_path(), "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]  # line 0 is a version header
        symbols = list(bytes_to_unicode().values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + list(_SPECIALS)
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.decoder = {i: tok for tok, i in self.encoder.items()}
        if (self.encoder[_SPECIALS[0]], self.encoder[_SPECIALS[1]]) != (BOS, EOS):
            raise ValueError(f"{bpe_path}: not CLIP's BPE file (vocab of {len(vocab)} entries, expected 49408)")
        self.bpe_ranks = {m: r for r, m in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.cache: dict[str, list[str]] = {s: [s] for s in _SPECIALS}

    def bpe(self, word: str) -> list[str]:
        """Greedy BPE of one pre-token (already byte-mapped): repeatedly merge the lowest-ranked adjacent pair."""
        if word in self.cache:
            return self.cache[word]
        parts = [*word[:-1], word[-1] + "</w>"]  # end-of-word marker on the last symbol
        while len(parts) > 1:
            pairs = set(zip(parts, parts[1:]))
            best = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if best not in self.bpe_ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self.cache[word] = parts
        return parts

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text`` without BOS/EOS and without truncation."""
        ids = []
        for token in _PATTERN.findall(clean(text)):
            word = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[p] for p in self.bpe(word))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Inverse of ``encode`` up to cleaning (lowercase, collapsed whitespace); specials are kept as text."""
        byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        text = "".join(self.decoder[int(i)] for i in ids if int(i) not in (BOS, EOS))
        return bytearray(byte_decoder[c] for c in text).decode("utf-8", "replace").replace("</w>", " ").strip()

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        """``[BOS] + ids[:75] + [EOS]``, padded with EOS to ``context_length`` -> ``[b, 77]`` int64.

        Longer prompts are truncated (as SD1.5 / HF ``truncation=True`` do) with a warning naming what is lost.
        """
        if isinstance(texts, str):
            texts = [texts]
        keep = self.context_length - 2
        out = torch.full((len(texts), self.context_length), EOS, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = self.encode(text)
            if len(ids) > keep:
                warnings.warn(
                    f"prompt is {len(ids)} tokens, CLIP takes {keep}: dropping the last {len(ids) - keep} "
                    f"({self.decode(ids[keep:])!r})",
                    stacklevel=2,
                )
                ids = ids[:keep]
            out[row, : len(ids) + 2] = torch.tensor([BOS, *ids, EOS])
        return out
