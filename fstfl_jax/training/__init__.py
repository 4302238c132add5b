"""Training: the mesh, the train state and optimizer, the jitted train and eval steps, the loop,
checkpoints, logs and the finite-state guard. Imports `fstfl_jax.models` and `data_pipelines`,
nothing else of the package."""
