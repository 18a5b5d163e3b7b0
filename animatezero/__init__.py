"""AnimateZero: training-free image animation with AnimateDiff (Yu et al., arXiv 2312.03793)."""
