"""The progress bar over sampling steps, shared by the pipeline (``pipe.progress``) and the entry points."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def step_bar(
    total: int, desc: str, callback: Callable | None = None, enabled: bool = True
) -> Iterator[Callable | None]:
    """Yield a per-step callback that advances a tqdm bar of ``total`` steps, then calls ``callback``; with
    ``enabled=False`` no bar is drawn and ``callback`` itself is yielded."""
    if not enabled:
        yield callback
        return
    from tqdm.auto import tqdm

    with tqdm(total=int(total), desc=desc, unit="step", leave=False, dynamic_ncols=True) as bar:

        def step(info) -> None:
            bar.update(1)
            if callback is not None:
                callback(info)

        yield step
