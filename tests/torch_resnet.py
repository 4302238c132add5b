"""A plain-PyTorch ResNet with torchvision's v1.5 layout, used as the reference in tests.

Module names match torchvision's `resnet50`, so `state_dict()` keys are the ones of the
ImageNet checkpoint (`conv1.weight`, `bn1.running_mean`, `layer1.0.downsample.0.weight`,
`fc.bias`, ...). Width and blocks per stage are configurable so tests can stay small; the
defaults build the real ResNet-50 (25,557,032 parameters with the 1000-way fc).
"""

from typing import Sequence

import torch
from torch import nn

_EXPANSION = 4


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (carries the stride, v1.5) -> 1x1 expansion, plus identity or projection."""

  def __init__(self, in_channels: int, planes: int, stride: int):
    super().__init__()
    out_channels = planes * _EXPANSION
    self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(out_channels)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = None
    if stride != 1 or in_channels != out_channels:
      self.downsample = nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    shortcut = x if self.downsample is None else self.downsample(x)
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return self.relu(y + shortcut)


class ResNet(nn.Module):
  """Bottleneck ResNet on NCHW images; `features` gives the last stage before pooling."""

  def __init__(self, stage_sizes: Sequence[int] = (3, 4, 6, 3), width: int = 64,
               num_classes: int = 1000):
    super().__init__()
    self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
    in_channels = width
    for i, num_blocks in enumerate(stage_sizes):
      planes = width * 2**i
      blocks = []
      for j in range(num_blocks):
        stride = 2 if (i > 0 and j == 0) else 1
        blocks.append(Bottleneck(in_channels, planes, stride))
        in_channels = planes * _EXPANSION
      self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
    self.num_stages = len(stage_sizes)
    self.fc = nn.Linear(in_channels, num_classes)

  def features(self, x: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] -> last-stage features [B, C, H/32, W/32]."""
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    for i in range(self.num_stages):
      x = getattr(self, f"layer{i + 1}")(x)
    return x

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.fc(self.features(x).mean(dim=(2, 3)))
