"""Writes a torchvision-layout reference ResNet-50 (reduced width) and its outputs for the tests.

torchvision is not needed: the network below is plain PyTorch with exactly torchvision's module
names and structure (``Bottleneck``: conv1 1x1, conv2 3x3 with the stride, conv3 1x1;
``downsample = Sequential(conv1x1, BatchNorm)``; stem conv 7x7/2 + maxpool 3x3/2; global average
pool; ``fc``), so its ``state_dict()`` has torchvision's keys. Weights and BatchNorm statistics are
random (fixed seed) so that eval-mode BatchNorm is not the identity.

Needs PyTorch (not a ferjax dependency). From the repository root::

    pip install torch safetensors
    python scripts/make_resnet_reference.py

Outputs (small, float32): ``tests/data/resnet50_w8.safetensors`` (the state dict, torchvision
keys) and ``tests/data/resnet50_w8_io.npz`` (``x`` NHWC input, ``features`` pooled features,
``logits`` from ``fc``; eval mode).
"""

import argparse
import os

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

WIDTH = 8
STAGE_SIZES = (2, 1, 1, 1)  # layer1 has a block with and a block without downsample
NUM_CLASSES = 5
IMAGE_SIZE = 32


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * self.expansion)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return self.relu(out + identity)


class ResNet(nn.Module):

  def __init__(self, layers, width=64, num_classes=1000):
    super().__init__()
    self.inplanes = width
    self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
    self.layer1 = self._make_layer(width, layers[0])
    self.layer2 = self._make_layer(width * 2, layers[1], stride=2)
    self.layer3 = self._make_layer(width * 4, layers[2], stride=2)
    self.layer4 = self._make_layer(width * 8, layers[3], stride=2)
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(width * 8 * Bottleneck.expansion, num_classes)

  def _make_layer(self, planes, blocks, stride=1):
    downsample = None
    if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
      downsample = nn.Sequential(
          nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, 1, stride=stride, bias=False),
          nn.BatchNorm2d(planes * Bottleneck.expansion))
    layers = [Bottleneck(self.inplanes, planes, stride, downsample)]
    self.inplanes = planes * Bottleneck.expansion
    layers += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def features(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return torch.flatten(self.avgpool(x), 1)

  def forward(self, x):
    return self.fc(self.features(x))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out_dir', default=os.path.join(os.path.dirname(__file__), '..', 'tests',
                                                        'data'))
  args = parser.parse_args()
  out_dir = os.path.normpath(args.out_dir)
  torch.manual_seed(0)
  model = ResNet(STAGE_SIZES, width=WIDTH, num_classes=NUM_CLASSES)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.BatchNorm2d):  # non-trivial eval-mode statistics and affine terms
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)
        m.running_mean.uniform_(-0.2, 0.2)
        m.running_var.uniform_(0.5, 2.0)
  model.eval()
  x = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
  with torch.no_grad():
    features = model.features(x)
    logits = model.fc(features)
  os.makedirs(out_dir, exist_ok=True)
  weights = os.path.join(out_dir, f'resnet50_w{WIDTH}.safetensors')
  io = os.path.join(out_dir, f'resnet50_w{WIDTH}_io.npz')
  save_file({k: v.contiguous() for k, v in model.state_dict().items()}, weights)
  np.savez(io, x=x.permute(0, 2, 3, 1).numpy(), features=features.numpy(),
           logits=logits.numpy(), width=WIDTH, stage_sizes=np.array(STAGE_SIZES),
           num_classes=NUM_CLASSES)
  for path in (weights, io):
    print(f'wrote {path} ({os.path.getsize(path)} bytes)')


if __name__ == '__main__':
  main()
