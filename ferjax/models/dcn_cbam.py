"""ResNet + CBAM + modulated deformable convolution (family ``dcn_cbam``).

The survey seed lists a deformable-convolution + CBAM network for static facial expressions (FER2013
73.22 %) whose paper is not public; this family is the nearest fully specified design (docs/models/
dcn_cbam.md): a torchvision-layout ResNet (``backbone``: ResNet-18/34/50) in which

* every residual block carries CBAM (``ferjax.models.cbam``) on its residual branch, after the last
  BatchNorm and before the addition (Woo et al., ECCV 2018, Sec. 3.3, the authors' ResNet);
* the 3x3 convolutions of the stages in ``deformable_stages`` (1-based; default the last two, (3, 4)) are
  DCNv2 layers (``ferjax.models.deformable.DeformConv``: same kernel shape, stride and padding, plus a
  zero-initialised offset/mask convolution), as DCNv2 puts them in the later stages (Zhu et al., CVPR
  2019, Sec. 4: conv3-conv5 of ResNet-50). A BasicBlock (ResNet-18/34) has two 3x3 convolutions, both
  deformable; a Bottleneck one (the middle, strided one).

Head: global average pooling, dropout (``dropout``), linear to the classes. Per frame like RMN: frames
[B, T, S, S, 3] are folded into B*T images; logits are [B, C] for T == 1 and [B, T, C] otherwise (the
trainer averages the frames' probabilities per sequence).

Parameter names keep torchvision's layout (``backbone/conv1``, ``backbone/layer3/0/conv2/kernel``, ...),
and a deformable layer's ``kernel`` has a plain convolution's shape, so ``init.backbone_weights`` loads a
torchvision ResNet into the trunk (the CBAM and offset layers keep their initialisation).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ferjax import config as config_lib
from ferjax import registry
from ferjax.data import augment
from ferjax.models import cbam as cbam_lib
from ferjax.models import convert
from ferjax.models import deformable
from ferjax.models import precision
from ferjax.models import resnet

REMAT_MODES = ('none', 'blocks')


def _deform(cin: int, cout: int, stride: int, offset_groups: int, *, dtype, rngs) -> deformable.DeformConv:
  return deformable.DeformConv(cin, cout, 3, stride=stride, padding=1, offset_groups=offset_groups,
                               kernel_init=resnet.conv_init, dtype=dtype, rngs=rngs)


class CbamBasicBlock(resnet.BasicBlock):
  """``resnet.BasicBlock`` with CBAM before the addition and, when ``deformable``, DCNv2 3x3 convs."""

  def __init__(self, cin, planes, stride=1, *, deformable_convs: bool = False, offset_groups: int = 1,
               reduction: int = cbam_lib.REDUCTION, dtype=None, rngs: nnx.Rngs):
    super().__init__(cin, planes, stride, dtype=dtype, rngs=rngs)
    if deformable_convs:
      self.conv1 = _deform(cin, planes, stride, offset_groups, dtype=dtype, rngs=rngs)
      self.conv2 = _deform(planes, planes, 1, offset_groups, dtype=dtype, rngs=rngs)
    # The parent left `attn` None (a static attribute); nnx.data makes the module a child.
    self.attn = nnx.data(cbam_lib.CBAM(planes * self.expansion, reduction, dtype=dtype, rngs=rngs))

  def __call__(self, x, train: bool = False):
    ura = not train
    y = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=ura))
    y = self.attn(self.bn2(self.conv2(y), use_running_average=ura), train)
    shortcut = x if self.downsample is None else self.downsample(x, train)
    return jax.nn.relu(y + shortcut)


class CbamBottleneck(resnet.Bottleneck):
  """``resnet.Bottleneck`` with CBAM before the addition and, when ``deformable``, a DCNv2 middle conv."""

  def __init__(self, cin, planes, stride=1, *, deformable_convs: bool = False, offset_groups: int = 1,
               reduction: int = cbam_lib.REDUCTION, dtype=None, rngs: nnx.Rngs):
    super().__init__(cin, planes, stride, dtype=dtype, rngs=rngs)
    if deformable_convs:
      self.conv2 = _deform(planes, planes, stride, offset_groups, dtype=dtype, rngs=rngs)
    # The parent left `attn` None (a static attribute); nnx.data makes the module a child.
    self.attn = nnx.data(cbam_lib.CBAM(planes * self.expansion, reduction, dtype=dtype, rngs=rngs))

  def __call__(self, x, train: bool = False):
    ura = not train
    y = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=ura))
    y = jax.nn.relu(self.bn2(self.conv2(y), use_running_average=ura))
    y = self.attn(self.bn3(self.conv3(y), use_running_average=ura), train)
    shortcut = x if self.downsample is None else self.downsample(x, train)
    return jax.nn.relu(y + shortcut)


class CbamResNet(resnet.ResNet):
  """``resnet.ResNet`` (its stem, ``features`` and pooling) built from the CBAM blocks above.

  Args:
    arch, width, stage_sizes, dtype, remat: as ``resnet.ResNet``.
    deformable_stages: 1-based stages whose 3x3 convolutions are deformable.
    offset_groups: offset groups of every deformable layer.
    reduction: CBAM's channel-MLP reduction r.
  """

  def __init__(self, arch: str = 'resnet18', *, width: int = 64, stage_sizes=None,
               deformable_stages=(3, 4), offset_groups: int = 1, reduction: int = cbam_lib.REDUCTION,
               dtype=None, remat: bool = False, rngs: nnx.Rngs):  # pylint: disable=super-init-not-called
    if arch not in resnet.RESNET_SPECS:
      raise ValueError(f'Unknown ResNet {arch!r}; expected one of {sorted(resnet.RESNET_SPECS)}.')
    spec = resnet.RESNET_SPECS[arch]
    stage_sizes = tuple(stage_sizes) if stage_sizes else spec.stage_sizes
    if len(stage_sizes) != 4 or any(int(s) < 1 for s in stage_sizes):
      raise ValueError(f'stage_sizes must be 4 positive ints, got {stage_sizes}.')
    if any(int(s) not in (1, 2, 3, 4) for s in deformable_stages):
      raise ValueError(f'deformable_stages must name stages 1-4, got {tuple(deformable_stages)}.')
    if width < 1 or width % offset_groups:
      raise ValueError(f'width must be >= 1 and divisible by offset_groups={offset_groups}, got {width}.')
    block_cls = CbamBottleneck if spec.block == 'bottleneck' else CbamBasicBlock
    self.arch, self.stage_sizes, self.dtype, self.remat = arch, stage_sizes, dtype, remat
    self.deformable_stages = tuple(sorted(int(s) for s in deformable_stages))
    self.conv1 = nnx.Conv(3, width, (7, 7), (2, 2), padding=((3, 3), (3, 3)), use_bias=False,
                          kernel_init=resnet.conv_init, dtype=dtype, rngs=rngs)
    self.bn1 = resnet.BatchNorm(width, momentum=resnet.BN_MOMENTUM, epsilon=resnet.BN_EPSILON,
                                dtype=dtype, rngs=rngs)
    cin = width
    for i, n_blocks in enumerate(stage_sizes):
      planes = width * 2**i
      blocks = []
      for j in range(n_blocks):
        blocks.append(block_cls(cin, planes, 2 if (i > 0 and j == 0) else 1,
                                deformable_convs=i + 1 in self.deformable_stages,
                                offset_groups=offset_groups, reduction=reduction, dtype=dtype,
                                rngs=rngs))
        cin = planes * block_cls.expansion
      setattr(self, f'layer{i + 1}', nnx.List(blocks))
    self.num_features = cin
    self.fc = None


class DcnCbam(nnx.Module):
  """The ``dcn_cbam`` model on frames [B, T, S, S, 3]; components ``backbone`` (``CbamResNet``) and
  ``head`` (Linear). See the module docstring; arguments are ``config.model``'s fields."""

  def __init__(self, num_classes: int, *, backbone: str = 'resnet18', width: int = 64,
               stage_sizes=None, deformable_stages=(3, 4), offset_groups: int = 1,
               cbam_reduction: int = cbam_lib.REDUCTION, dropout: float = 0.0, dtype=jnp.float32,
               remat: str = 'none', rngs: nnx.Rngs):
    if not 0.0 <= dropout < 1.0:
      raise ValueError(f'dropout must be in [0, 1), got {dropout}.')
    if remat not in REMAT_MODES:
      raise ValueError(f'Unknown remat {remat!r}; expected one of {REMAT_MODES}.')
    self.backbone = CbamResNet(backbone, width=width, stage_sizes=stage_sizes,
                               deformable_stages=deformable_stages, offset_groups=offset_groups,
                               reduction=cbam_reduction, dtype=dtype, remat=remat == 'blocks',
                               rngs=rngs)
    self.dropout = nnx.Dropout(dropout)
    self.head = nnx.Linear(self.backbone.num_features, num_classes, dtype=dtype, rngs=rngs)

  def __call__(self, batch: dict[str, jax.Array], *, train: bool = False,
               rngs: nnx.Rngs | None = None) -> dict[str, jax.Array]:
    """The model contract: ``logits`` [B, C] (T == 1) or [B, T, C] (per frame)."""
    frames = batch['frames']
    if frames.ndim != 5 or frames.shape[-1] != 3:
      raise ValueError(f'dcn_cbam expects frames [B, T, H, W, 3], got shape {frames.shape}.')
    if train and self.dropout.rate > 0 and rngs is None:
      raise ValueError('dcn_cbam(train=True) with dropout > 0 needs `rngs` (e.g. '
                       'nnx.Rngs(dropout=key)) at call time; modules store no RNG state.')
    b, t = frames.shape[:2]
    pooled = self.backbone(frames.reshape(b * t, *frames.shape[2:]), train)
    logits = self.head(self.dropout(pooled, deterministic=not train, rngs=rngs)).astype(jnp.float32)
    return {'logits': logits.reshape(b, -1) if t == 1 else logits.reshape(b, t, -1)}


def _stages(value) -> str | None:
  ok = (isinstance(value, (tuple, list)) and len(set(value)) == len(value)
        and all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 4 for v in value))
  return None if ok else 'a tuple of distinct stage numbers from 1 to 4, e.g. (3, 4); () = none'


# config.model of 'dcn_cbam': the checks; the defaults are in configs/dcn_cbam.py.
SCHEMA = {
    'backbone': config_lib.one_of(*resnet.RESNET_SPECS),
    'width': config_lib.number(1, integer=True),
    'stage_sizes': config_lib.int_tuple,
    'deformable_stages': _stages,
    'offset_groups': config_lib.number(1, integer=True),
    'cbam_reduction': config_lib.number(1, integer=True),
    'dropout': config_lib.number(0, 1, hi_open=True),
    'dot_1x1': config_lib.boolean,  # resnet.formulation
    'fused_batchnorm': config_lib.boolean,
    'dtype': config_lib.one_of(*precision.DTYPE_NAMES),
    'remat': config_lib.one_of(*REMAT_MODES),
}


def from_config(config, num_classes: int, *, rngs: nnx.Rngs) -> DcnCbam:
  """``DcnCbam`` from ``config.model``; fields the config leaves out take ``DcnCbam``'s defaults."""
  fields = resnet.family_fields(config, SCHEMA)
  if 'deformable_stages' in fields:
    fields['deformable_stages'] = tuple(fields['deformable_stages'] or ())
  with resnet.formulation(**resnet.pop_formulation(fields)):
    return DcnCbam(num_classes, **fields, rngs=rngs)


# Random erasing in the RAF-DB recipe is the augment chain's random masking: its augment.mask_* keys.
registry.register(registry.Family('dcn_cbam', SCHEMA, from_config, inputs=('frames',),
                                    pretrained=convert.apply_pretrained,
                                    config_rules=augment.MASK_RULES))
