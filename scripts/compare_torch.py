r"""The Res-RBG train step in ferjax and in PyTorch eager, side by side, on the same weights and data.

PyTorch is not a ferjax dependency: run this from a separate environment that has both, e.g.

    python -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch==2.13.0 \
        && /tmp/torchvenv/bin/pip install -e . -c constraints.txt
    /tmp/torchvenv/bin/python scripts/compare_torch.py                # paper model, 2 x 8 x 112 px
    /tmp/torchvenv/bin/python scripts/compare_torch.py --config configs/res_rbg.py:synthetic --px 48

The PyTorch model below is the same network as `ferjax.models.res_rbg.ResRBG` (per-frame ResNet with
G-ECA 'avgmax' or ECA in every block, mean-pooled frame features, RBG blocks of ReLU -> GRU twice and
BatchNorm -> ReLU -> BiGRU with summed/concatenated/averaged directions and residual connections, mean
pooling over time, dropout, linear head), with module names that match ferjax's PyTorch-layout export
(`ferjax.models.convert.export_state_dict`), so it loads ferjax's initial weights exactly. Both sides
then train with AdamW (same learning rate, betas, epsilon, weight decay on kernels and GRU weight matrices
only, global-norm clipping 1.0, label smoothing 0.1) on the same uint8 batch, with dropout off by default
(`--dropout`) so that the two losses must agree: the script prints the losses of the first steps, which
are the same function of the same weights and inputs (the first step checks the forward pass and loss,
the later ones the gradients and the optimizer), and fails if they differ by more than `--rtol`.

Timing: `--steps` train steps of each, alternating ferjax / PyTorch in this one process (so both see the
same machine load), each waited for; prints the medians and the ratio ferjax / PyTorch. The checks: at
step 0 (same weights, same batch) the losses agree within 1e-4 (relative); the step-0 gradient norms and
the loss after one AdamW update (step 1) agree within `--rtol` (1e-2). Later losses are printed, not
checked: from-scratch Res-RBG has gradient norms near 1e3 (clipped to 1), Adam's first steps are about
lr * sign(g), so gradients that are float32 rounding noise make the two runs drift apart (measured at
the paper size: step 1 agrees to 1.5e-4, step 2 differs by 3.5 %). G-ECA's global max pool
has a gradient that is discontinuous at ties (measured: with G-ECA 'avgmax' on a ResNet-18 of 2,2,2,2
blocks at 32 px the two frameworks' backbone gradients differ by up to ~10 % of their maximum while ECA,
no attention, or other depths agree to 1e-4; the forward passes agree to 1e-6). Threads: PyTorch
gets `torch.set_num_threads(--threads)`; XLA:CPU sizes its thread pool to the machine's cores, so pass
`--threads` equal to the cores the process may use (2 on the development machine) for a fair
comparison. On a machine shared with other jobs PyTorch's OpenMP threads stall on each other (measured: a
tiny ResNet's backward 20-100x slower with 2 threads than with 1 on 2 cores under load 17); compare there
with one thread each and CPU time, `python scripts/compare_torch.py --threads 1 --cpu-time --steps 5`:
`--threads 1` also runs XLA:CPU single-threaded (`--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1` appended to $XLA_FLAGS), and `--cpu-time` takes the ratio of the median
process CPU seconds per step (`time.process_time`), which other jobs inflate far less than wall time
(both are always printed; the last line states the ratio used). On a quiet machine compare wall time
with the cores the process may use, e.g. `--threads 2`. ferjax's step is
the project's own jitted train step (`ferjax.steps.jit_train_step`); its compile time is printed too.
XLA flags (docs/performance.md) are read from $XLA_FLAGS when JAX starts.
"""

import argparse
import importlib.util
import json
import os
import sys
import time

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# XLA:CPU on one thread (with --threads 1): no multi-threaded Eigen, an intra-op pool of one.
SINGLE_THREAD_FLAGS = '--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1'


# ---------------------------------------------------------------------------------------------------
# PyTorch Res-RBG, module names = ferjax's PyTorch-layout export.


def eca_kernel_size(channels: int) -> int:
  t = int(abs((np.log2(channels) + 1) / 2))
  return t if t % 2 else t + 1


class ChannelAttention(nn.Module):
  """ECA (GAP) or G-ECA 'avgmax' (GAP and GMP through one shared 1-D conv, summed) -> sigmoid."""

  def __init__(self, channels, kind):
    super().__init__()
    k = eca_kernel_size(channels)
    self.kind = kind
    self.conv = nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False)

  def forward(self, x):
    logits = self.conv(x.mean((2, 3))[:, None, :])
    if self.kind == 'geca':
      logits = logits + self.conv(x.amax((2, 3))[:, None, :])
    return x * torch.sigmoid(logits)[:, 0, :, None, None]


def _bn2d(c):
  return nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, cin, planes, stride, attention):
    super().__init__()
    cout = planes * 4
    self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
    self.bn1 = _bn2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = _bn2d(planes)
    self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
    self.bn3 = _bn2d(cout)
    self.attn = ChannelAttention(cout, attention) if attention != 'none' else None
    self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _bn2d(cout))
                       if stride != 1 or cin != cout else None)

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    if self.attn is not None:
      y = self.attn(y)
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, cin, planes, stride, attention):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
    self.bn1 = _bn2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = _bn2d(planes)
    self.attn = ChannelAttention(planes, attention) if attention != 'none' else None
    self.downsample = (nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), _bn2d(planes))
                       if stride != 1 or cin != planes else None)

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    if self.attn is not None:
      y = self.attn(y)
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


STAGES = {'resnet18': (BasicBlock, (2, 2, 2, 2)), 'resnet34': (BasicBlock, (3, 4, 6, 3)),
          'resnet50': (Bottleneck, (3, 4, 6, 3))}


class ResNet(nn.Module):

  def __init__(self, arch, width, stage_sizes, attention):
    super().__init__()
    block, default_sizes = STAGES[arch]
    self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
    self.bn1 = _bn2d(width)
    cin = width
    for i, n in enumerate(stage_sizes or default_sizes):
      blocks = []
      for j in range(n):
        blocks.append(block(cin, width * 2**i, 2 if i > 0 and j == 0 else 1, attention))
        cin = width * 2**i * block.expansion
      setattr(self, f'layer{i + 1}', nn.Sequential(*blocks))
    self.num_features = cin

  def forward(self, x):
    x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return x.mean((2, 3))


class RBGBlock(nn.Module):
  """ReLU -> GRU twice, then bigru_layers x (BatchNorm over batch and time -> ReLU -> BiGRU)."""

  def __init__(self, d, hidden, m):
    super().__init__()
    self.m = m
    self.gru = nn.ModuleList()
    for _ in range(2):
      self.gru.append(nn.GRU(d, hidden, batch_first=True))
      d = hidden
    self.norm = nn.ModuleList()
    self.bigru = nn.ModuleList()
    for _ in range(m.bigru_layers):
      if m.block_norm:
        self.norm.append(nn.BatchNorm1d(d, eps=1e-5, momentum=0.1))
      self.bigru.append(nn.GRU(d, hidden, batch_first=True, bidirectional=True))
      d = 2 * hidden if m.merge == 'concat' else hidden
    self.out_features = d

  def _add(self, y, x):
    return y + x if self.m.residual and y.shape == x.shape else y

  def forward(self, x):
    for gru in self.gru:
      y, _ = gru(F.relu(x) if self.m.relu_before_gru else x)
      x = self._add(y, x)
    for i, bigru in enumerate(self.bigru):
      y = x
      if self.m.block_norm:
        y = self.norm[i](y.reshape(-1, y.shape[-1])).reshape(y.shape)
      y, _ = bigru(F.relu(y))
      fwd, bwd = y.chunk(2, dim=-1)
      y = {'concat': y, 'sum': fwd + bwd, 'mean': 0.5 * (fwd + bwd)}[self.m.merge]
      x = self._add(y, x)
    return x


class ResRBG(nn.Module):

  def __init__(self, m, num_classes):
    super().__init__()
    if m.attention not in ('none', 'eca', 'geca') or (m.attention == 'geca'
                                                        and m.geca_variant != 'avgmax'):
      raise ValueError(f'this script builds attention none/eca/geca(avgmax); found {m.attention}')
    self.m = m
    self.backbone = ResNet(m.backbone, m.width, tuple(m.stage_sizes), m.attention)
    d = self.backbone.num_features
    self.temporal = nn.ModuleList()
    for _ in range(m.rbg_blocks):
      self.temporal.append(RBGBlock(d, m.hidden, m))
      d = self.temporal[-1].out_features
    self.dropout = nn.Dropout(m.dropout)
    self.head = nn.Linear(d, num_classes)

  def forward(self, frames):  # [B, T, 3, H, W] normalised
    b, t = frames.shape[:2]
    x = self.backbone(frames.flatten(0, 1)).reshape(b, t, -1)
    for block in self.temporal:
      x = block(x)
    x = x.mean(1) if self.m.pooling == 'mean' else x[:, -1]
    return self.head(self.dropout(x))


def decayed_parameters(model: nn.Module) -> set[str]:
  """ferjax's weight-decay mask (`steps.decays`: kernels and GRU weight matrices) in PyTorch names:
  conv and linear weights (ECA's 1-D conv included) and nn.GRU's weight_ih/weight_hh, not biases or
  BatchNorm parameters."""
  out = set()
  for prefix, module in model.named_modules():
    for name, _ in module.named_parameters(recurse=False):
      if (isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)) and name == 'weight') or (
          isinstance(module, nn.GRU) and name.startswith('weight_')):
        out.add(f'{prefix}.{name}' if prefix else name)
  return out


# ---------------------------------------------------------------------------------------------------


def load_config(spec: str):
  path, _, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('ferjax_config', os.path.join(REPO, path)
                                                       if not os.path.isabs(path) else path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def _median(times):
  return float(np.median(times))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--config', default='configs/res_rbg.py', help='configs/res_rbg.py[:arg]')
  p.add_argument('--batch', type=int, default=2)
  p.add_argument('--frames', type=int, default=8, help='T')
  p.add_argument('--px', type=int, default=112)
  p.add_argument('--steps', type=int, default=5, help='timed steps of each, alternating')
  p.add_argument('--threads', type=int, default=2)
  p.add_argument('--dropout', type=float, default=0.0, help='0 so that the losses must agree')
  p.add_argument('--lr', type=float, default=1e-4)
  p.add_argument('--rtol', type=float, default=1e-2,
                 help='allowed relative loss difference after the first update')
  p.add_argument('--channels_last', action='store_true', help='PyTorch NHWC memory format')
  p.add_argument('--cpu-time', '--cpu_time', dest='cpu_time', action='store_true',
                 help='compare process CPU seconds per step (robust on a shared machine) instead of wall')
  p.add_argument('--json', default=None)
  args = p.parse_args(argv)
  torch.set_num_threads(args.threads)
  if args.threads == 1:  # XLA:CPU single-threaded too (read when JAX starts, below).
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + SINGLE_THREAD_FLAGS).strip()

  import jax  # pylint: disable=import-outside-toplevel  # after argparse: --help stays fast.
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from ferjax import config as config_lib, models, sharding, steps  # pylint: disable=import-outside-toplevel
  from ferjax.models import convert  # pylint: disable=import-outside-toplevel

  config = load_config(args.config)
  config.input.batch_size, config.dataset.num_frames = args.batch, args.frames
  config.dataset.image_size, config.model.dropout = args.px, args.dropout
  config.train.learning_rate = args.lr
  config_lib.validate(config)
  num_classes = 7

  # ferjax: the project's jitted train step; warm-up 0 and a long cosine, so the LR is ~constant.
  model = models.create_model(config.model, num_classes, rngs=nnx.Rngs(params=config.seed))
  weights = convert.export_state_dict(model)
  tx = steps.make_optimizer(config.train, total_steps=10**9, warmup_steps=0)
  graphdef, state = steps.init_state(model, tx, config.seed)
  del model
  mesh = sharding.make_mesh(1, 1, jax.devices()[:1])
  state_sharding = sharding.state_shardings(state, mesh)
  state = jax.device_put(state, state_sharding)
  family = models.get_family(config.model.name)
  train_fn = steps.jit_train_step(graphdef, tx, family.losses(config), state_sharding,
                                  sharding.batch_sharding(mesh), sharding.replicated(mesh))
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (args.batch, args.frames, args.px, args.px, 3), dtype=np.uint8)
  labels = rng.integers(0, num_classes, (args.batch,)).astype(np.int32)
  batch = sharding.global_batch({'frames': frames, 'label': labels}, mesh)
  start, start_cpu = time.perf_counter(), time.process_time()
  compiled = train_fn.lower(state, batch).compile()
  compile_s, compile_cpu_s = time.perf_counter() - start, time.process_time() - start_cpu

  # PyTorch: the same network, ferjax's initial weights.
  tmodel = ResRBG(config.model, num_classes)
  missing, unexpected = tmodel.load_state_dict(
      {k: torch.from_numpy(np.array(v)) for k, v in weights.items()}, strict=False)
  missing = [k for k in missing if not k.endswith('num_batches_tracked')]
  if missing or unexpected:
    sys.exit(f'error: PyTorch model and ferjax export differ: missing {missing[:5]}, '
             f'unexpected {unexpected[:5]}')
  tmodel.train()
  memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
  tmodel = tmodel.to(memory_format=memory_format)
  named, decayed = list(tmodel.named_parameters()), decayed_parameters(tmodel)
  groups = [{'params': [p for n, p in named if n in decayed], 'weight_decay': config.train.weight_decay},
            {'params': [p for n, p in named if n not in decayed], 'weight_decay': 0.0}]
  opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
  mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 1, 3, 1, 1)
  std = torch.tensor([0.229, 0.224, 0.225]).view(1, 1, 3, 1, 1)
  tframes = torch.from_numpy(frames).permute(0, 1, 4, 2, 3)
  tlabels = torch.from_numpy(labels).long()

  def torch_step():
    x = (tframes.float() / 255.0 - mean) / std
    if args.channels_last:
      x = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).view(x.shape)
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(tmodel(x), tlabels, label_smoothing=config.train.label_smoothing)
    loss.backward()
    norm = nn.utils.clip_grad_norm_(tmodel.parameters(),
                                    config.train.grad_clip if config.train.grad_clip > 0 else 1e30)
    opt.step()
    return float(loss.detach()), float(norm)

  holder = {'state': state}

  def jax_step():
    holder['state'], metrics = compiled(holder['state'], batch)
    return float(jax.device_get(metrics['loss'])), float(jax.device_get(metrics['grad_norm']))

  jax_times, torch_times, jax_losses, torch_losses = [], [], [], []
  jax_cpu, torch_cpu = [], []
  for _ in range(args.steps + 1):  # The first pair is the warm-up and the loss check's first step.
    for fn, times, cpu, losses in ((jax_step, jax_times, jax_cpu, jax_losses),
                                   (torch_step, torch_times, torch_cpu, torch_losses)):
      start, start_cpu = time.perf_counter(), time.process_time()
      losses.append(fn())
      times.append(time.perf_counter() - start)
      cpu.append(time.process_time() - start_cpu)
  def rel(a, b):
    return abs(a - b) / abs(b)
  # Step 0: the same weights and inputs, so loss and gradient norm must agree to float32 rounding.
  # Later steps follow AdamW, whose first updates are about lr * sign(gradient): gradients that are
  # rounding noise (|g| near eps) flip signs, so agreement there is looser (--rtol).
  first = rel(jax_losses[0][0], torch_losses[0][0])
  later = max(rel(jax_losses[0][1], torch_losses[0][1]),
              rel(jax_losses[1][0], torch_losses[1][0]) if args.steps else 0.0)
  result = {
      'config': args.config, 'batch': args.batch, 'frames': args.frames, 'px': args.px,
      'params_total': sum(p.numel() for p in tmodel.parameters()),
      'threads': args.threads, 'torch': torch.__version__, 'jax': jax.__version__,
      'xla_flags': os.environ.get('XLA_FLAGS', ''), 'channels_last': args.channels_last,
      'ferjax_compile_s': round(compile_s, 2),
      'ferjax_compile_cpu_s': round(compile_cpu_s, 2),  # ~ the wall time on an idle machine.
      'ferjax_step_s': round(_median(jax_times[1:]), 3),
      'torch_step_s': round(_median(torch_times[1:]), 3),
      'ferjax_step_times': [round(t, 3) for t in jax_times[1:]],
      'torch_step_times': [round(t, 3) for t in torch_times[1:]],
      # Process CPU seconds per step (all threads): with --threads 1 the step's own work, which other
      # jobs on the machine inflate far less than the wall time.
      'ferjax_step_cpu_s': round(_median(jax_cpu[1:]), 3) if args.steps else None,
      'torch_step_cpu_s': round(_median(torch_cpu[1:]), 3) if args.steps else None,
      'ferjax_step_cpu_times': [round(t, 3) for t in jax_cpu[1:]],
      'torch_step_cpu_times': [round(t, 3) for t in torch_cpu[1:]],
      'ferjax_losses': [round(v[0], 6) for v in jax_losses],
      'torch_losses': [round(v[0], 6) for v in torch_losses],
      'ferjax_grad_norm_0': round(jax_losses[0][1], 6), 'torch_grad_norm_0': round(torch_losses[0][1], 6),
      'step0_loss_relative_difference': float(f'{first:.3g}'),
      'grad_norm_and_step1_loss_relative_difference': float(f'{later:.3g}'),
  }
  result['ratio_ferjax_over_torch'] = round(result['ferjax_step_s'] / result['torch_step_s'], 3)
  if args.steps:
    result['cpu_ratio_ferjax_over_torch'] = round(
        result['ferjax_step_cpu_s'] / result['torch_step_cpu_s'], 3)
  result['timing'] = 'cpu' if args.cpu_time else 'wall'
  width = max(map(len, result))
  print('\n'.join(f'{k:<{width}}  {v}' for k, v in result.items()))
  kind = 'cpu' if args.cpu_time and args.steps else 'wall'
  f, t = ((result['ferjax_step_cpu_s'], result['torch_step_cpu_s']) if kind == 'cpu'
          else (result['ferjax_step_s'], result['torch_step_s']))
  print(f'\nferjax / PyTorch = {f / t:.3f} ({kind} seconds per step, median of {args.steps}: ferjax '
        f'{f:.3f} s, PyTorch {t:.3f} s; {args.threads} thread(s) each; ferjax runs at '
        f'{t / f:.2f}x PyTorch\'s speed)')
  if args.json:
    with open(args.json, 'w') as out:
      json.dump(result, out, indent=2)
  if first > 1e-4 or later > args.rtol:
    sys.exit(f'error: ferjax and PyTorch differ (relative): step 0 loss {first:.3g} (allowed 1e-4), '
             f'gradient norm and step-1 loss {later:.3g} (--rtol {args.rtol}): not the same function')
  return 0


if __name__ == '__main__':
  sys.exit(main())
