"""Crop geometry, flips and label swaps on synthetic frames with known pixels."""


import numpy as np
import pytest
import simplejpeg

from data_pipelines import device_transforms
from data_pipelines import transforms


def coordinate_frame(height, width):
  """uint8 [H, W, 3] with R = row, G = column, B = 7: every pixel names its position."""
  y, x = np.mgrid[:height, :width]
  return np.stack([y, x, np.full_like(y, 7)], -1).astype(np.uint8)


# --- Label swap ----------------------------------------------------------------------------------

def test_swap_pairs_sthv1_alphabetical():
  assert transforms.swap_pairs_from_names(SSV1_CLASSES) == [(86, 87), (93, 94), (166, 167)]
  assert SSV1_CLASSES[86] == "Pulling something from left to right"
  assert SSV1_CLASSES[167] == "Turning the camera right while filming something"


def test_swap_pairs_v2_style_names_and_near_misses():
  names = ["Pushing [something] from right to left", "Turning the camera right while filming",
           "Putting something upright on the table", "Plugging it right out",
           "Pushing [something] from left to right", "Turning the camera left while filming",
           "Putting something upleft on the table", "Moving something left"]
  # "upright"/"upleft" are not whole words; "right out" and "left" alone have no partner.
  assert transforms.swap_pairs_from_names(names) == [(0, 4), (1, 5)]


def test_flip_label_map_swaps_exactly_the_pairs():
  table = transforms.flip_label_map(174, [(86, 87), (93, 94), (166, 167)])
  expected = list(range(174))
  for i, j in [(86, 87), (93, 94), (166, 167)]:
    expected[i], expected[j] = j, i
  np.testing.assert_array_equal(table, expected)
  assert table.dtype == np.int32


# --- Train multi-scale crop ----------------------------------------------------------------------

def test_multiscale_sizes_256x340():
  # Short side 256: int(256 * s) = 256, 224, 192, 168; 224 is crop_size already.
  sides = [256, 224, 192, 168]
  expected = [(sides[i], sides[j]) for i in range(4) for j in range(4) if abs(i - j) <= 1]
  assert transforms.multiscale_sizes(256, 340, 224, (1, .875, .75, .66)) == expected
  assert len(expected) == 10


def test_multiscale_sizes_snap_within_3px():
  # Short side 100 (Sth-V1) with crop 87: int(100*.875) = 87 -> 87; 75 and 66 stay.
  # Crop 85: 87 is 2 px away and snaps to 85; crop 84: 3 px away and does not snap.
  def sides(crop):
    return sorted({h for h, _ in transforms.multiscale_sizes(100, 176, crop, (1, .875, .75, .66))})
  assert sides(87) == [66, 75, 87, 100]
  assert sides(85) == [66, 75, 85, 100]
  assert sides(84) == [66, 75, 87, 100]


def test_fixed_offsets_are_the_13_lattice_points():
  offsets = transforms.fixed_offsets(256, 340, 168, 192)
  ys, xs = (256 - 168) // 4, (340 - 192) // 4  # 22, 37
  lattice = {(0, 0), (0, 4), (4, 0), (4, 4), (2, 2), (2, 0), (2, 4), (4, 2), (0, 2),
             (1, 1), (1, 3), (3, 1), (3, 3)}
  assert len(offsets) == 13
  assert set(offsets) == {(a * ys, b * xs) for a, b in lattice}


def test_sampled_boxes_come_from_the_allowed_set_and_cover_it():
  rng = np.random.default_rng(0)
  height, width, scales = 48, 64, (1, .875, .75, .66)
  allowed = {(y, x, h, w) for h, w in transforms.multiscale_sizes(height, width, 32, scales)
             for y, x in transforms.fixed_offsets(height, width, h, w)}
  seen = {transforms.sample_multiscale_box(height, width, 32, scales, rng) for _ in range(4000)}
  assert seen == allowed
  for y, x, h, w in seen:
    assert 0 <= y and y + h <= height and 0 <= x and x + w <= width


def test_crop_resize_same_box_every_frame_and_flip_mirrors():
  frames = [coordinate_frame(48, 64) + np.uint8(t) for t in range(3)]
  box = (8, 16, 32, 32)
  out = transforms.crop_resize(frames, box, 32, flip=False)
  for t in range(3):
    np.testing.assert_array_equal(out[t], frames[t][8:40, 16:48])
  flipped = transforms.crop_resize(frames, box, 32, flip=True)
  np.testing.assert_array_equal(flipped, out[:, :, ::-1])


def test_crop_resize_bilinear_upsample():
  # A horizontal ramp stays a ramp, a constant row stays constant.
  frame = coordinate_frame(40, 40)
  out = transforms.crop_resize([frame], (0, 0, 20, 20), 40, flip=False)[0]
  assert np.all(np.diff(out[0, :, 1].astype(int)) >= 0) and out[0, -1, 1] == 19
  assert np.all(out[:, :, 2] == 7)


def test_augment_train_flip_probability_and_policy():
  frames = [coordinate_frame(48, 64)]
  rng = np.random.default_rng(0)

  out = np.empty((1, *transforms.frame_slot([(48, 64)]), 3), np.uint8)
  taps = np.empty((2, 32, 3), np.float32)

  def augment(allow_flip, rng):
    return transforms.augment_train(frames, height=48, width=64, crop_size=32, scales=(1,),
                                    allow_flip=allow_flip, rng=rng, out=out, taps=taps)
  flips = [augment(True, rng) for _ in range(400)]
  assert 150 < sum(flips) < 250
  assert not any(augment(False, rng) for _ in range(50))
  flipped = augment(True, np.random.default_rng(5))
  video = device_transforms.crop_resize(out[None], np.array([64], np.int32), taps[None])[0]
  columns = np.asarray(video)[0, 0, :, 1].astype(int)  # G = source column.
  assert (np.diff(columns) < 0).all() if flipped else (np.diff(columns) > 0).all()


def test_jpeg_frames_decode_in_order_and_name_bad_frames():
  def encode(value, width=64):
    return simplejpeg.encode_jpeg(np.full((48, width, 3), value, np.uint8), quality=95)
  jpegs = [encode(10 * f) for f in range(4)] + [b"\xff\xd8junk\xff\xd9", encode(0, width=32)]
  frames = transforms.JpegFrames(jpegs, [3, 0, 3], lambda f: f"video 7 frame {f}")
  assert (len(frames), frames.height, frames.width) == (3, 48, 64)
  assert [int(np.median(frame)) for frame in frames] == [30, 0, 30]
  with pytest.raises(ValueError, match=r"video 7 frame 4: not a decodable JPEG"):
    transforms.JpegFrames(jpegs, [4], lambda f: f"video 7 frame {f}")
  with pytest.raises(ValueError, match=r"frame 5: size \(48, 32\) differs"):
    transforms.JpegFrames(jpegs, [0, 5], lambda f: f"frame {f}")[1]


# --- Test views ----------------------------------------------------------------------------------

def views_of(height, width, crops):
  frames = [coordinate_frame(height, width), coordinate_frame(height, width) + np.uint8(100)]
  return frames, transforms.eval_views(frames, resize_short=min(height, width), crop_size=24,
                                       crops=crops)


def test_centre_crop():
  frames, views = views_of(32, 48, 1)
  assert views.shape == (1, 2, 24, 24, 3)
  np.testing.assert_array_equal(views[0, 1], frames[1][4:28, 12:36])


def test_three_crops_along_the_long_side():
  frames, views = views_of(32, 48, 3)
  # Steps (32-24)//4 = 2, (48-24)//4 = 6: left, right, centre at row 2*2.
  for view, (y, x) in zip(views, [(4, 0), (4, 24), (4, 12)]):
    for t in range(2):
      np.testing.assert_array_equal(view[t], frames[t][y:y + 24, x:x + 24])
  frames, views = views_of(48, 32, 3)  # Portrait: top, bottom, centre.
  for view, (y, x) in zip(views, [(0, 4), (24, 4), (12, 4)]):
    np.testing.assert_array_equal(view[0], frames[0][y:y + 24, x:x + 24])


def test_ten_crops_are_corners_centre_and_mirrors():
  frames, views = views_of(32, 48, 10)
  corners_centre = [(0, 0), (0, 24), (8, 0), (8, 24), (4, 12)]
  for c, (y, x) in enumerate(corners_centre):
    crop = frames[0][y:y + 24, x:x + 24]
    np.testing.assert_array_equal(views[c, 0], crop)
    np.testing.assert_array_equal(views[c + 5, 0], crop[:, ::-1])


def test_eval_resizes_short_side_first():
  frame = np.full((64, 96, 3), 90, np.uint8)
  frame[:, 48:] = 200
  views = transforms.eval_views([frame], resize_short=32, crop_size=24, crops=3)
  # Resized to 32x48: the left crop (x 0..23) is all 90, the right one (x 24..47) all 200.
  assert views.shape == (3, 1, 24, 24, 3)
  assert (views[0] == 90).all() and (views[1] == 200).all()
  portrait = transforms.resize_short_side(np.zeros((90, 60, 3), np.uint8), 32)
  assert portrait.shape == (48, 32, 3)


def test_eval_rejects_bad_crop_counts():
  with pytest.raises(ValueError, match="1, 3 or 10"):
    transforms.eval_boxes(32, 48, 24, 5)


# Something-Something V1 categories in alphabetical order (the index order of the label files).
SSV1_CLASSES = (
  'Approaching something with your camera',
  'Attaching something to something',
  'Bending something so that it deforms',
  'Bending something until it breaks',
  'Burying something in something',
  'Closing something',
  'Covering something with something',
  'Digging something out of something',
  'Dropping something behind something',
  'Dropping something in front of something',
  'Dropping something into something',
  'Dropping something next to something',
  'Dropping something onto something',
  'Failing to put something into something because something does not fit',
  'Folding something',
  'Hitting something with something',
  'Holding something',
  'Holding something behind something',
  'Holding something in front of something',
  'Holding something next to something',
  'Holding something over something',
  'Laying something on the table on its side, not upright',
  'Letting something roll along a flat surface',
  'Letting something roll down a slanted surface',
  'Letting something roll up a slanted surface, so it rolls back down',
  'Lifting a surface with something on it but not enough for it to slide down',
  'Lifting a surface with something on it until it starts sliding down',
  'Lifting something up completely without letting it drop down',
  'Lifting something up completely, then letting it drop down',
  'Lifting something with something on it',
  'Lifting up one end of something without letting it drop down',
  'Lifting up one end of something, then letting it drop down',
  'Moving away from something with your camera',
  'Moving part of something',
  'Moving something across a surface until it falls down',
  'Moving something across a surface without it falling down',
  'Moving something and something away from each other',
  'Moving something and something closer to each other',
  'Moving something and something so they collide with each other',
  'Moving something and something so they pass each other',
  'Moving something away from something',
  'Moving something away from the camera',
  'Moving something closer to something',
  'Moving something down',
  'Moving something towards the camera',
  'Moving something up',
  'Opening something',
  'Picking something up',
  'Piling something up',
  'Plugging something into something',
  'Plugging something into something but pulling it right out as you remove your hand',
  'Poking a hole into some substance',
  'Poking a hole into something soft',
  'Poking a stack of something so the stack collapses',
  'Poking a stack of something without the stack collapsing',
  'Poking something so it slightly moves',
  "Poking something so lightly that it doesn't or almost doesn't move",
  'Poking something so that it falls over',
  'Poking something so that it spins around',
  'Pouring something into something',
  'Pouring something into something until it overflows',
  'Pouring something onto something',
  'Pouring something out of something',
  'Pretending or failing to wipe something off of something',
  'Pretending or trying and failing to twist something',
  'Pretending to be tearing something that is not tearable',
  'Pretending to close something without actually closing it',
  'Pretending to open something without actually opening it',
  'Pretending to pick something up',
  'Pretending to poke something',
  'Pretending to pour something out of something, but something is empty',
  'Pretending to put something behind something',
  'Pretending to put something into something',
  'Pretending to put something next to something',
  'Pretending to put something on a surface',
  'Pretending to put something onto something',
  'Pretending to put something underneath something',
  'Pretending to scoop something up with something',
  'Pretending to spread air onto something',
  'Pretending to sprinkle air onto something',
  'Pretending to squeeze something',
  'Pretending to take something from somewhere',
  'Pretending to take something out of something',
  'Pretending to throw something',
  'Pretending to turn something upside down',
  'Pulling something from behind of something',
  'Pulling something from left to right',
  'Pulling something from right to left',
  'Pulling something onto something',
  'Pulling something out of something',
  'Pulling two ends of something but nothing happens',
  'Pulling two ends of something so that it gets stretched',
  'Pulling two ends of something so that it separates into two pieces',
  'Pushing something from left to right',
  'Pushing something from right to left',
  'Pushing something off of something',
  'Pushing something onto something',
  'Pushing something so it spins',
  "Pushing something so that it almost falls off but doesn't",
  'Pushing something so that it falls off the table',
  'Pushing something so that it slightly moves',
  'Pushing something with something',
  'Putting number of something onto something',
  'Putting something and something on the table',
  'Putting something behind something',
  'Putting something in front of something',
  'Putting something into something',
  'Putting something next to something',
  'Putting something on a flat surface without letting it roll',
  'Putting something on a surface',
  'Putting something on the edge of something so it is not supported and falls down',
  "Putting something onto a slanted surface but it doesn't glide down",
  'Putting something onto something',
  'Putting something onto something else that cannot support it so it falls down',
  'Putting something similar to other things that are already on the table',
  "Putting something that can't roll onto a slanted surface, so it slides down",
  "Putting something that can't roll onto a slanted surface, so it stays where it is",
  ('Putting something that cannot actually stand upright upright on the table, '
   'so it falls on its side'),
  'Putting something underneath something',
  'Putting something upright on the table',
  'Putting something, something and something on the table',
  'Removing something, revealing something behind',
  'Rolling something on a flat surface',
  'Scooping something up with something',
  'Showing a photo of something to the camera',
  'Showing something behind something',
  'Showing something next to something',
  'Showing something on top of something',
  'Showing something to the camera',
  'Showing that something is empty',
  'Showing that something is inside something',
  'Something being deflected from something',
  'Something colliding with something and both are being deflected',
  'Something colliding with something and both come to a halt',
  'Something falling like a feather or paper',
  'Something falling like a rock',
  'Spilling something behind something',
  'Spilling something next to something',
  'Spilling something onto something',
  'Spinning something so it continues spinning',
  'Spinning something that quickly stops spinning',
  'Spreading something onto something',
  'Sprinkling something onto something',
  'Squeezing something',
  'Stacking number of something',
  'Stuffing something into something',
  'Taking one of many similar things on the table',
  'Taking something from somewhere',
  'Taking something out of something',
  'Tearing something into two pieces',
  'Tearing something just a little bit',
  'Throwing something',
  'Throwing something against something',
  'Throwing something in the air and catching it',
  'Throwing something in the air and letting it fall',
  'Throwing something onto a surface',
  "Tilting something with something on it slightly so it doesn't fall down",
  'Tilting something with something on it until it falls off',
  'Tipping something over',
  'Tipping something with something in it over, so something in it falls out',
  'Touching (without moving) part of something',
  "Trying but failing to attach something to something because it doesn't stick",
  'Trying to bend something unbendable so nothing happens',
  'Trying to pour something into something, but missing so it spills next to it',
  'Turning something upside down',
  'Turning the camera downwards while filming something',
  'Turning the camera left while filming something',
  'Turning the camera right while filming something',
  'Turning the camera upwards while filming something',
  'Twisting (wringing) something wet until water comes out',
  'Twisting something',
  'Uncovering something',
  'Unfolding something',
  'Wiping something off of something',
)
