"""RFSCNN (Zhou, JIPS): two streams (face frames, optical flow) with spatial and temporal recursive layers.

Each stream: a CNN per frame (flow image) → the spatial recursive layer over its last feature map
(``spatial_recurrent.SpatialRecurrent``: four directional sweeps, sparse projection over the nodes,
m_t = sum_r P^r s^r) → the temporal recursive layer over m_1..m_L (``TemporalRecurrent``: forward and
backward RNNs, each direction's states projected over time by a sparse L → L_d matrix,
o = P^f q^f + P^b q^b). The two streams' outputs are fused (concatenation, sum or element-wise product:
the paper's best) and classified by a linear layer trained with softmax cross-entropy or as a multiclass
SVM (hinge loss with L2 regularisation of its weights, the paper). An L1 penalty keeps the sparse
projections (every parameter named ``sparse_proj``) sparse.

The frame stream sees T frames (ImageNet-normalised), the flow stream the T - 1 flow images between
neighbouring frames, 3 channels (dx, dy, magnitude) in pixels of the S x S frame, multiplied by
``flow_scale`` before the CNN.

Where the paper is silent, this project chose (all arguments / config fields, see configs/rfscnn.py):

* the CNN: a ResNet (default ResNet-18) per stream, optionally from ImageNet weights (the flow stream's
  first convolution also takes 3 channels, so ImageNet weights load there too); the paper's depth
  description is not usable;
* the spatial layer's grid = the CNN's last feature map (``grid`` x ``grid``, 7 at 224 px), its hidden
  size, K_d, and P^r acting on the hidden axis (m_t = K_d x D features, flattened); sigma = tanh;
* the neighbours N^r_ij (``spatial_neighbours``): the vertical and the horizontal predecessor of the
  sweep (4-connected, 'orthogonal'), or those and the diagonal one (STRNN's predecessor set,
  'diagonal');
* the temporal cell: the paper's plain RNN (tanh) by default, or ferjax's PyTorch-layout GRU;
* P^f/P^b act on the hidden axis after the sparse time projection (o: L_d x O features, flattened);
* BatchNorm on each stream's output before the fusion (``fusion_norm``): the product of two small
  outputs otherwise starts near zero and shrinks further (measured: fused features at 0.01, logits at
  0.02, chance accuracy after 100 steps on the synthetic set);
* before a product fusion, that BatchNorm's offset (a trainable parameter) starts at ``product_offset``
  = c, so the fused features start as (c + a) * (c + b) = c^2 + c (a + b) + a * b. With c = 1 that is
  a **sum fusion plus the product term**, not the paper's plain product: it contains the sum, so a
  result of this operator cannot show that the multiplicative interaction helps; c = 0 is the plain,
  centred product a * b. The offset is what makes the product trainable from scratch: with c = 0 the
  gradient reaching stream a is the head's signal times b, a zero-mean feature of the *other* stream
  that does not yet depend on the class, so it averages out over a batch and neither stream starts to
  learn (concat and sum, whose gradients carry no such factor, learn). With c = 1 each stream first
  learns through its linear term, as in the paper's first stage (each stream trained alone), and the
  product term grows as both streams become informative. docs/models/rfscnn-readings.md measures
  c = 0, c = 1 and sum fusion side by side;
* the two stages: stage 1 trains everything jointly; stage 2 (``freeze_streams`` + ``train.trainable``
  + ``init.checkpoint``) trains the classifier on the frozen streams.
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
from flax import nnx

from ferjax import config as config_lib
from ferjax import losses as losses_lib
from ferjax import registry
from ferjax.data import flow as flow_lib
from ferjax.data import inputs as inputs_lib
from ferjax.models import convert
from ferjax.models import precision
from ferjax.models import recurrent
from ferjax.models import resnet
from ferjax.models import spatial_recurrent

FUSIONS = ('concat', 'sum', 'product')
HEADS = ('softmax', 'svm')
# The SVM head's multiclass form: Crammer-Singer (one joint hinge over the rival classes) or one binary
# SVM per class (one-vs-rest, the usual form of an SVM trained on fixed features, e.g. liblinear).
SVM_MULTICLASS = ('crammer_singer', 'one_vs_rest')
HEAD_KERNEL = r'(^|/)head/kernel($|/)'
CELLS = ('rnn', 'gru')
STREAMS = ('rgb', 'flow')
# Parameters under an L1 penalty and counted by `sparsity`: every sparse projection.
SPARSE_PATTERN = r'(^|/)sparse_proj($|/)'
NEAR_ZERO = 1e-3


class BiRNN(nnx.Module):
  """Bidirectional Elman RNN, q_t = tanh(U x_t + W q_{t-1} + b), both directions in one scan.

  Parameters have a leading direction axis (0 = forward, 1 = backward): ``weight_ih`` [2, F, H],
  ``weight_hh`` [2, H, H], ``bias`` [2, H]. Returns [B, T, 2H] (forward states, then backward), the layout
  of ``recurrent.BiGRU(merge='concat')``.
  """

  def __init__(self, in_features: int, hidden: int, *, rngs: nnx.Rngs):
    bound = 1.0 / math.sqrt(hidden)  # PyTorch's nn.RNN init.
    uniform = lambda shape: nnx.Param(jax.random.uniform(rngs.params(), shape, jnp.float32, -bound,
                                                         bound))
    self.in_features, self.hidden = in_features, hidden
    self.weight_ih = uniform((2, in_features, hidden))
    self.weight_hh = uniform((2, hidden, hidden))
    self.bias = uniform((2, hidden))

  @property
  def out_features(self) -> int:
    return 2 * self.hidden

  def __call__(self, x: jax.Array):
    # Input terms of both directions, time-major, the backward one reversed in time: [T, 2, B, H].
    u = jnp.einsum('btf,dfh->tdbh', x.astype(jnp.float32), self.weight_ih[...]) + self.bias[...][:, None]
    u = jnp.stack([u[:, 0], u[::-1, 1]], axis=1)
    w_hh = self.weight_hh[...]

    def step(q, u_t):
      q = jnp.tanh(u_t + jnp.einsum('dbh,dhk->dbk', q, w_hh))
      return q, q

    _, qs = jax.lax.scan(step, jnp.zeros_like(u[0]), u)
    forward, backward = qs[:, 0], qs[::-1, 1]
    return jnp.swapaxes(jnp.concatenate([forward, backward], -1), 0, 1), None


class TemporalRecurrent(nnx.Module):
  """The temporal recursive layer: forward and backward RNNs over m_1..m_L, each direction's states
  projected over time by a sparse matrix (``sparse_proj`` [2, L, L_d]), then o = P^f q^f + P^b q^b with
  P (``weight_out`` [2, H, O]) on the hidden axis; output [B, L_d * O].

  Args:
    in_features: size of m_t.
    hidden: H, per direction.
    length: L, the number of time steps (fixed: the sparse projection is L x L_d).
    proj_steps: L_d.
    out_features: O.
    cell: 'rnn' (the paper's plain RNN, ``BiRNN``) or 'gru' (``recurrent.BiGRU``, PyTorch layout).
  """

  def __init__(self, in_features: int, hidden: int, length: int, proj_steps: int, out_features: int,
               *, cell: str = 'rnn', rngs: nnx.Rngs):
    if cell not in CELLS:
      raise ValueError(f'Unknown temporal cell {cell!r}; expected one of {CELLS}.')
    self.length, self.proj_steps, self.out_features = length, proj_steps, out_features
    self.rnn = (BiRNN(in_features, hidden, rngs=rngs) if cell == 'rnn'
                else recurrent.BiGRU(in_features, hidden, merge='concat', rngs=rngs))
    normal = jax.nn.initializers.normal
    self.sparse_proj = nnx.Param(normal(1 / math.sqrt(length))(rngs.params(), (2, length, proj_steps)))
    self.weight_out = nnx.Param(normal(1 / math.sqrt(2 * hidden))(rngs.params(),
                                                                   (2, hidden, out_features)))

  @property
  def features(self) -> int:
    return self.proj_steps * self.out_features

  def __call__(self, m: jax.Array) -> jax.Array:
    if m.ndim != 3 or m.shape[1] != self.length:
      raise ValueError(f'TemporalRecurrent expects [B, {self.length}, F] (L = {self.length} steps), '
                       f'got shape {m.shape}.')
    q, _ = self.rnn(m)
    b, length, _ = q.shape
    q = jnp.moveaxis(q.astype(jnp.float32).reshape(b, length, 2, -1), 2, 0)  # [2, B, L, H]
    s = jnp.einsum('dblh,dlq->dbqh', q, self.sparse_proj[...])
    return jnp.einsum('dbqh,dho->bqo', s, self.weight_out[...]).reshape(b, self.features)


class RFSCNN(nnx.Module):
  """The two-stream RFSCNN classifier.

  Top-level components (the groups of ``count_params``; ``init.<name>_weights`` loads a file into the
  ResNets): ``backbone_rgb``, ``spatial_rgb``, ``temporal_rgb``, ``norm_rgb`` (BatchNorm before the
  fusion, if ``fusion_norm``), the same four ``*_flow``, and ``head``.

  Args:
    num_classes: expression classes.
    num_frames: T; the flow stream has T - 1 steps.
    backbone, width, stage_sizes: the ResNet of each stream.
    grid: side of the ResNet's last feature map (7 at 224 px, 8 at 227 px, 2 at 48 px).
    spatial_hidden, spatial_proj, spatial_out, spatial_activation: H, K_d, D, sigma of the spatial layer.
    spatial_neighbours: N^r_ij, 'orthogonal' (4-connected) or 'diagonal' (with the diagonal predecessor).
    temporal_hidden, temporal_proj, temporal_out, temporal_cell: H, L_d, O, cell of the temporal layer.
    fusion: 'concat' | 'sum' | 'product'.
    streams: 'both', or one stream alone ('rgb' | 'flow'; no fusion).
    fusion_norm: standardise each stream's output (BatchNorm) before the fusion, so that the product
      of the two starts at unit scale (without it, product fusion of two small outputs trains slowly
      from scratch; the paper does not say).
    product_offset: initial BatchNorm offset c of each stream's output before a product fusion (needs
      ``fusion_norm``): the fused features start as (c + a) * (c + b). c = 1 (the default) is sum fusion
      plus the product term a * b, which trains from scratch; c = 0 is the plain centred product, which
      stalls (see the module docstring). Concat and sum fusions keep offset 0 (the head's bias absorbs
      a constant).
    freeze_streams: run the streams in inference mode (BatchNorm running averages) under
      ``stop_gradient``: the paper's second stage, a classifier on fixed features (with
      ``train.trainable='head'``, which also keeps the optimizer off the streams).
    flow_scale: factor applied to the flow (pixels) before its CNN.
    dropout: rate before the classifier.
    dtype: compute dtype of the CNNs and input projections (``model.dtype``: 'float32', 'bfloat16' or
      'auto' = bfloat16 on TPU/GPU, float32 on CPU); the recurrences, the fusion and the head run in
      float32.
    unroll: ``lax.scan`` unroll over the spatial layer's diagonals.
  """

  def __init__(self, num_classes: int, *, num_frames: int = 16, backbone: str = 'resnet18',
               width: int = 64, stage_sizes=None, grid: int = 7, spatial_hidden: int = 128,
               spatial_proj: int = 16, spatial_out: int = 16, spatial_activation: str = 'tanh',
               spatial_neighbours: str = 'orthogonal',
               temporal_hidden: int = 128, temporal_proj: int = 8, temporal_out: int = 32,
               temporal_cell: str = 'rnn', fusion: str = 'product', streams: str = 'both',
               freeze_streams: bool = False, fusion_norm: bool = True, product_offset: float = 1.0,
               flow_scale: float = 0.2,
               dropout: float = 0.5,
               dtype=jnp.float32, unroll: int | bool = 1, rngs: nnx.Rngs):
    if fusion not in FUSIONS:
      raise ValueError(f'Unknown fusion {fusion!r}; expected one of {FUSIONS}.')
    if streams not in ('both',) + STREAMS:
      raise ValueError(f"Unknown streams {streams!r}; expected 'both' or one of {STREAMS}.")
    if num_frames < 2:
      raise ValueError(f'RFSCNN needs num_frames >= 2 (flow is between neighbours), got {num_frames}.')
    self.num_frames, self.grid, self.fusion, self.streams = num_frames, grid, fusion, streams
    self.freeze_streams, self.flow_scale, self.dtype = freeze_streams, flow_scale, dtype
    offset = jax.nn.initializers.constant(product_offset if fusion == 'product' else 0.0)
    for name in self.stream_names:
      cnn = resnet.ResNet(backbone, width=width, stage_sizes=stage_sizes, dtype=dtype, rngs=rngs)
      spatial = spatial_recurrent.SpatialRecurrent(
          cnn.num_features, spatial_hidden, (grid, grid), spatial_proj, spatial_out,
          activation=spatial_activation, neighbours=spatial_neighbours, unroll=unroll, dtype=dtype,
          rngs=rngs)
      length = num_frames if name == 'rgb' else num_frames - 1
      temporal = TemporalRecurrent(spatial.features, temporal_hidden, length, temporal_proj,
                                   temporal_out, cell=temporal_cell, rngs=rngs)
      setattr(self, f'backbone_{name}', cnn)
      setattr(self, f'spatial_{name}', spatial)
      setattr(self, f'temporal_{name}', temporal)
      setattr(self, f'norm_{name}', resnet.BatchNorm(temporal.features, momentum=resnet.BN_MOMENTUM,
                                                     epsilon=resnet.BN_EPSILON, bias_init=offset,
                                                     rngs=rngs)
              if fusion_norm else None)
    features = temporal_proj * temporal_out
    if fusion == 'concat':
      features *= len(self.stream_names)
    self.dropout = nnx.Dropout(dropout)
    self.head = nnx.Linear(features, num_classes, rngs=rngs)

  @property
  def stream_names(self) -> tuple[str, ...]:
    return STREAMS if self.streams == 'both' else (self.streams,)

  def stream(self, name: str, images: jax.Array, train: bool) -> jax.Array:
    """One stream: [B, L, S, S, 3] images → its temporal layer's output [B, L_d * O]."""
    b, length = images.shape[:2]
    cnn = getattr(self, f'backbone_{name}')
    x = cnn.features(images.reshape(b * length, *images.shape[2:]), train)
    if x.shape[1:3] != (self.grid, self.grid):
      raise ValueError(f'RFSCNN model.grid={self.grid} but the {name} ResNet gives a '
                       f'{x.shape[1]}x{x.shape[2]} feature map for {images.shape[2]} px inputs; set '
                       f'model.grid={x.shape[1]}.')
    m = getattr(self, f'spatial_{name}')(x)
    o = getattr(self, f'temporal_{name}')(m.reshape(b, length, -1))
    norm = getattr(self, f'norm_{name}')
    return o if norm is None else norm(o, use_running_average=not train)

  def __call__(self, batch: dict[str, jax.Array], *, train: bool = False,
               rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
    """``{'logits': float32 [B, num_classes]}`` for ``frames`` [B, T, S, S, 3] (normalised) and
    ``flow`` [B, T - 1, S, S, 3] (dx, dy, magnitude in pixels)."""
    frames = batch['frames']
    if frames.ndim != 5 or frames.shape[1] != self.num_frames:
      raise ValueError(f'RFSCNN expects frames [B, {self.num_frames}, S, S, 3] (model.num_frames), '
                       f'got shape {frames.shape}.')
    inputs = {'rgb': frames}
    if 'flow' in self.stream_names:
      if 'flow' not in batch:
        raise ValueError('RFSCNN with the flow stream needs batch["flow"] [B, T - 1, S, S, 3]; the batch '
                         f'has {sorted(batch)}.')
      flow = batch['flow']
      if flow.shape[:2] != (frames.shape[0], self.num_frames - 1):
        raise ValueError(f'RFSCNN expects flow [B, {self.num_frames - 1}, S, S, 3], got shape '
                         f'{flow.shape}.')
      inputs['flow'] = flow.astype(jnp.float32) * self.flow_scale
    stream_train = train and not self.freeze_streams
    outs = [self.stream(name, inputs[name], stream_train) for name in self.stream_names]
    if self.freeze_streams:
      outs = [jax.lax.stop_gradient(o) for o in outs]
    if len(outs) == 1:
      fused = outs[0]
    elif self.fusion == 'concat':
      fused = jnp.concatenate(outs, -1)
    elif self.fusion == 'sum':
      fused = outs[0] + outs[1]
    else:
      fused = outs[0] * outs[1]
    if train and self.dropout.rate > 0 and rngs is None:
      raise ValueError('RFSCNN(train=True) with dropout > 0 needs `rngs` (e.g. nnx.Rngs(dropout=key)).')
    fused = self.dropout(fused, deterministic=not train, rngs=rngs)
    return {'logits': self.head(fused).astype(jnp.float32)}


def sparsity(params, threshold: float = NEAR_ZERO) -> jax.Array:
  """Share of the sparse projections' entries with |w| < ``threshold`` (``params``: a model's
  ``nnx.State`` of ``nnx.Param``, or any pytree whose paths name ``sparse_proj``)."""
  regex = re.compile(SPARSE_PATTERN)
  leaves = [x for path, x in jax.tree_util.tree_flatten_with_path(params)[0]
            if regex.search(losses_lib.param_path(path))]
  if not leaves:
    raise ValueError('sparsity: no sparse_proj parameter in the given tree')
  near = sum(jnp.sum(jnp.abs(x) < threshold) for x in leaves)
  return near.astype(jnp.float32) / sum(x.size for x in leaves)


def l2_penalty(pattern: str) -> losses_lib.Term:
  """Sum of w^2 over the parameters whose path matches ``pattern`` (the SVM's regulariser)."""
  regex = re.compile(pattern)

  def term(outputs, batch, params):
    del outputs, batch
    leaves = [jnp.sum(jnp.square(x)) for path, x in jax.tree_util.tree_flatten_with_path(params)[0]
              if regex.search(losses_lib.param_path(path))]
    if not leaves:
      raise ValueError(f'l2_penalty({pattern!r}) matches no parameter')
    return sum(leaves)
  return term


def _sparsity_term(outputs, batch, params):
  del outputs, batch
  return sparsity(params)


def rfscnn_losses(config) -> losses_lib.Loss:
  """softmax: cross-entropy; svm: multiclass hinge (``svm_multiclass``: Crammer-Singer or one-vs-rest)
  + ``svm_l2`` * ||head kernel||^2, the SVM's only regulariser (``no_decay`` exempts the kernel from
  the optimizer's weight decay); both + ``l1_weight`` * sum |sparse_proj|. A weight-0 term 'sparsity'
  logs the share of near-zero (|w| < 1e-3) sparse-projection entries (``loss/sparsity`` in the console
  and metrics.jsonl)."""
  m = config.model
  if m.head == 'svm':
    one_vs_rest = m.get('svm_multiclass', 'crammer_singer') == 'one_vs_rest'
    hinge = losses_lib.one_vs_rest_hinge(1.0) if one_vs_rest else losses_lib.multiclass_hinge(1.0)
    terms = [('hinge', 1.0, hinge), ('svm_l2', m.svm_l2, l2_penalty(HEAD_KERNEL))]
  else:
    terms = [('cross_entropy', 1.0, losses_lib.cross_entropy(config.train.label_smoothing))]
  terms.append(('l1', m.l1_weight, losses_lib.l1_penalty(SPARSE_PATTERN)))
  terms.append(('sparsity', 0.0, _sparsity_term))
  return losses_lib.Loss(tuple(terms))


# config.model of 'rfscnn': the checks; the defaults are in configs/rfscnn.py.
SCHEMA = {
    'num_frames': config_lib.number(2, 512, integer=True),
    'backbone': config_lib.one_of(*resnet.RESNET_SPECS),
    'width': config_lib.number(1, integer=True),
    'stage_sizes': config_lib.int_tuple,
    'grid': config_lib.number(1, 64, integer=True),
    'spatial_hidden': config_lib.number(1, integer=True),
    'spatial_proj': config_lib.number(1, integer=True),
    'spatial_out': config_lib.number(1, integer=True),
    'spatial_activation': config_lib.one_of(*spatial_recurrent.ACTIVATIONS),
    'spatial_neighbours': config_lib.one_of(*spatial_recurrent.NEIGHBOURS),
    'temporal_hidden': config_lib.number(1, integer=True),
    'temporal_proj': config_lib.number(1, integer=True),
    'temporal_out': config_lib.number(1, integer=True),
    'temporal_cell': config_lib.one_of(*CELLS),
    'fusion': config_lib.one_of(*FUSIONS),
    'streams': config_lib.one_of('both', *STREAMS),
    'freeze_streams': config_lib.boolean,
    'fusion_norm': config_lib.boolean,
    'product_offset': config_lib.number(),
    'head': config_lib.one_of(*HEADS),
    'svm_multiclass': config_lib.one_of(*SVM_MULTICLASS),
    'svm_l2': config_lib.number(0),
    'l1_weight': config_lib.number(0),
    'flow_scale': config_lib.number(0, lo_open=True),
    'dropout': config_lib.number(0, 1, hi_open=True),
    'dot_1x1': config_lib.boolean,  # resnet.formulation
    'fused_batchnorm': config_lib.boolean,
    'batchnorm_groups': config_lib.number(1, integer=True),
    'dtype': config_lib.one_of(*precision.DTYPE_NAMES),
    'unroll': config_lib.number(1, 64, integer=True),
}
_LOSS_FIELDS = ('head', 'svm_multiclass', 'svm_l2', 'l1_weight')


def from_config(config, num_classes: int, *, rngs: nnx.Rngs) -> RFSCNN:
  """``RFSCNN`` from ``config.model`` (fields left out take the arguments' defaults)."""
  fields = {k: v for k, v in config.items() if k != 'name'}
  config_lib.check_fields({f'model.{k}': v for k, v in fields.items()},
                          {f'model.{k}': v for k, v in SCHEMA.items()}, partial=True)
  for key in _LOSS_FIELDS:
    fields.pop(key, None)
  if 'dtype' in fields:
    fields['dtype'] = precision.resolve_dtype(fields['dtype'])
  if 'stage_sizes' in fields:
    fields['stage_sizes'] = tuple(fields['stage_sizes'] or ()) or None
  with resnet.formulation(**resnet.pop_formulation(fields)):
    return RFSCNN(num_classes, **fields, rngs=rngs)


def no_decay(config) -> str:
  """The SVM head's kernel gets no weight decay: ``svm_l2`` is its regulariser (an SVM is regularised
  once); a softmax head decays like every other kernel."""
  return HEAD_KERNEL if config.model.head == 'svm' else ''


inputs_lib.register('flow', flow_lib.INPUT)  # The temporal stream's input.
registry.register(registry.Family('rfscnn', SCHEMA, from_config, inputs=('frames', 'flow'),
                                  losses=rfscnn_losses, pretrained=convert.apply_pretrained,
                                  no_decay=no_decay))
