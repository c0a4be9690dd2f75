"""Writes tests/data/gru_reference.npz: PyTorch nn.GRU outputs that ferjax's GRU/BiGRU must match.

Needs PyTorch (not a ferjax dependency): ``pip install torch`` then, from the repository root,
``python scripts/make_gru_reference.py``. The file holds, as float32 arrays:

* ``x`` [B, T, F] input, ``h0`` [B, H] / ``h0_bi`` [2, B, H] initial states;
* ``uni.<name>`` / ``bi.<name>``: the state dicts of a 1-layer unidirectional and a 1-layer
  bidirectional ``torch.nn.GRU(batch_first=True)`` (``weight_ih_l0``, ..., ``*_l0_reverse``);
* ``uni.out``/``uni.h_n`` and ``bi.out``/``bi.h_n``: sequence outputs and final states from zero
  initial states, and ``uni.out_h0``/``uni.h_n_h0``, ``bi.out_h0``/``bi.h_n_h0`` from ``h0``;
* ``bi2.*``: the same for a 2-layer bidirectional GRU (zero initial states).
"""

import argparse
import os

import numpy as np
import torch

B, T, F, H = 2, 5, 6, 4


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default=os.path.join(os.path.dirname(__file__), '..', 'tests',
                                                    'data', 'gru_reference.npz'))
  args = parser.parse_args()
  torch.manual_seed(0)
  x = torch.randn(B, T, F)
  h0 = torch.randn(1, B, H)
  h0_bi = torch.randn(2, B, H)
  arrays = {'x': x, 'h0': h0[0], 'h0_bi': h0_bi}
  for prefix, bidirectional, init in (('uni', False, h0), ('bi', True, h0_bi)):
    gru = torch.nn.GRU(F, H, num_layers=1, batch_first=True, bidirectional=bidirectional)
    for name, value in gru.state_dict().items():
      arrays[f'{prefix}.{name}'] = value
    with torch.no_grad():
      out, h_n = gru(x)
      out_h0, h_n_h0 = gru(x, init)
    arrays.update({f'{prefix}.out': out, f'{prefix}.h_n': h_n,
                   f'{prefix}.out_h0': out_h0, f'{prefix}.h_n_h0': h_n_h0})
  # A 2-layer bidirectional GRU: shows how num_layers > 1 maps (layer k = suffix _l{k}).
  gru = torch.nn.GRU(F, H, num_layers=2, batch_first=True, bidirectional=True)
  for name, value in gru.state_dict().items():
    arrays[f'bi2.{name}'] = value
  with torch.no_grad():
    arrays['bi2.out'], arrays['bi2.h_n'] = gru(x)
  arrays = {k: v.detach().numpy().astype(np.float32) for k, v in arrays.items()}
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  args.out = os.path.normpath(args.out)
  np.savez(args.out, **arrays)
  print(f'wrote {args.out} ({os.path.getsize(args.out)} bytes, torch {torch.__version__})')


if __name__ == '__main__':
  main()
