"""Inspect a checkpoint: what it is, what it holds, and how its keys compare with our modules (the command line of
:mod:`models.inspection`, which says what is printed). Exit status 0 when the file would load, 1 otherwise, 2 when
it cannot be read.

    python scripts/inspect_checkpoint.py path/to/model.safetensors [--keys] [--sha256]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.inspection import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
