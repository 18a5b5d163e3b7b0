"""Hydra entry points: generate, sweep, evaluate, app."""

import configs  # noqa: F401  (registers the ${asset:...} resolver)
