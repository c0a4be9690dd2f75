"""Residual Masking Network (Pham et al., ICPR 2020) and its reconstruction variant (Shen & Li, JIPS).

``RMN`` is a ResNet-34 (``backbone``, ferjax's ``resnet.ResNet``, so torchvision ImageNet weights load
into it with ``init.backbone_weights``) with a masking block after each of its four stages:

    x = stage_i(x);  x = x * (1 + mask_i(x))

Masking block ``i`` (``MaskingBlock``) is a small U-Net of depth 4/3/2/1 for stages 1-4, as in the public
code (``phamquiluan/ResidualMaskingNetwork``, re-implemented here): encoder BasicBlocks doubling the
channels (C -> 2C -> ... -> 2^depth C) with 2x2 max-pooling between them; decoder levels of transposed
convolution (2x2, stride 2) + BatchNorm + ReLU, concatenated with the matching encoder feature, then a
BasicBlock; a last BasicBlock back to C channels (its shortcut a 1x1 projection); the mask is a softmax over the channels at each pixel
(``mask_activation='softmax'``, the code's) or an element-wise sigmoid (the variant the code leaves
commented out). Head: global average pooling, dropout 0.4, linear 512 -> classes. With the defaults the
network has 137.8 M parameters, the public code's count (the paper says 142.9 M):
``python -m ferjax.models --config configs/rmn.py``.

Per frame: RMN is a static-image model. ``frames`` [B, T, S, S, 3] are folded into B*T images; logits are
[B, C] when T == 1 (images: the datasets' 1-frame sequences) and [B, T, C] per frame otherwise, which the
trainer scores per sequence by averaging the frames' class probabilities (``steps.sequence_probabilities``).

Sizes. At 224 px every pooled map of the U-Nets halves exactly (56 -> 28 -> 14 -> 7). At other sizes a
map of odd side loses a row to the max-pool (floor, as PyTorch); the upsampled map is then zero-padded at
the bottom/right to the encoder feature's size before the concatenation (the usual U-Net fix), so any
input from 32 px works.

Reconstruction variant (Shen & Li), on when ``reconstruction=True``: a decoder (``ReconstructionDecoder``)
upsamples the masked last-stage features back to the input: ``reconstruction_levels`` (default 5: 32x, the
trunk's stride) transposed convolutions (2x2, stride 2) + BatchNorm + ReLU halving the channels, a 3x3
convolution to 3 channels, and a bilinear resize to the input size when 2^levels x the feature map is not
it (the paper does not give the decoder's depth). The model returns ``reconstruction`` and
``reconstruction_target``: the model's own input frames, i.e. the normalised image the network sees. With
the RMN recipe (``dataset.normalization='unit'``) that is the [0, 1] image p of the paper; with ImageNet
normalisation it is the standardised image. ``losses.l1_reconstruction`` is their mean absolute error
(L_rec = ||p - p'||_1 averaged over pixels and channels).

Mask term (``mask_loss='binary'``). The seed describes a "margin/binary" term on the mask weights without
a formula that pins it down. This project's reading: a penalty that is 0 when every mask weight is
decisive and largest when the mask is flat, normalised to [0, 1):

* softmax masks: the Gini impurity of each pixel's channel distribution, ``1 - sum_c m_c^2``
  (= sum_c m_c (1 - m_c)): 0 iff each pixel selects one channel;
* sigmoid masks: ``4 m (1 - m)`` averaged over channels: 0 iff every weight is 0 or 1.

Averaged over pixels and the four masks, per image (``mask_binary`` [N]); ``losses.output_mean`` adds it
with weight ``mask_loss_weight``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ferjax import config as config_lib
from ferjax import losses as losses_lib
from ferjax import registry
from ferjax.models import convert
from ferjax.models import precision
from ferjax.models import resnet

MASK_ACTIVATIONS = ('softmax', 'sigmoid')
MASK_LOSSES = ('none', 'binary')
# Depth of the U-Net after stages 1..4 (the public code's Masking4/3/2/1).
MASK_DEPTHS = (4, 3, 2, 1)
# 'blocks': the stem and every BasicBlock (trunk and masks) are rematerialised.
REMAT_MODES = ('none', 'blocks')


def _bn(c, *, dtype, rngs):
  return resnet.BatchNorm(c, momentum=resnet.BN_MOMENTUM, epsilon=resnet.BN_EPSILON, dtype=dtype,
                          rngs=rngs)


class UpPool(nnx.Module):
  """Transposed convolution (2x2, stride 2, with bias as PyTorch's default) + BatchNorm + ReLU."""

  def __init__(self, cin: int, cout: int, *, dtype=None, rngs: nnx.Rngs):
    self.conv = nnx.ConvTranspose(cin, cout, (2, 2), (2, 2), padding='VALID',
                                  kernel_init=resnet.conv_init, dtype=dtype, rngs=rngs)
    self.bn = _bn(cout, dtype=dtype, rngs=rngs)

  def __call__(self, x, train: bool):
    return jax.nn.relu(self.bn(self.conv(x), use_running_average=not train))


def _pad_to(x: jax.Array, like: jax.Array) -> jax.Array:
  """Zero-pads ``x`` at the bottom/right to ``like``'s spatial size (odd maps lost a row to pooling)."""
  dh, dw = like.shape[1] - x.shape[1], like.shape[2] - x.shape[2]
  return x if dh == dw == 0 else jnp.pad(x, ((0, 0), (0, dh), (0, dw), (0, 0)))


class MaskingBlock(nnx.Module):
  """The U-Net that computes a stage's mask; ``__call__`` maps [N, H, W, C] to a mask of that shape.

  Submodules: ``encoder`` (``depth`` BasicBlocks, C * 2^i -> C * 2^(i+1)), ``up`` and ``decoder``
  (``depth - 1`` UpPools and BasicBlocks, deepest first), ``out`` (a BasicBlock 2C -> C, as the public
  code's last block; its ReLU'd output is what the softmax/sigmoid turns into the mask).
  """

  def __init__(self, channels: int, depth: int, *, activation: str = 'softmax', dtype=None,
               remat: bool = False, rngs: nnx.Rngs):
    if depth < 1:
      raise ValueError(f'MaskingBlock depth must be >= 1, got {depth}.')
    if activation not in MASK_ACTIVATIONS:
      raise ValueError(f'Unknown mask activation {activation!r}; expected one of {MASK_ACTIVATIONS}.')
    self.activation = activation
    self.remat = remat
    f = [channels * 2**i for i in range(depth + 1)]
    # As the public code: every block's last BatchNorm scale starts at 0 (the block starts as its
    # projection shortcut).
    block = lambda cin, cout: resnet.BasicBlock(cin, cout, zero_init_residual=True, dtype=dtype,
                                                rngs=rngs)
    self.encoder = nnx.List([block(f[i], f[i + 1]) for i in range(depth)])
    self.up = nnx.List([UpPool(f[i + 1], f[i], dtype=dtype, rngs=rngs)
                        for i in reversed(range(1, depth))])
    self.decoder = nnx.List([block(f[i + 1], f[i]) for i in reversed(range(1, depth))])
    self.out = block(f[1], channels)

  def logits(self, x: jax.Array, train: bool = False) -> jax.Array:
    skips = []
    for i, block in enumerate(self.encoder):
      if i:
        x = nnx.max_pool(x, (2, 2), (2, 2))
      x = resnet.call_block(block, x, train, self.remat)
      skips.append(x)
    for up, block, skip in zip(self.up, self.decoder, reversed(skips[:-1])):
      x = resnet.call_block(block, jnp.concatenate([_pad_to(up(x, train), skip), skip], axis=-1),
                            train, self.remat)
    return resnet.call_block(self.out, x, train, self.remat)

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    z = self.logits(x, train).astype(jnp.float32)
    return jax.nn.softmax(z, axis=-1) if self.activation == 'softmax' else jax.nn.sigmoid(z)


def binary_penalty(mask: jax.Array, activation: str) -> jax.Array:
  """Per-image mask penalty in [0, 1) (see the module docstring): [N, H, W, C] -> [N]."""
  if activation == 'softmax':
    per_pixel = 1.0 - jnp.sum(jnp.square(mask), axis=-1)
  else:
    per_pixel = jnp.mean(4.0 * mask * (1.0 - mask), axis=-1)
  return jnp.mean(per_pixel, axis=(1, 2))


class ReconstructionDecoder(nnx.Module):
  """Masked last-stage features [N, h, w, C] -> an image [N, H, W, 3] (Shen & Li's p')."""

  def __init__(self, channels: int, *, levels: int = 5, dtype=None, rngs: nnx.Rngs):
    ups, c = [], channels
    for _ in range(levels):
      ups.append(UpPool(c, max(c // 2, 8), dtype=dtype, rngs=rngs))
      c = max(c // 2, 8)
    self.up = nnx.List(ups)
    self.out = nnx.Conv(c, 3, (3, 3), padding=((1, 1), (1, 1)), dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, size: tuple[int, int], train: bool = False) -> jax.Array:
    for up in self.up:
      x = up(x, train)
    x = self.out(x).astype(jnp.float32)
    if x.shape[1:3] != tuple(size):
      x = jax.image.resize(x, (x.shape[0], *size, x.shape[-1]), 'bilinear')
    return x


class RMN(nnx.Module):
  """Residual Masking Network on frames [B, T, S, S, 3]; see the module docstring.

  Top-level components (the groups of ``count_params``): ``backbone`` (ResNet-34 trunk; its ``fc`` is
  absent), ``mask1``..``mask4`` (``MaskingBlock``), ``head`` (Linear) and, in the reconstruction variant,
  ``reconstruction`` (``ReconstructionDecoder``).

  Args:
    num_classes: number of expression classes.
    backbone: 'resnet18' | 'resnet34' (the paper's) | 'resnet50'.
    width: ResNet base width (64 = standard; the masks scale with it).
    stage_sizes: optional ResNet stage depths override (tests use (1, 1, 1, 1)).
    mask_depths: U-Net depth after each stage (4, 3, 2, 1 in the paper).
    mask_activation: 'softmax' over channels (the paper) | 'sigmoid'.
    dropout: dropout rate before the classifier (0.4 in the public code).
    reconstruction: add the reconstruction decoder (Shen & Li) and return its outputs.
    reconstruction_levels: the decoder's transposed-convolution levels (each doubles the side).
    mask_loss: 'none' | 'binary': return ``mask_binary`` [N] for the mask term.
    dtype: compute dtype (``model.dtype``: 'auto' = bfloat16 on TPU/GPU, float32 on CPU); parameters are
      float32, logits, masks and reconstructions float32.
    remat: 'none' | 'blocks': rematerialise the trunk's stem and every BasicBlock of the trunk and of the
      masking U-Nets (``nnx.remat``, as Res-RBG's ``model.remat``): the backward pass keeps the blocks'
      inputs and recomputes the rest; same values, less activation memory.
  """

  def __init__(self, num_classes: int, *, backbone: str = 'resnet34', width: int = 64,
               stage_sizes=None, mask_depths=MASK_DEPTHS, mask_activation: str = 'softmax',
               dropout: float = 0.4, reconstruction: bool = False, reconstruction_levels: int = 5,
               mask_loss: str = 'none', dtype=jnp.float32, remat: str = 'none', rngs: nnx.Rngs):
    if not 0.0 <= dropout < 1.0:
      raise ValueError(f'dropout must be in [0, 1), got {dropout}.')
    if len(mask_depths) != 4 or any(int(d) < 1 for d in mask_depths):
      raise ValueError(f'mask_depths must be 4 positive ints, got {tuple(mask_depths)}.')
    if mask_loss not in MASK_LOSSES:
      raise ValueError(f'Unknown mask_loss {mask_loss!r}; expected one of {MASK_LOSSES}.')
    if remat not in REMAT_MODES:
      raise ValueError(f'Unknown remat {remat!r}; expected one of {REMAT_MODES}.')
    self.remat = remat == 'blocks'
    self.dtype = dtype
    self.mask_activation = mask_activation
    self.mask_loss = mask_loss
    self.backbone = resnet.ResNet(backbone, width=width, stage_sizes=stage_sizes, dtype=dtype,
                                  remat=self.remat, rngs=rngs)
    expansion = resnet.RESNET_SPECS[backbone].expansion
    for i, depth in enumerate(mask_depths):
      setattr(self, f'mask{i + 1}', MaskingBlock(width * 2**i * expansion, int(depth),
                                                 activation=mask_activation, dtype=dtype,
                                                 remat=self.remat, rngs=rngs))
    self.dropout = nnx.Dropout(dropout)
    self.head = nnx.Linear(self.backbone.num_features, num_classes, dtype=dtype, rngs=rngs)
    self.reconstruction = (ReconstructionDecoder(self.backbone.num_features,
                                                 levels=int(reconstruction_levels), dtype=dtype, rngs=rngs)
                           if reconstruction else None)

  @property
  def masks(self) -> list[MaskingBlock]:
    return [self.mask1, self.mask2, self.mask3, self.mask4]

  def stages(self, images: jax.Array, train: bool = False) -> list[tuple[jax.Array, jax.Array]]:
    """(stage output, its mask) for each stage of NHWC ``images``; the next stage reads
    ``output * (1 + mask)``."""
    backbone = self.backbone
    x = images.astype(self.dtype) if self.dtype is not None else images
    x = backbone.stem(x, train)
    out = []
    for stage, masking in zip(backbone.layers, self.masks):
      for block in stage:
        x = resnet.call_block(block, x, train, self.remat)
      mask = masking(x, train)
      out.append((x, mask))
      x = x * (1 + mask.astype(x.dtype))
    return out

  def __call__(self, batch: dict[str, jax.Array], *, train: bool = False,
               rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
    """The model contract: ``logits`` [B, C] (T == 1) or [B, T, C] (per frame), plus
    ``reconstruction``/``reconstruction_target`` [B*T, S, S, 3] and ``mask_binary`` [B*T] when on."""
    frames = batch['frames']
    if frames.ndim != 5 or frames.shape[-1] != 3:
      raise ValueError(f'RMN expects frames [B, T, H, W, 3], got shape {frames.shape}.')
    if train and self.dropout.rate > 0 and rngs is None:
      raise ValueError('RMN(train=True) with dropout > 0 needs `rngs` (e.g. '
                       'nnx.Rngs(dropout=key)) at call time; modules store no RNG state.')
    b, t = frames.shape[:2]
    images = frames.reshape(b * t, *frames.shape[2:])
    stages = self.stages(images, train)
    last, mask = stages[-1]
    x = last * (1 + mask.astype(last.dtype))
    pooled = jnp.mean(x, axis=(1, 2))
    logits = self.head(self.dropout(pooled, deterministic=not train, rngs=rngs)).astype(jnp.float32)
    outputs = {'logits': logits.reshape(b, -1) if t == 1 else logits.reshape(b, t, -1)}
    if self.reconstruction is not None:
      outputs['reconstruction'] = self.reconstruction(x, images.shape[1:3], train)
      outputs['reconstruction_target'] = images.astype(jnp.float32)
    if self.mask_loss == 'binary':
      outputs['mask_binary'] = jnp.mean(jnp.stack(
          [binary_penalty(m, self.mask_activation) for _, m in stages]), axis=0)
    return outputs


# config.model of 'rmn': the checks; the defaults are in configs/rmn.py.
SCHEMA = {
    'backbone': config_lib.one_of(*resnet.RESNET_SPECS),
    'width': config_lib.number(1, integer=True),
    'stage_sizes': config_lib.int_tuple,
    'mask_depths': config_lib.int_tuple,
    'mask_activation': config_lib.one_of(*MASK_ACTIVATIONS),
    'dropout': config_lib.number(0, 1, hi_open=True),
    'reconstruction_weight': config_lib.number(0),
    'reconstruction_levels': config_lib.number(1, 8, integer=True),
    'mask_loss': config_lib.one_of(*MASK_LOSSES),
    'mask_loss_weight': config_lib.number(0),
    'dot_1x1': config_lib.boolean,  # resnet.formulation
    'fused_batchnorm': config_lib.boolean,
    'batchnorm_groups': config_lib.number(1, integer=True),
    'dtype': config_lib.one_of(*precision.DTYPE_NAMES),
    'remat': config_lib.one_of(*REMAT_MODES),
}


def from_config(config, num_classes: int, *, rngs: nnx.Rngs) -> RMN:
  """``RMN`` from ``config.model``; fields the config leaves out take ``RMN``'s defaults. The
  reconstruction decoder exists when ``reconstruction_weight > 0``."""
  fields = resnet.family_fields(config, SCHEMA)
  if 'mask_depths' in fields:
    fields['mask_depths'] = tuple(fields['mask_depths'] or ()) or MASK_DEPTHS
  fields['reconstruction'] = fields.pop('reconstruction_weight', 0) > 0
  fields.pop('mask_loss_weight', None)
  with resnet.formulation(**resnet.pop_formulation(fields)):
    return RMN(num_classes, **fields, rngs=rngs)


def make_losses(config) -> losses_lib.Loss:
  """Cross-entropy (with ``train.label_smoothing``), plus ``l1_reconstruction`` weighted by
  ``model.reconstruction_weight`` and ``mask_binary`` by ``model.mask_loss_weight`` when they are on."""
  model = config.model
  terms = [('cross_entropy', 1.0, losses_lib.cross_entropy(config.train.label_smoothing))]
  if model.get('reconstruction_weight', 0) > 0:
    terms.append(('l1_reconstruction', float(model.reconstruction_weight),
                  losses_lib.l1_reconstruction()))
  if model.get('mask_loss', 'none') == 'binary':
    terms.append(('mask_binary', float(model.get('mask_loss_weight', 0.0)),
                  losses_lib.output_mean('mask_binary')))
  return losses_lib.Loss(tuple(terms))


registry.register(registry.Family('rmn', SCHEMA, from_config, inputs=('frames',), losses=make_losses,
                                    pretrained=convert.apply_pretrained))
