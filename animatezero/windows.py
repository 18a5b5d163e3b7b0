"""Index math of the temporal attention patterns (paper Sec. 4.2, Fig. 3(b); docs/method.md §5.4). Pure functions.

A pattern says, for every query frame ``i`` of an ``f``-frame clip, which frame fills each of its ``S`` key slots,
which position embedding each slot carries, and which position the query carries. The motion module's attention is
then ``softmax(<W_q(z_i + p_q(i)), W_k(z_src(i,m) + p_k(i,m))>) . W_v(z_src(i,m) + p_k(i,m))`` over the slots ``m``.

* **Global** (AnimateDiff): slots are frames ``0..f-1`` at their own positions; the query at its own position.
* **Positional-corrected window** (AnimateZero): frame ``i`` sees the ``L_i = min(i, w, S-1)`` most recent frames
  ``i-L_i+1 .. i`` in the last ``L_i`` slots, and the first ``S - L_i`` slots hold copies of frame 0 (so frame 0 is always
  seen). With correction the query takes the last position ``S-1`` and slot ``m`` takes position ``m``; without it,
  every token keeps its own frame's position (the copies of frame 0 all carry position 0, the query position ``i``);
  for long clips (``f > S``, sliding windows) those positions are shifted by ``i - (S-1)`` so the query keeps the
  last position ``S-1`` and the window's frames stay inside the table (the copies of frame 0 keep position 0).
  ``S`` defaults to ``f`` and ``w`` to ``f`` (the paper); for long clips ``S`` is the motion module's position count.
  With ``w = S = f`` and correction, the last frame's row equals global attention's row (paper: the window of the last
  frame is the whole clip).
* **Anchored sliding window** (long clips under global attention): frame ``i`` sees frame 0 at position 0 and the
  ``S - 1`` frames of a window centred on ``i`` (clamped to ``1..f-1``) at positions ``1..S-1``; the query carries its
  own slot's position. With ``f <= S`` it is global attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class FramePattern:
    """``src [f, S]`` frame index per key slot, ``key_pos [f, S]`` and ``query_pos [f]`` position indices (long)."""

    src: Tensor
    key_pos: Tensor
    query_pos: Tensor

    @property
    def num_frames(self) -> int:
        return self.src.shape[0]

    @property
    def num_slots(self) -> int:
        return self.src.shape[1]


def global_pattern(num_frames: int) -> FramePattern:
    """AnimateDiff's temporal self-attention: every frame attends to every frame at their own positions."""
    frames = torch.arange(num_frames)
    src = frames.expand(num_frames, num_frames).clone()  # [f, f]
    return FramePattern(src=src, key_pos=src.clone(), query_pos=frames)


def window_pattern(
    num_frames: int, window: int | None = None, *, correction: bool = True, num_slots: int | None = None
) -> FramePattern:
    """Positional-corrected window attention (paper Sec. 4.2). ``window`` (w) defaults to ``num_frames``;
    ``num_slots`` (S) defaults to ``num_frames`` and must be >= 2 when there is more than one frame."""
    f = num_frames
    s = num_slots or f
    w = window or f
    if w < 1 or s < 1:
        raise ValueError(f"window size and slot count must be >= 1, got window={w}, slots={s}")
    if f > 1 and s < 2:
        raise ValueError("window attention over several frames needs at least 2 key slots")
    src = torch.zeros(f, s, dtype=torch.long)
    for i in range(f):
        n = min(i, w, s - 1)  # real frames i-n+1..i fill the last n slots; the rest are copies of frame 0
        if n:
            src[i, s - n :] = torch.arange(i - n + 1, i + 1)
    if correction:
        key_pos = torch.arange(s).expand(f, s).clone()
        query_pos = torch.full((f,), s - 1, dtype=torch.long)
    else:
        # own frame positions, shifted for long clips (f > S) so the query keeps the last position S-1; the copies of
        # frame 0 stay at position 0 (a shifted window never holds frame 0 itself: its frames start at i-S+2 >= 2)
        shift = (torch.arange(f) - (s - 1)).clamp(min=0)  # [f]
        key_pos = torch.where(src == 0, 0, src - shift[:, None])
        query_pos = torch.arange(f) - shift
    return FramePattern(src=src, key_pos=key_pos, query_pos=query_pos)


def anchored_sliding_pattern(num_frames: int, num_slots: int) -> FramePattern:
    """Global attention for clips longer than the position table: frame 0 plus a window of ``S-1`` frames around
    each query (see the module docstring). Equals :func:`global_pattern` when ``num_frames <= num_slots``."""
    f, s = num_frames, num_slots
    if f <= s:
        return global_pattern(f)
    if s < 2:
        raise ValueError("an anchored sliding window needs at least 2 key slots")
    src = torch.zeros(f, s, dtype=torch.long)
    query_pos = torch.zeros(f, dtype=torch.long)
    for i in range(f):
        start = min(max(i - (s - 1) // 2, 1), f - (s - 1))  # window i's frames: start..start+S-2, clamped to 1..f-1
        src[i, 1:] = torch.arange(start, start + s - 1)
        query_pos[i] = 0 if i == 0 else 1 + (i - start)
    key_pos = torch.arange(s).expand(f, s).clone()
    return FramePattern(src=src, key_pos=key_pos, query_pos=query_pos)


def bidirectional_window_pattern(
    num_frames: int, window: int | None = None, *, correction: bool = True, num_slots: int | None = None
) -> FramePattern:
    """Window attention anchored at both ends, for loops and two-image interpolation (our extension; docs/method.md §6).

    Frames in the first half use :func:`window_pattern` (anchored to frame 0); frames in the second half use the same
    pattern on the time-reversed clip, so they are anchored to the last frame, which plays frame 0's role (its copies
    fill the first slots; with correction the query takes the last position).
    """
    forward = window_pattern(num_frames, window, correction=correction, num_slots=num_slots)
    f = num_frames
    src, key_pos, query_pos = forward.src.clone(), forward.key_pos.clone(), forward.query_pos.clone()
    for i in range(f // 2, f):
        mirror = f - 1 - i
        src[i] = f - 1 - forward.src[mirror]
        key_pos[i] = forward.key_pos[mirror]
        query_pos[i] = forward.query_pos[mirror]
    return FramePattern(src=src, key_pos=key_pos, query_pos=query_pos)
