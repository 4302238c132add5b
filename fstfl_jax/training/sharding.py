"""The 1-D data-parallel mesh and the two shardings the code uses.

Batches are split over `'data'` on their leading clip axis (never on `N*T`, so every frame of
a clip stays on one device for the GSF shifts and STC correlations); the train state is
replicated. Under `jax.jit` XLA then inserts the gradient and BatchNorm all-reduces itself.
"""

from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
  """A `('data',)` mesh over all devices of the job, or over the first `num_devices`."""
  devices = jax.devices()
  n = num_devices or len(devices)
  if n > len(devices):
    raise ValueError(f"Asked for a mesh of {n} devices; only {len(devices)} are present.")
  # Auto, not the Explicit default: under Explicit sharding-in-types, flax's Dropout fails
  # (its random mask is unsharded while the activations are sharded on 'data'). With Auto axes
  # XLA propagates the batch sharding from the inputs, which is all this data-parallel step needs.
  return jax.make_mesh((n,), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices[:n])


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Leading (clip) axis split over `'data'`, the rest whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch(global_batch: int, mesh: jax.sharding.Mesh) -> None:
  """Raises unless the global batch splits evenly over the devices (and so the processes)."""
  if global_batch % mesh.size:
    raise ValueError(
      f"input.batch_size={global_batch} must be divisible by the {mesh.size} devices of the mesh.")


def to_global(batch: Any, mesh: jax.sharding.Mesh) -> Any:
  """Per-process numpy batch (leading axis = local clips) -> global arrays sharded on clips."""
  sharding = data_sharding(mesh)
  return jax.tree.map(
    lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def compile_in_lockstep(jitted: Any, *args: Any, name: str, timeout_s: int = 3600) -> Any:
  """Compiles `jitted` for `args` ahead of time; then all processes wait for each other.

  Why: on CPU the first cross-process collective (gloo) gives up after 30 s, while processes
  can finish compiling minutes apart. The barrier uses the coordination service (no
  collective), like Orbax's; JAX exposes it only through its distributed client.
  """
  compiled = jitted.lower(*args).compile()
  if jax.process_count() > 1:
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
    distributed.global_state.client.wait_at_barrier(name, timeout_in_ms=timeout_s * 1000)
  return compiled
