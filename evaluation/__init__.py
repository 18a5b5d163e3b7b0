"""Metrics for generated videos, on tensors and files only (see ``../shared/design/METRICS.md``)."""
