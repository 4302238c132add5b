r"""Grad-CAM of a trained video model on one video file, drawn like the paper's Figure 6.

  fstfl-gradcam --workdir workdirs/demo \
      --video demo_data/raw/validation/01_move_right/01_move_right_validation_0000.mp4 \
      --out gradcam.png [--layer res5|res4|res3|res3_stc|res2] [--class NAME_OR_INDEX] \
      [--gif gradcam.gif] [--checkpoint latest|best] [--config configs/demo.py]

The video is decoded and sampled like the eval pipeline's single view (segment centres,
short-side resize, centre crop; `fstfl_jax.apps.video_io`). Same as
`python -m fstfl_jax.apps.gradcam`. For the predicted class (or --class) c
and the chosen stage output A (frames folded into the batch, [T, h, w, C]):

  alpha[t, k] = mean_{i,j} d y_c / d A[t, i, j, k]          (gradient via the model's
  cam[t]      = ReLU(sum_k alpha[t, k] A[t, :, :, k])         'perturbations' hook, jax.grad)

upsampled (bilinear) to the crop size and divided by its maximum over the whole clip.
y_c is the class logit (before the softmax), as in Selvaraju et al. (2017).

Weights are per frame, not pooled over T. The network classifies each frame as an image
(frames folded into the batch; GSF and STC only exchange features between frames) and averages
the per-frame logits, so each frame has its own 2D feature map and its own gradient, which
is what 2D Grad-CAM expects. Pooling the weights over T (the 3D-CNN variant) would assume
that the same channels carry the class in every frame, which is not true of the temporal
features that GSF and STC build: their channels respond to a motion phase (e.g. the return
half of a "pretending" action) and change sign along the clip. At res5 the two choices
coincide: d y_c / d A = W_fc[:, c] / (T h w) there, and Grad-CAM is CAM. Normalising over
the clip rather than per frame keeps the frames comparable: a frame with little evidence
stays dark.
"""

import dataclasses
import io
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from data_pipelines import cli
from data_pipelines import storage
from fstfl_jax.apps import inference
from fstfl_jax.apps import video_io
from fstfl_jax.evaluation import reporting
from fstfl_jax.models import build_model
from fstfl_jax.training import guards
from fstfl_jax.training import sharding

PROG = "fstfl-gradcam"
LAYERS = ("res5", "res4", "res3", "res3_stc", "res2")
# Heat-map opacity over the frames; cold (blue) regions stay readable.
OVERLAY_ALPHA = 0.45
COLORMAP = "jet"


@dataclasses.dataclass
class GradCam:
  """One clip's Grad-CAM.

  Attributes:
    cam: float32 [T, S, S] in [0, 1] (upsampled, normalised over the clip).
    raw: float32 [T, h, w], the map at the layer's resolution before upsampling.
    class_index: the explained class.
    probs: float32 [K], softmax of the clip's logits.
  """
  cam: np.ndarray
  raw: np.ndarray
  class_index: int
  probs: np.ndarray


def _variables(variables: Mapping[str, Any]) -> dict[str, Any]:
  return {k: variables[k] for k in ("params", "batch_stats") if k in variables}


def make_layer_gradients(model: Any, layer: str) -> Callable[..., tuple[jax.Array, ...]]:
  """A jitted `(variables, video, class_index) -> (logits, activations, gradients)`.

  Args of the returned function:
    variables: {'params', 'batch_stats'}.
    video: uint8 [B, T, S, S, 3].
    class_index: int32 [B]; a negative entry means the clip's own top-1 class.

  Returns:
    logits float32 [B, K]; the layer's activations and the gradients of the chosen class logits
    with respect to them, both float32 [B*T, h, w, C] (frames folded into the batch). The clips
    are independent in eval mode, so one gradient of the summed class logits serves the batch.

  Raises (when first called):
    ValueError: `layer` is not a stage output of this model.
  """

  def fn(variables, video, class_index):
    variables = _variables(variables)
    _, shapes = jax.eval_shape(
      lambda x: model.apply(variables, x, train=False, mutable=["perturbations"]), video)
    if layer not in shapes["perturbations"]:
      raise ValueError(f"Layer {layer!r} is not an output of this model; it has "
                       f"{sorted(shapes['perturbations'])} (res3_stc exists only for fstfl with "
                       "an STC after res3).")
    # Every tapped stage must have an entry once the collection is given (flax raises otherwise).
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["perturbations"])

    def class_logits(perturbations):
      logits, state = model.apply({**variables, "perturbations": perturbations}, video,
                                  train=False, mutable=["intermediates"])
      top1 = jnp.argmax(jax.lax.stop_gradient(logits), axis=-1)
      chosen = jnp.where(class_index < 0, top1, class_index)
      target = jnp.take_along_axis(logits, chosen[:, None], axis=-1).sum()
      return target, (logits, state["intermediates"][layer][0])

    grads, (logits, acts) = jax.grad(class_logits, has_aux=True)(zeros)
    return logits, acts.astype(jnp.float32), grads[layer].astype(jnp.float32)

  return jax.jit(fn)


def gradcam_maps(activations: np.ndarray, gradients: np.ndarray, num_frames: int) -> np.ndarray:
  """Per-frame Grad-CAM: [B*T, h, w, C] activations and gradients -> [B, T, h, w] (>= 0)."""
  weights = gradients.mean(axis=(1, 2), keepdims=True)  # alpha[t, k], one set per frame.
  cam = np.maximum((weights * activations).sum(-1), 0.0)
  return cam.reshape((-1, num_frames) + cam.shape[1:])


def upsample_normalise(cam: np.ndarray, size: int) -> np.ndarray:
  """[..., T, h, w] -> [..., T, S, S] bilinear, divided by the max over each clip (0 stays 0)."""
  out = np.asarray(jax.image.resize(cam, cam.shape[:-2] + (size, size), "bilinear"))
  out = np.maximum(out, 0.0)  # Bilinear weights are >= 0; this only removes rounding noise.
  peak = out.max(axis=(-3, -2, -1), keepdims=True)
  return np.divide(out, peak, out=np.zeros_like(out), where=peak > 0).astype(np.float32)


def make_gradcam(model: Any, layer: str) -> Callable[..., GradCam]:
  """`explain(variables, views, class_index=None) -> GradCam` for stage output `layer`.

  `views` is one clip, uint8 [1, T, S, S, 3]; `class_index` None explains the top-1 class. The
  gradient function is compiled once, on the first call; keep `explain` to reuse it.
  """
  gradients = make_layer_gradients(model, layer)

  def explain(variables: Mapping[str, Any], views: np.ndarray,
              class_index: int | None = None) -> GradCam:
    index = np.asarray([-1 if class_index is None else class_index], np.int32)
    logits, acts, grads = jax.device_get(gradients(variables, jnp.asarray(views), index))
    raw = gradcam_maps(acts, grads, views.shape[1])[0]
    chosen = int(np.argmax(logits[0])) if class_index is None else class_index
    return GradCam(cam=upsample_normalise(raw, views.shape[2]), raw=raw, class_index=chosen,
                   probs=inference.softmax(logits[0].astype(np.float64)).astype(np.float32))

  return explain


def resolve_class(spec: str | None, names: Sequence[str]) -> int | None:
  """--class: a class name or a 0-based index (None: the predicted class)."""
  if spec is None:
    return None
  if spec in names:
    return list(names).index(spec)
  if spec.lstrip("-").isdigit() and 0 <= int(spec) < len(names):
    return int(spec)
  raise ValueError(f"--class {spec!r} is neither a class name nor an index in [0, {len(names)}); "
                   f"classes: {list(names)[:20]}{' ...' if len(names) > 20 else ''}.")


def overlay(frames: np.ndarray, cam: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
  """uint8 [T, S, S, 3] frames blended with the colour-mapped cam [T, S, S] -> uint8."""
  from matplotlib import colormaps  # pylint: disable=g-import-not-at-top  (plots only)
  heat = colormaps[COLORMAP](cam)[..., :3] * 255.0
  return ((1 - alpha) * frames + alpha * heat).round().clip(0, 255).astype(np.uint8)


def save_gradcam_figure(frames: np.ndarray, cam: np.ndarray, path: str, title: str,
                        metadata: Mapping[str, str] | None = None) -> None:
  """The paper's Figure 6 layout as a PNG: the T frames (row "Raw") above the same frames
  with the heat map overlaid (row "Grad-CAM"), one column per sampled moment T0..T{T-1}.

  `metadata` goes into the PNG's text chunks (e.g. class and layer, for scripts).
  """
  plt = reporting.pyplot()
  t = len(frames)
  fig, axes = plt.subplots(2, t, figsize=(1.5 * t + 0.6, 3.6), squeeze=False)
  for row, images in enumerate((frames, overlay(frames, cam))):
    for i, ax in enumerate(axes[row]):
      ax.imshow(images[i], interpolation="bilinear")
      ax.set_xticks([])
      ax.set_yticks([])
      if row == 0:
        ax.set_title(f"T{i}", fontsize=9)
    axes[row, 0].set_ylabel(("Raw", "Grad-CAM")[row], fontsize=9)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  storage.save_figure(fig, path, dpi=100, metadata=dict(metadata or {}))
  plt.close(fig)


def save_gradcam_gif(frames: np.ndarray, cam: np.ndarray, path: str, *, fps: float = 4.0,
                     min_side: int = 192) -> None:
  """The overlaid frames as a looping animated GIF, enlarged to at least `min_side` pixels."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  blended = overlay(frames, cam)
  scale = max(1, -(-min_side // blended.shape[1]))
  images = [Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale),
                                      Image.Resampling.BILINEAR) for f in blended]
  buf = io.BytesIO()
  images[0].save(buf, format="GIF", save_all=True, append_images=images[1:],
                 duration=int(1000 / fps), loop=0)
  storage.write_bytes(path, buf.getvalue())


def define_flags(fv: flags.FlagValues) -> None:
  """The flags of `fstfl-gradcam` (see the module docstring)."""
  flags.DEFINE_string("workdir", None, "Training workdir (checkpoints/).", flag_values=fv,
                      required=True)
  flags.DEFINE_string("video", None, "A video file or a frame folder.", flag_values=fv,
                      required=True)
  flags.DEFINE_string("out", None, "PNG to write.", flag_values=fv, required=True)
  flags.DEFINE_enum("layer", "res5", LAYERS, "Stage output to explain.", flag_values=fv)
  flags.DEFINE_string("class", None, "Class to explain (name or index); default the predicted "
                      "one.", flag_values=fv)
  flags.DEFINE_string("gif", None, "Also write an animated GIF here.", flag_values=fv)
  flags.DEFINE_string("config", None, "configs/<dataset>.py[:variants]; default "
                      "<workdir>/config.json.", flag_values=fv)
  flags.DEFINE_enum("checkpoint", "latest", ["latest", "best"], "Checkpoint to restore.",
                    flag_values=fv)


def main(argv: Sequence[str] | None = None) -> int:
  args = cli.parse_flags(argv, define_flags, prog=PROG, doc=__doc__)
  config = inference.load_config(args.workdir, args.config)
  names = inference.class_names(config, PROG)
  class_index = resolve_class(args["class"].value, names)
  mesh = sharding.make_mesh(1)  # One clip: a single device does it.
  try:
    views = video_io.load_views(args.video, config.input, clips=1, crops=1,
                                settings=video_io.decode_settings(config.input.data_dir))
    variables, step = inference.restore_variables(config, args.workdir, args.checkpoint, mesh)
  except (video_io.VideoError, guards.NonFiniteError) as e:  # One line, as predict prints it.
    cli.print_error(PROG, str(e))
    return 1
  result = make_gradcam(build_model(config.model), args.layer)(variables, views, class_index)
  name = names[result.class_index]
  title = (f"{name} (p={result.probs[result.class_index]:.2f}) - Grad-CAM at {args.layer}, "
           f"{config.model.name} step {step}\n{os.path.basename(args.video)}")
  save_gradcam_figure(views[0], result.cam, args.out, title,
                      metadata={"class": name, "layer": args.layer, "step": str(step)})
  print(f"{args.out}: Grad-CAM of {name!r} (p={result.probs[result.class_index]:.3f}) at "
        f"{args.layer} ({result.raw.shape[1]}x{result.raw.shape[2]} map)")
  if args.gif:
    save_gradcam_gif(views[0], result.cam, args.gif)
    print(f"{args.gif}: animated")
  return 0


def run() -> None:
  """Console script `fstfl-gradcam`."""
  cli.run_main(main, PROG)


if __name__ == "__main__":
  run()
