"""Clip-level RandAugment: PIL references per op, one draw per clip, mstd, seeded pipeline."""

import numpy as np
import pytest
from PIL import Image
from PIL import ImageEnhance
from PIL import ImageOps

from data_pipelines import device_transforms
from data_pipelines import pipeline
from data_pipelines import randaugment as ra
from data_pipelines import transforms

import test_pipeline  # noqa: E402  (tests/ is on sys.path)

M9 = ra.Config(num_ops=2, magnitude=9.0, magnitude_std=0.5)


def smooth_frame(seed, height=40, width=56):
  """A smooth random colour frame (geometric ops are then insensitive to sub-pixel offsets)."""
  rng = np.random.default_rng(seed)
  coarse = rng.integers(0, 256, (5, 7, 3)).astype(np.uint8)
  return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))


def pil(frame):
  return Image.fromarray(frame)


def test_parse_spec():
  assert ra.parse_spec("") is None
  assert ra.parse_spec("rand-m9-mstd0.5") == M9
  assert ra.parse_spec("rand-m7-n3-mstd0") == ra.Config(num_ops=3, magnitude=7.0,
                                                         magnitude_std=0.0)
  assert ra.parse_spec("rand-m9-mstdinf").magnitude_std == float("inf")
  for bad, message in (("augmix-m5", "expected '' or 'rand-m9-mstd0.5'"),
                       ("rand-m9-x3", "cannot read 'x3'"), ("rand-m12", "0 <= m <= 10")):
    with pytest.raises(ValueError, match=message):
      ra.parse_spec(bad)


# Level 9 arguments of timm's mapping: enhance factor 0.1 + 1.8 * 0.9 = 1.72, posterize
# int(3.6) = 3 bits, solarize threshold int(230.4) = 230, solarize-add int(99) = 99.
PIL_REFERENCES = {
  "AutoContrast": lambda im: ImageOps.autocontrast(im),
  "Equalize": lambda im: ImageOps.equalize(im),
  "Invert": lambda im: ImageOps.invert(im),
  "Posterize": lambda im: ImageOps.posterize(im, 3),
  "Solarize": lambda im: ImageOps.solarize(im, 230),
  "Color": lambda im: ImageEnhance.Color(im).enhance(1.72),
  "Contrast": lambda im: ImageEnhance.Contrast(im).enhance(1.72),
  "Brightness": lambda im: ImageEnhance.Brightness(im).enhance(1.72),
  "Sharpness": lambda im: ImageEnhance.Sharpness(im).enhance(1.72),
}


@pytest.mark.parametrize("name", sorted(PIL_REFERENCES))
def test_pixel_ops_match_pil(name):
  # Mostly low contrast (so AutoContrast/Equalize/Contrast have work to do), with a bright
  # corner for Solarize.
  frame = (smooth_frame(1) // 3 + 60).astype(np.uint8)
  frame[:4, :6] = 250
  got = ra.apply_op(frame, ra.Op(name, 9.0))
  want = np.asarray(PIL_REFERENCES[name](pil(frame)))
  assert got.dtype == np.uint8 and got.shape == frame.shape
  assert np.abs(got.astype(int) - want).max() <= 1, name
  assert not np.array_equal(got, frame), name  # The op does something at level 9.


def test_solarize_add_by_hand():
  frame = np.array([[[0, 100, 127], [128, 200, 255]]], np.uint8)
  got = ra.apply_op(frame, ra.Op("SolarizeAdd", 9.0))  # + int(110 * 0.9) = 99 below 128.
  np.testing.assert_array_equal(got, [[[99, 199, 226], [128, 200, 255]]])


@pytest.mark.parametrize("name,sign", [("Rotate", 1), ("Rotate", -1), ("ShearX", 1),
                                       ("ShearY", -1), ("TranslateX", 1), ("TranslateY", -1)])
def test_geometric_ops_match_pil(name, sign):
  frame = smooth_frame(2)
  h, w = frame.shape[:2]
  level = 6.0
  shear, shift = sign * 0.3 * 0.6, sign * 0.45 * 0.6
  im = pil(frame)
  fill = ra.FILL
  want = {
    "Rotate": lambda: im.rotate(sign * 30 * 0.6, Image.BILINEAR, fillcolor=fill),
    "ShearX": lambda: im.transform(im.size, Image.AFFINE, (1, shear, 0, 0, 1, 0),
                                   Image.BILINEAR, fillcolor=fill),
    "ShearY": lambda: im.transform(im.size, Image.AFFINE, (1, 0, 0, shear, 1, 0),
                                   Image.BILINEAR, fillcolor=fill),
    "TranslateX": lambda: im.transform(im.size, Image.AFFINE, (1, 0, shift * w, 0, 1, 0),
                                       Image.BILINEAR, fillcolor=fill),
    "TranslateY": lambda: im.transform(im.size, Image.AFFINE, (1, 0, 0, 0, 1, shift * h),
                                       Image.BILINEAR, fillcolor=fill),
  }[name]()
  got = ra.apply_op(frame, ra.Op(name, level, sign)).astype(int)
  want = np.asarray(want).astype(int)
  # Away from the fill boundary the two resamplers agree to a few levels (PIL samples at pixel
  # centres with a half-pixel convention of its own); the filled area is where PIL fills.
  diff = np.abs(got - want)
  inside = (want != fill).any(-1) & (got != fill).any(-1)
  assert np.median(diff[inside]) <= 2 and (diff[inside] <= 12).mean() > 0.97, name
  assert abs((got == fill).all(-1).mean() - (want == fill).all(-1).mean()) < 0.03, name


def test_plan_is_shared_by_every_frame_of_a_clip():
  rng = np.random.default_rng(0)
  plans = [ra.sample_plan(M9, rng) for _ in range(200)]
  clip = np.stack([smooth_frame(s) for s in range(4)])
  same = np.repeat(clip[:1], 4, axis=0)
  for plan in plans[:40]:
    # A clip of identical frames stays identical frame to frame ...
    out = np.stack(list(ra.AugmentedFrames(same, plan)))
    assert all(np.array_equal(out[0], out[t]) for t in range(4))
    # ... and every frame of any clip is the plan applied to that frame.
    out = np.stack(list(ra.AugmentedFrames(clip, plan)))
    for t in range(4):
      want = clip[t]
      for op in plan:
        want = ra.apply_op(want, op)
      np.testing.assert_array_equal(out[t], want)
  fired = [len(p) for p in plans]
  assert np.mean(fired) == pytest.approx(2 * ra.OP_PROB, abs=0.15)  # p = 0.5 per op.
  assert {op.name for p in plans for op in p} == set(ra.OPS)


def test_magnitude_noise_follows_mstd():
  rng = np.random.default_rng(1)
  levels = np.array([op.level for _ in range(4000) for op in ra.sample_plan(M9, rng)])
  # N(9, 0.5) clipped at 10: mean 9 - 0.5 * E[(Z - 2)+] = 8.996, std 0.4905 (numerically).
  assert levels.max() == 10.0 and levels.min() > 6.5
  assert levels.mean() == pytest.approx(8.996, abs=0.03)
  assert levels.std() == pytest.approx(0.4905, abs=0.03)
  assert np.mean(levels == 10.0) == pytest.approx(0.0228, abs=0.01)  # P(Z > 2).
  exact = [op.level for _ in range(200)
           for op in ra.sample_plan(ra.Config(2, 9.0, 0.0), rng)]
  assert set(exact) == {9.0}
  uniform = np.array([op.level for _ in range(2000)
                      for op in ra.sample_plan(ra.Config(2, 9.0, float("inf")), rng)])
  assert uniform.min() >= 0 and uniform.max() <= 9 and uniform.mean() == pytest.approx(4.5,
                                                                                        abs=0.2)


def test_augment_train_applies_the_plan_before_the_crop():
  frames = [smooth_frame(s, 48, 64) for s in range(3)]
  seed = 7
  out = np.empty((3, *transforms.frame_slot([(48, 64)]), 3), np.uint8)

  def clip(randaugment):
    taps = np.empty((2, 32, 3), np.float32)
    flipped = transforms.augment_train(frames, height=48, width=64, crop_size=32,
                                       scales=(1.0, 0.75), allow_flip=True,
                                       rng=np.random.default_rng(seed), out=out, taps=taps,
                                       randaugment=randaugment)
    width = np.array([64], np.int32)
    return np.asarray(device_transforms.crop_resize(out[None], width, taps[None]))[0], flipped

  got, flipped = clip(M9)
  # Same rng stream by hand: box, flip, then the plan.
  rng = np.random.default_rng(seed)
  box = transforms.sample_multiscale_box(48, 64, 32, (1.0, 0.75), rng)
  flip = bool(rng.random() < 0.5)
  plan = ra.sample_plan(M9, rng)
  want = transforms.crop_resize([ra.apply_plan(f, plan) for f in frames], box, 32, flip)
  assert flipped == flip
  # The device resize equals the host's cv2 one up to a level of rounding.
  assert np.abs(got.astype(int) - want).max() <= 1
  # Box and flip do not depend on RandAugment being on.
  plain, plain_flip = clip(None)
  assert plain_flip == flip
  assert np.abs(plain.astype(int) - transforms.crop_resize(frames, box, 32, flip)).max() <= 1


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  train = [test_pipeline.make_record(v) for v in range(test_pipeline.NUM_TRAIN)]
  val = [test_pipeline.make_record(v) for v in range(2)]
  return test_pipeline.write_dataset(tmp_path_factory.mktemp("ra"), train, val)


def test_pipeline_is_deterministic_under_the_seed_and_restores(data_dir):
  cfg = test_pipeline.config(data_dir, flip="flip", randaugment="rand-m9-mstd0.5")
  take = test_pipeline.take
  a = take(pipeline.make_train_iter(cfg, seed=3), 4)
  b_iter = pipeline.make_train_iter(cfg, seed=3)
  b = take(b_iter, 2)
  state = b_iter.get_state()
  b += take(b_iter, 2)
  test_pipeline.assert_batches_equal(a, b)
  restored = pipeline.make_train_iter(cfg, seed=3)
  restored.set_state(state)
  test_pipeline.assert_batches_equal(take(restored, 2), a[2:])
  # RandAugment changes pixels but not which clips and labels come out.
  off = take(pipeline.make_train_iter(test_pipeline.config(data_dir, flip="flip"), seed=3), 4)
  assert any(not np.array_equal(x["video"], y["video"]) for x, y in zip(a, off))
  for x, y in zip(a, off):
    np.testing.assert_array_equal(x["label"], y["label"])


def test_recipes_turn_randaugment_on_only_for_gsf_reference():
  from configs import sthv1
  paper = sthv1.get_config("model=fstfl")
  reference = sthv1.get_config("model=fstfl,recipe=gsf_reference")
  assert paper.input.randaugment == ""
  assert paper.optim.weight_decay == 1e-4
  assert reference.input.randaugment == "rand-m9-mstd0.5"
  assert ra.parse_spec(reference.input.randaugment) == M9
  assert reference.optim.weight_decay == 5e-4
  with pytest.raises(ValueError, match="Unknown recipe 'tsm'"):
    sthv1.get_config("recipe=tsm")
