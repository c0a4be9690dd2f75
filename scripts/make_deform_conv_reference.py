"""Writes tests/data/deform_conv_reference.npz: torchvision.ops.deform_conv2d values and gradients that
ferjax's ``ferjax.models.deformable.deform_conv2d`` must match.

Needs PyTorch and torchvision (not ferjax dependencies): ``pip install torch torchvision`` into a separate
environment, then, from the repository root, ``python scripts/make_deform_conv_reference.py``.

One case per key prefix ``<case>.``, all float32 in torchvision's NCHW layout (the test transposes):
``x`` [N, C, H, W], ``offset`` [N, 2 G kh kw, Ho, Wo], ``mask`` [N, G kh kw, Ho, Wo], ``weight``
[Cout, C, kh, kw], ``cotangent`` [N, Cout, Ho, Wo] (the gradients are of ``sum(out * cotangent)``),
``out``, ``grad_x``, ``grad_offset``, ``grad_mask``, ``grad_weight``, and ``conf`` = (stride_h, stride_w,
pad_h, pad_w, dil_h, dil_w). Offsets are drawn with a standard deviation of 2 to 3 pixels, so some samples
leave the image (entirely or by part of a pixel); ``edge`` adds offsets that put whole taps off the map.
Positions are kept away from integers, where the bilinear weights have a kink.
"""

import argparse
import os

import numpy as np
import torch
from torchvision.ops import deform_conv2d

# name: (N, C, H, W, Cout, kh, kw, offset groups, stride, padding, dilation, offset std)
CASES = {
    'stride1': (2, 4, 7, 9, 3, 3, 3, 1, (1, 1), (1, 1), (1, 1), 2.0),
    'stride2': (2, 4, 8, 7, 5, 3, 3, 1, (2, 2), (1, 1), (1, 1), 2.0),
    'dilation2': (1, 4, 9, 6, 3, 3, 3, 1, (1, 1), (2, 2), (2, 2), 2.0),
    'groups2': (2, 6, 6, 8, 4, 3, 3, 2, (1, 1), (1, 1), (1, 1), 2.5),
    'edge': (1, 2, 5, 6, 2, 3, 3, 1, (1, 1), (1, 1), (1, 1), 3.0),
    'rect_kernel': (1, 4, 6, 7, 3, 3, 2, 2, (2, 1), (1, 0), (1, 2), 1.5),
}


def _offsets(shape, std, generator):
  """Random offsets whose fractional parts stay in [0.1, 0.9] (away from the kinks at integers)."""
  raw = torch.randn(shape, generator=generator) * std
  frac = 0.1 + 0.8 * torch.rand(shape, generator=generator)
  return torch.floor(raw) + frac


def make_case(n, c, h, w, cout, kh, kw, groups, stride, padding, dilation, std, generator, edge):
  ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
  wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
  x = torch.randn(n, c, h, w, generator=generator)
  offset = _offsets((n, 2 * groups * kh * kw, ho, wo), std, generator)
  if edge:  # Whole taps pushed off the map: up, left, and far beyond the bottom-right corner.
    offset[:, 0::2, 0, :] -= 4.0
    offset[:, 1::2, :, 0] -= 4.0
    offset[:, :, -1, -1] += 10.0
  mask = torch.rand(n, groups * kh * kw, ho, wo, generator=generator)
  weight = torch.randn(cout, c, kh, kw, generator=generator) / np.sqrt(c * kh * kw)
  cotangent = torch.randn(n, cout, ho, wo, generator=generator)
  leaves = [t.clone().requires_grad_(True) for t in (x, offset, mask, weight)]
  out = deform_conv2d(leaves[0], leaves[1], leaves[3], stride=stride, padding=padding,
                      dilation=dilation, mask=leaves[2])
  (out * cotangent).sum().backward()
  arrays = {'x': x, 'offset': offset, 'mask': mask, 'weight': weight, 'cotangent': cotangent,
            'out': out.detach()}
  for name, leaf in zip(('x', 'offset', 'mask', 'weight'), leaves):
    arrays[f'grad_{name}'] = leaf.grad
  arrays = {k: v.numpy().astype(np.float32) for k, v in arrays.items()}
  arrays['conf'] = np.array([*stride, *padding, *dilation], np.int32)
  return arrays


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default=os.path.join(os.path.dirname(__file__), '..', 'tests',
                                                    'data', 'deform_conv_reference.npz'))
  args = parser.parse_args()
  torch.set_default_dtype(torch.float64)  # Reference numbers in float64, stored as float32.
  generator = torch.Generator().manual_seed(0)
  arrays = {}
  for name, spec in CASES.items():
    case = make_case(*spec, generator=generator, edge=name == 'edge')
    arrays.update({f'{name}.{k}': v for k, v in case.items()})
  out = os.path.normpath(args.out)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  np.savez_compressed(out, **arrays)
  import torchvision  # pylint: disable=import-outside-toplevel
  print(f'wrote {out} ({os.path.getsize(out)} bytes, torch {torch.__version__}, torchvision '
        f'{torchvision.__version__})')


if __name__ == '__main__':
  main()
