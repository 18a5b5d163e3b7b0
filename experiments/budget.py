"""The work one app request may ask for, in megapixel-steps: UNet passes over one frame x its pixels / 1e6 (a 512x512
image of 25 steps is 6.6). A request over the budget is refused before any work, saying what would fit
(``animatezero-app --budget N`` sets it; docs/reliability.md, "App requests")."""

from __future__ import annotations

from animatezero.checks import MIN_SIZE

# The defaults are sized for SD1.5: 16 is two 512x512 candidates of 25 steps on a CPU; 2000 is 19 clips of 16 frames
# at 512x512 and 25 steps on a GPU. The toy world's requests (64x64) are far below both.
BUDGET = {"cpu": 16.0, "cuda": 2000.0}


class OverBudgetError(ValueError):
    """A request asks for more work than the app's per-request budget."""


def check_work(
    budget: float, device: str, what: str, count: int, steps: int, height: int, width: int, unit: str, extra: int = 0
) -> None:
    """Refuse ``(count + extra) x steps`` UNet passes at ``height x width`` when over ``budget``, saying what fits when
    one setting changes: the steps, the ``count`` (of ``unit``: candidates, frames), or the size."""
    pixels = height * width / 1e6
    work = (count + extra) * steps * pixels
    if work <= budget:
        return
    n_steps, n_count = int(budget / ((count + extra) * pixels)), int(budget / (steps * pixels)) - extra
    side = int((budget * 1e6 / ((count + extra) * steps)) ** 0.5) // 64 * 64
    fits = [f"at most {n_steps} steps"] if n_steps >= 1 else []
    fits += [f"at most {n_count} {unit} at {steps} steps"] if n_count >= 1 else []
    fits += [f"at most {side}x{side} pixels"] if side >= MIN_SIZE else []
    amount = f"{work:,.0f}" if work >= 10 else f"{work:.2g}"
    raise OverBudgetError(
        f"{what} is {amount} megapixel-steps ({count} {unit} x {steps} steps at {width}x{height}), over this "
        f"app's budget of {budget:g} per request on {device} (animatezero-app --budget N). What "
        f"fits, changing one setting: {', or '.join(fits) or 'nothing at this size; lower several'}"
    )
