"""RFSCNN (Zhou, JIPS): two streams (faces, optical flow), spatial and temporal recursive layers, fusion, SVM.

Usage:
  python -m ferjax.train --config configs/rfscnn.py:synthetic --workdir /tmp/rf    # the CPU quickstart
  python -m ferjax.crossval --config configs/rfscnn.py:enterface05 --workdir runs/rf_ent  # every LOSO fold
  python -m ferjax.train --config configs/rfscnn.py:rml,fold=3,fusion=sum,head=softmax --workdir runs/rf
  python -m ferjax.train --config configs/rfscnn.py:afew --workdir runs/rf_afew            # train -> validation

The argument is `<preset>[,key=value...]`; presets are `enterface05` (default), `rml`, `afew`, `synthetic`.
Keys: `fusion=concat|sum|product`, `head=svm|softmax`, `fold=<k>` (the left-out subject of the LOSO
datasets), `seed=<s>`, `stage=2` (the paper's second stage: the fused SVM on frozen streams; add
`--config.init.checkpoint=<stage-1 workdir>`).

The paper's settings: L = 16-frame clips (the central 16 frames; shorter videos repeat their edge frames),
15 optical-flow images (dx, dy, magnitude), product fusion, an SVM. Where it is silent (this project's
reading, all overridable, see docs/models/rfscnn.md): ResNet-18 per stream (its depth description is unusable),
224 px faces (the paper's 227 px comes from AlexNet's stem; ResNets are trained at 224, which gives a 7x7
grid; 227 px gives 8x8: set `model.grid=8`), the spatial/temporal layers' sizes, AdamW with warm-up and
cosine decay, one joint training of both streams and the fused classifier (stage 1).
"""

import importlib.util
import os

import ml_collections

PRESETS = ('enterface05', 'rml', 'afew', 'synthetic')


def _common():
  """configs/common.py (config files are loaded by path, not imported as a package)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'common.py')
  spec = importlib.util.spec_from_file_location('ferjax_configs_common', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


common = _common()


def paper_config() -> ml_collections.ConfigDict:
  """The paper's model on eNTERFACE'05, left-out subject 0."""
  c = common.base()
  c.dataset.name = 'enterface05'
  c.dataset.fold = 0  # LOSO datasets: the left-out subject's index; AFEW: 0 (train -> validation).
  c.dataset.num_frames = 16  # L (the flow stream sees L - 1 flow images).
  # 'clip': the central L frames, edge frames repeated for short videos (the paper's rule).
  c.dataset.sampling = 'clip'
  # Optical flow (the flow input's key): OpenCV 'dis' (ultrafast preset) or 'farneback', of the source
  # frames then warped like them; 'dis_output' / 'farneback_output': of the augmented S x S frames (the
  # paper's order, ~1.6x faster).
  c.dataset.flow = 'dis'

  c.input.batch_size = 16  # Global, over all hosts and devices.
  c.input.eval_batch_size = 16

  c.augment.crop_scale = (0.7, 1.0)  # Geometric augmentation is applied to the flow too (vector-correct).
  # Photometric jitter (brightness, contrast) touches frames only, never the flow; no random masking.

  c.model = ml_collections.ConfigDict()
  c.model.name = 'rfscnn'
  # L: follows dataset.num_frames (overriding --config.dataset.num_frames changes it too); the temporal
  # layer's sparse projection is L x L_d.
  c.model.num_frames = c.dataset.get_ref('num_frames')
  c.model.backbone = 'resnet18'  # Per stream; the paper's depth description is unusable.
  c.model.width = 64
  c.model.stage_sizes = ()  # () = the backbone's standard depths.
  c.model.grid = 7  # Side of the ResNet's last feature map: 7 at 224 px, 8 at 227 px.
  # Spatial recursive layer: node state H, nodes after the sparse projection K_d (of K = 49), size D of
  # each projected node after P^r (m_t has K_d * D = 256 features), sigma.
  c.model.spatial_hidden = 128
  c.model.spatial_proj = 16
  c.model.spatial_out = 16
  c.model.spatial_activation = 'tanh'
  # N^r_ij: 'orthogonal' = the vertical and horizontal predecessor of the sweep (4-connected);
  # 'diagonal' = also the diagonal one (STRNN's predecessor set). The RFSCNN paper does not list it.
  c.model.spatial_neighbours = 'orthogonal'
  # Temporal recursive layer: RNN state per direction, steps after the sparse time projection L_d (of L),
  # size O after P (the stream's output has L_d * O = 256 features), cell ('rnn' = the paper's).
  c.model.temporal_hidden = 128
  c.model.temporal_proj = 8
  c.model.temporal_out = 32
  c.model.temporal_cell = 'rnn'
  c.model.fusion = 'product'  # The paper's best; 'concat' | 'sum' | 'product'.
  c.model.streams = 'both'  # 'rgb' or 'flow' trains one stream alone (no fusion).
  # BatchNorm on each stream's output before the fusion (the paper is silent; the product of two
  # standardised vectors starts at unit scale, and an SVM wants standardised inputs).
  c.model.fusion_norm = True
  # Initial offset c of that BatchNorm before a product fusion: the fused features start as
  # (c + a) * (c + b). c = 1 is sum fusion plus the product term (1 + a + b + ab), which trains from
  # scratch; c = 0 is the paper's plain product a * b, which stalls at chance from scratch
  # (docs/models/rfscnn-readings.md). Concat and sum ignore it.
  c.model.product_offset = 1.0
  c.model.freeze_streams = False  # Stage 2: streams in inference mode, no gradient (see `stage=2`).
  c.model.head = 'svm'  # The paper's: linear, multiclass hinge + svm_l2 * ||W||^2; or 'softmax'.
  # 'crammer_singer' (one joint multiclass hinge) or 'one_vs_rest' (a binary SVM per class).
  c.model.svm_multiclass = 'crammer_singer'
  c.model.svm_l2 = 1e-4  # The SVM's only regulariser: its kernel gets no train.weight_decay.
  c.model.l1_weight = 1e-5  # L1 on every sparse projection (G^r, and the temporal L -> L_d matrices).
  # The flow (pixels of the S x S frame) is multiplied by this before its ResNet (whose first BatchNorm
  # normalises the scale anyway; it matters for ImageNet weights in the flow stream).
  c.model.flow_scale = 0.2
  c.model.dropout = 0.5
  # Compute dtype of the CNNs: 'float32', 'bfloat16' or 'auto' (bfloat16 on TPU/GPU, float32 on
  # CPU); the recurrences, the fusion and the head stay float32.
  c.model.dtype = 'float32'
  c.model.unroll = 1  # lax.scan unroll over the spatial layer's h + w - 1 diagonals.
  # Formulations of the ResNet layers (same function, different XLA programs; ferjax/models/resnet.py).
  c.model.dot_1x1 = True
  c.model.fused_batchnorm = True
  # BatchNorm statistics over the whole global batch (1), or per slice of batch / G (G = devices: per GPU).
  c.model.batchnorm_groups = 1

  # torchvision-layout ResNet weights per stream (.safetensors/.npz; '' = random init). ImageNet weights
  # fit the flow stream too: its first convolution also takes 3 channels (dx, dy, magnitude).
  c.init.backbone_rgb_weights = ''
  c.init.backbone_rgb_prefix = ''
  c.init.backbone_flow_weights = ''
  c.init.backbone_flow_prefix = ''
  c.init.checkpoint = ''  # A previous run's workdir (stage 1): its final params initialise the model.

  c.train.num_epochs = 30.0
  c.train.warmup_epochs = 2.0
  # Kernels and RNN weights decay (train.weight_decay_rules); not biases, norms, the L1-penalised
  # projections or the SVM kernel (model.svm_l2 is its only regulariser; rfscnn.no_decay).
  c.train.label_smoothing = 0.0  # softmax head only.
  # train.trainable: `stage=2` trains only the head.
  return c


def synthetic_config() -> ml_collections.ConfigDict:
  """The quickstart on the built-in procedural dataset: both streams on a 2-core CPU in minutes.

  The full architecture at toy sizes: ResNet-18 at width 16 with one block per stage per stream (a 2x2
  feature grid at 48 px), 8 frames (7 flow images), small recursive layers, the paper's product fusion
  and SVM head; folds 1-9 for training, tested on fold 0.
  """
  c = paper_config()
  c.dataset.name = 'synthetic_expressions'
  c.dataset.fold = 0
  c.dataset.num_frames = 8
  c.dataset.image_size = 48
  # The synthetic sequences run onset -> apex with the apex last: the central clip of a long one stops
  # before the apex, so the quickstart samples TSN segments over the whole sequence.
  c.dataset.sampling = 'segments'
  c.input.batch_size = 16
  c.input.eval_batch_size = 32
  c.input.worker_count = 1
  c.augment.crop_scale = (0.8, 1.0)
  c.augment.rotation = 5.0
  c.model.width = 16
  c.model.stage_sizes = (1, 1, 1, 1)
  c.model.grid = 2
  c.model.spatial_hidden = 32
  c.model.spatial_proj = 4
  c.model.spatial_out = 16
  c.model.temporal_hidden = 64
  c.model.temporal_proj = 4
  c.model.temporal_out = 16
  c.model.flow_scale = 1.0  # 48 px frames: flows of a few pixels.
  # The paper's product fusion + SVM head (inherited). Measured (docs/models/rfscnn.md, 15 epochs): 94.29 /
  # 97.14 / 97.14 % test WAR for seeds 0-2 (`:synthetic,fusion=product,head=svm,seed=s`; they stayed near
  # chance, 10-24 %, with product_offset=0); `fusion=concat,head=softmax` reached 98.57 % (seed 0).
  c.model.dropout = 0.1
  c.train.num_epochs = 15.0
  c.train.learning_rate = 1e-3
  c.train.warmup_epochs = 1.0
  c.train.log_every_steps = 50
  c.train.eval_every_steps = 200
  c.train.checkpoint_every_steps = 200
  return c


def _fusion(c: ml_collections.ConfigDict, value: str) -> None:
  c.model.fusion = value  # Validated with the rest of the config.


def _head(c: ml_collections.ConfigDict, value: str) -> None:
  c.model.head = value


def _stage(c: ml_collections.ConfigDict, value: str) -> None:
  if value not in ('1', '2'):
    raise ValueError(f'config argument stage={value!r}: expected 1 or 2')
  if value == '2':
    set_stage_2(c)


KEYS = {'fusion': _fusion, 'head': _head, **common.KEYS, 'stage': _stage}
ARG_KEYS = tuple(KEYS)


def _dataset(name: str):
  def make() -> ml_collections.ConfigDict:
    c = paper_config()
    c.dataset.name = name
    return c
  return make


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`<preset>[,fusion=f][,head=h][,fold=k][,seed=s][,stage=1|2]`, e.g. `rml,fold=3,fusion=sum`."""
  presets = {name: _dataset(name) for name in PRESETS if name != 'synthetic'}
  return common.parse(arg, presets={**presets, 'synthetic': synthetic_config}, default='enterface05',
                      keys=KEYS)


def set_stage_2(c: ml_collections.ConfigDict) -> None:
  """The paper's second stage: the fused classifier on frozen streams (init.checkpoint = stage 1)."""
  c.model.freeze_streams = True
  c.train.trainable = r'^head/'
  c.train.num_epochs = max(c.train.num_epochs / 3, 1.0)
  c.train.warmup_epochs = 0.0
