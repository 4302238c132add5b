"""Shared config pieces: command-line variants and the model, STC and input sections.

Every dataset config (`configs/<dataset>.py`) reads top to bottom, big_vision style: its facts
(class count, published split sizes, flip policy), `base.make_config` (these sections plus the
recipe of `configs/recipe.py`, with the variants applied), its own recipe changes, its eval
protocols, and `runlocal` last. Variants follow the ':' of the config path:

  configs/sthv1.py:model=fstfl,frames=16,stc=res2-3
"""

from typing import Any

import ml_collections

MODELS = ("tsn", "gsf", "fstfl")
STAGES = ("res2", "res3", "res4", "res5")

# Variant keys accepted after the ':' of a config path: parser and default.
_VARIANTS: dict[str, tuple[Any, Any]] = {
  "model": (str, "fstfl"),
  "frames": (int, 8),
  "stc": (str, None),        # None: the default placement of `stc_config`.
  "recipe": (str, "paper"),
  "runlocal": (lambda s: s.lower() in ("1", "true", "yes", ""), False),
}


def parse_arg(arg: str | None) -> ml_collections.ConfigDict:
  """`k1=v1,k2=v2` -> every variant (defaults filled in); an unknown key raises naming the
  allowed ones."""
  out = {key: default for key, (_, default) in _VARIANTS.items()}
  for item in (arg or "").split(","):
    if not item:
      continue
    key, _, value = item.partition("=")
    key = key.strip()
    if key not in _VARIANTS:
      raise ValueError(
        f"Unknown config variant {key!r} in {arg!r}; expected one of {sorted(_VARIANTS)}.")
    out[key] = _VARIANTS[key][0](value.strip())
  return ml_collections.ConfigDict(out)


def parse_stages(spec: str) -> tuple[str, ...]:
  """'res3' -> ('res3',); 'res2-4' -> ('res2','res3','res4'); 'none' -> ()."""
  if spec in ("", "none"):
    return ()
  first, _, last = spec.partition("-")
  last = last or first
  if last and not last.startswith("res"):
    last = "res" + last
  if first not in STAGES or last not in STAGES or STAGES.index(last) < STAGES.index(first):
    raise ValueError(f"Bad STC placement {spec!r}: expected resN or resN-M with N<=M in 2..5.")
  return STAGES[STAGES.index(first):STAGES.index(last) + 1]


def stc_config() -> ml_collections.ConfigDict:
  """The STC defaults, a reconstruction inside the paper's cost budget (docs/stc.md)."""
  return ml_collections.ConfigDict(dict(
    stages=("res3",),        # Where an STC follows the stage's last block (paper Table 6).
    max_disp=6,              # D: the window is (2D+1)^2 displacements.
    half_extent=False,       # True: the paper-literal D = ceil(X/2) per stage (overrides max_disp).
    max_disp_per_stage={},   # Optional {stage: D} override.
    offsets=(0, 1, 2, 3),    # Temporal offsets l (t+l); negative values allowed.
    temporal_boundary="zero",  # "zero" | "clamp" | "circular".
    mask_channel=False,      # Append one validity flag per offset to F.
    reduce_channels=0,       # 0: none; else 1x1 conv + BN + ReLU to this width first.
    norm_eps=1e-6,
    spatial_mlp=(16,),       # Hidden widths of the l=0 MLP.
    temporal_mlp=(16,),      # Hidden widths of the l!=0 MLP.
    mlp_out=8,               # C' per offset.
    share_temporal_mlp=True,  # One temporal MLP for every l != 0.
    mlp_bias=False,
    fusion_widths=(16, 16, 16),  # PW widths of fusion layers 1-3; layer 4 maps to C.
    fusion_kernels=(7, 3, 3, 3),
    final_relu=True,
    zero_init_last_bn=False,
    source="self",           # "self" | "res2_pooled" | "both".
    impl="auto",             # "auto" | "allpairs" | "banded" | "einsum" | "loop".
    remat=True,
  ))


def model_config(name: str, num_classes: int, num_frames: int) -> ml_collections.ConfigDict:
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; expected one of {MODELS}.")
  return ml_collections.ConfigDict(dict(
    name=name,
    num_classes=num_classes,
    num_frames=num_frames,
    stage_sizes=(3, 4, 6, 3),  # ResNet-50.
    width=64,                  # Base width; tiny test models use 8.
    gsf_ratio=25,              # Percent of channels gated (GSF's ResNet-50 default).
    dropout=0.5,
    dtype="float32",           # Compute dtype; params stay float32.
    bn_momentum=0.9,           # PyTorch momentum 0.1.
    bn_eps=1e-5,
    bn_group_size=0,           # 0: global (synced) BN; k: ghost BN over groups of k clips.
    stc=stc_config(),
  ))


def input_config(dataset: str, num_frames: int, flip: str = "none") -> ml_collections.ConfigDict:
  """Data section read by `data_pipelines.pipeline` (owned by the data pipeline)."""
  return ml_collections.ConfigDict(dict(
    data_dir=f"data/{dataset}",  # Output of `python -m data_pipelines.build`.
    train_split="train",
    eval_split="validation",
    num_frames=num_frames,
    sampling="tsn",          # "tsn" (segment) | "dense".
    dense_stride=8,
    crop_size=224,
    resize_short=256,        # Eval resize before the centre/3/10 crops.
    scales=(1.0, 0.875, 0.75, 0.66),
    flip=flip,               # "none" | "flip" | "flip_swap_labels".
    # "" (off, the paper) or timm notation, e.g. "rand-m9-mstd0.5" (GSF's reference recipe):
    # one draw of ops/magnitudes per clip, applied to every frame (data_pipelines.randaugment).
    randaugment="",
    batch_size=32,           # Global, in clips.
    eval_batch_size=32,
    shuffle_seed=0,
    # Host parallelism, -1 = from the host's cores (data_pipelines.pipeline.host_parallelism):
    num_workers=-1,          # 0: threads in-process (best up to 8 cores); >0: worker processes.
    num_threads=-1,          # Reader threads per process / worker (JPEG decode releases the GIL).
    prefetch=2,              # Batches buffered ahead, per process (and per worker).
    test_clips=1,
    test_crops=1,            # 1 (centre) | 3 (along the long side) | 10 (5 crops + mirrors).
    test_clip_sampling="uniform",  # "uniform" (shifted segment centres) | "random" (TSN draws).
  ))
