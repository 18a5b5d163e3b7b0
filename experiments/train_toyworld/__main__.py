"""``python -m experiments.train_toyworld [options]``: the toy-world trainer (see the package)."""

from experiments.train_toyworld.cli import main

raise SystemExit(main(prog="python -m experiments.train_toyworld"))
