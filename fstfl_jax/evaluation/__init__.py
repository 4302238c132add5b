"""Evaluation: test protocols, the loop that scores every video of a split once, result files and
per-video score files. Builds on `fstfl_jax.training` (steps, mesh, checkpoints)."""
