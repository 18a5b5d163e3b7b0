"""Hand-written Stable Diffusion 1.5 + AnimateDiff networks, loaders and the DDIM sampler.

This package knows nothing of AnimateZero: it is a faithful SD1.5/AnimateDiff implementation whose module
names equal the original checkpoint keys, so loading is a strict ``load_state_dict``.
"""
