"""Train the toy-world model (the shipped files in ``animatezero/assets/toyworld/``); the trainer is the module
:mod:`experiments.train_toyworld` (recipe, stages, losses, export). Options: ``--help``.

    python scripts/train_toyworld.py                       # the recipe, from nothing: under 2 h on 2 cores
    python scripts/train_toyworld.py --from-checkpoint CK.safetensors --motion-init MM.safetensors --steps-motion 2000 \
        --lr-motion 2e-4                                   # continue a module on a checkpoint (the shipped files' last step)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.train_toyworld import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
