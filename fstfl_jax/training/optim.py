"""SGD with the GSF warm-up + cosine schedule, weight decay and global-norm clipping.

Update order matches PyTorch's `clip_grad_norm_` followed by `SGD(momentum, weight_decay)`:
clip the gradients, add `wd * param` (coupled L2, as in torch), momentum trace
`buf = mu * buf + g`, then `param -= lr * buf`.
"""

import math

import jax
import jax.numpy as jnp
import ml_collections
import optax


def scaled_base_lr(optim_cfg: ml_collections.ConfigDict, global_batch: int) -> float:
  """Linear scaling rule: `base_lr` is quoted per `base_batch` clips."""
  return optim_cfg.base_lr * global_batch / optim_cfg.base_batch


def lr_at_epoch(optim_cfg: ml_collections.ConfigDict, base: float, epoch: jax.Array) -> jax.Array:
  """The reference's per-epoch formula (docs/training.md#recipe), valid at fractional epochs too.

  Warm-up, e < W: base * (s + (1 - s) * e / W) with s = warmup_start_factor.
  Cosine, e >= W: base * [f + (1 - f) * (1 + cos(pi * (e - W) / (E - W))) / 2], f = floor.
  """
  w, e_total = optim_cfg.warmup_epochs, optim_cfg.num_epochs
  s, f = optim_cfg.warmup_start_factor, optim_cfg.final_lr_factor
  warm = base * (s + (1.0 - s) * epoch / max(w, 1))
  progress = (epoch - w) / max(e_total - w, 1)
  cosine = base * (f + (1.0 - f) * (1.0 + jnp.cos(math.pi * progress)) / 2.0)
  return jnp.where(epoch < w, warm, cosine)


def make_schedule(optim_cfg: ml_collections.ConfigDict, steps_per_epoch: int,
                  global_batch: int) -> optax.Schedule:
  """Step -> learning rate; equals `lr_at_epoch` at every epoch boundary."""
  base = scaled_base_lr(optim_cfg, global_batch)

  def schedule(step):
    epoch = jnp.asarray(step, jnp.float32) / steps_per_epoch
    if optim_cfg.stepped_per_epoch:
      epoch = jnp.floor(epoch)
    return lr_at_epoch(optim_cfg, base, epoch)

  return schedule


def decay_mask(params):
  """True for leaves that get weight decay when BN and biases are excluded: the >=2-D kernels.

  BatchNorm scale/shift and biases are exactly the 1-D leaves of the model.
  """
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(optim_cfg: ml_collections.ConfigDict,
                   schedule: optax.Schedule) -> optax.GradientTransformation:
  """clip -> weight decay -> SGD momentum, all driven by `optim_cfg` (configs/recipe.py)."""
  parts = []
  if optim_cfg.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(optim_cfg.grad_clip_norm))
  if optim_cfg.weight_decay > 0:
    mask = None if optim_cfg.wd_on_bn_and_bias else decay_mask
    parts.append(optax.add_decayed_weights(optim_cfg.weight_decay, mask=mask))
  parts.append(optax.sgd(schedule, momentum=optim_cfg.momentum, nesterov=optim_cfg.nesterov))
  return optax.chain(*parts)
