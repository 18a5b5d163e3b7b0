"""Regenerate the paper's tables from evaluated sweep directories (Markdown, CSV, frame strips): the command line of
:mod:`evaluation.tables`, which says what is written. ``python -m evaluation.tables`` is the same.

    python scripts/make_tables.py outputs/sweeps/t2v_table outputs/sweeps/ablation_fig6 [--out tables]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.tables import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
