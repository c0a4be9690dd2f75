"""Writes tests/data/lstm_reference.npz: PyTorch nn.LSTM outputs and gradients that ferjax's LSTM/BiLSTM must match.

Needs PyTorch (not a ferjax dependency): ``pip install torch`` then, from the repository root,
``python scripts/make_lstm_reference.py``. The file holds, as float32 arrays:

* ``x`` [B, T, F] input; ``h0``/``c0`` [B, H] and ``h0_bi``/``c0_bi`` [2, B, H] initial states;
* ``uni.<name>`` / ``bi.<name>`` / ``bi2.<name>``: the state dicts of a 1-layer unidirectional, a 1-layer
  bidirectional and a 2-layer bidirectional ``torch.nn.LSTM(batch_first=True)`` (``weight_ih_l0``, ...,
  ``*_l0_reverse``, ``*_l1``);
* ``<prefix>.out``, ``.h_n``, ``.c_n``: sequence outputs and final states from zero initial states, and for
  ``uni``/``bi`` also ``.out_s0``, ``.h_n_s0``, ``.c_n_s0`` from the given initial states;
* gradients of the scalar ``loss = Σ out·w_out + Σ h_n·w_h + Σ c_n·w_c`` (zero initial states; the weights
  ``<prefix>.w_out``, ``.w_h``, ``.w_c`` are stored too): ``<prefix>_grad.x`` and
  ``<prefix>_grad.<parameter name>`` for every parameter (not under ``<prefix>.``, so that prefix holds
  exactly a state dict).
"""

import argparse
import os

import numpy as np
import torch

B, T, F, H = 2, 5, 6, 4


def _record(arrays, prefix, lstm, x, init=None):
  for name, value in lstm.state_dict().items():
    arrays[f'{prefix}.{name}'] = value
  x = x.clone().requires_grad_(True)
  out, (h_n, c_n) = lstm(x)
  w_out, w_h, w_c = torch.randn_like(out), torch.randn_like(h_n), torch.randn_like(c_n)
  loss = (out * w_out).sum() + (h_n * w_h).sum() + (c_n * w_c).sum()
  names = [n for n, _ in lstm.named_parameters()]
  grads = torch.autograd.grad(loss, [x, *lstm.parameters()])
  arrays.update({f'{prefix}.out': out, f'{prefix}.h_n': h_n, f'{prefix}.c_n': c_n,
                 f'{prefix}.w_out': w_out, f'{prefix}.w_h': w_h, f'{prefix}.w_c': w_c,
                 f'{prefix}_grad.x': grads[0]})
  arrays.update({f'{prefix}_grad.{n}': g for n, g in zip(names, grads[1:])})
  if init is not None:
    with torch.no_grad():
      out, (h_n, c_n) = lstm(x, init)
    arrays.update({f'{prefix}.out_s0': out, f'{prefix}.h_n_s0': h_n, f'{prefix}.c_n_s0': c_n})


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default=os.path.join(os.path.dirname(__file__), '..', 'tests',
                                                    'data', 'lstm_reference.npz'))
  args = parser.parse_args()
  torch.manual_seed(0)
  x = torch.randn(B, T, F)
  h0, c0 = torch.randn(1, B, H), torch.randn(1, B, H)
  h0_bi, c0_bi = torch.randn(2, B, H), torch.randn(2, B, H)
  arrays = {'x': x, 'h0': h0[0], 'c0': c0[0], 'h0_bi': h0_bi, 'c0_bi': c0_bi}
  for prefix, layers, bidirectional, init in (('uni', 1, False, (h0, c0)),
                                              ('bi', 1, True, (h0_bi, c0_bi)),
                                              ('bi2', 2, True, None)):
    lstm = torch.nn.LSTM(F, H, num_layers=layers, batch_first=True, bidirectional=bidirectional)
    _record(arrays, prefix, lstm, x, init)
  arrays = {k: v.detach().numpy().astype(np.float32) for k, v in arrays.items()}
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  args.out = os.path.normpath(args.out)
  np.savez(args.out, **arrays)
  print(f'wrote {args.out} ({os.path.getsize(args.out)} bytes, torch {torch.__version__})')


if __name__ == '__main__':
  main()
