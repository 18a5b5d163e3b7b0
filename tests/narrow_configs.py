"""The loader tests' model widths: narrower than the configs' ``tiny()`` variants to keep them fast, still 4 levels
with attention on levels 0-2 (test_checkpoint_loading, test_bad_checkpoints, test_reader_safety)."""

from models.config import CLIPTextConfig, UNetConfig, VAEConfig

UNET_CFG = UNetConfig(model_channels=32, channel_mult=(1, 1, 2, 2), context_dim=64)
VAE_CFG = VAEConfig(ch=32, ch_mult=(1, 1, 2, 2))
CLIP_CFG = CLIPTextConfig(vocab_size=1000, width=64, layers=2, heads=1, mlp_dim=256)  # heads = 64 // 64
