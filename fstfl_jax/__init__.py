"""fstfl-jax: FSTFL-Net (GSF-ResNet-50 + STC) for video action recognition in JAX/Flax."""
