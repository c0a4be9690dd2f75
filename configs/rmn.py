"""Residual Masking Network (Pham et al., ICPR 2020) and its reconstruction variant (Shen & Li, JIPS).

Usage:
  python -m ferjax.train --config configs/rmn.py:fer2013                 # the published recipe
  python -m ferjax.train --config configs/rmn.py:fer2013,reconstruction  # + L1 reconstruction (Shen & Li)
  python -m ferjax.train --config configs/rmn.py:synthetic_images        # the CPU quickstart
  python -m ferjax.train --config configs/rmn.py:ck_plus,fold=3          # per frame on a sequence dataset

The argument is `<preset>[,reconstruction][,key=value...]`; presets are `fer2013` (default),
`synthetic_images`, `ck_plus`; keys `fold=<k>`, `seed=<s>`.

`fer2013` is the public code's recipe (`phamquiluan/ResidualMaskingNetwork`, configs/fer2013_config.json and
its trainer): ResNet-34 + masking blocks, 48x48 grey faces resized to 224 and repeated to 3 channels, scaled by
1/255 without mean/std (`dataset.normalization='unit'`), random horizontal flip and rotation up to 30
degrees with the uncovered corners black (utils/augmenters/augment.py: imgaug's `Affine`, constant fill 0;
`augment.fill='black'`; `'reflect'` mirrors the image instead),
RAdam (lr 1e-4, decoupled weight decay 1e-3), batch 48, reduce-on-plateau (patience 2, factor 0.1 =
PyTorch's default, down to 1e-6) evaluated every epoch on the validation split (PublicTest), at most 50
epochs, early stop after 8 epochs without improvement, the best validation checkpoint tested on PrivateTest
with 10 test-time-augmentation copies. ferjax's choices where the code differs or is silent: the monitored
value is the validation UAR (the code uses accuracy; ferjax selects checkpoints by UAR everywhere), no
weight decay on biases and normalisation parameters, no label smoothing; the code's `ImageNet` init line
is commented out, so the trunk starts from scratch here too (`--config.init.backbone_weights=...` loads
torchvision ResNet-34 weights into it).

The generic sections (dataset/input/augment/init/train/mesh/eval) start from `configs/common.py`, so fields
added to every config arrive here too; every value this recipe depends on is set below.
"""

import importlib.util
import os

import ml_collections

PRESETS = ('fer2013', 'synthetic_images', 'ck_plus')
ARG_KEYS = ('fold', 'seed')


def _common():
  """configs/common.py (config files are loaded by path, not imported as a package)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'common.py')
  spec = importlib.util.spec_from_file_location('ferjax_configs_common', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


common = _common()


def _base() -> ml_collections.ConfigDict:
  """The shared sections, and the trunk's torchvision weights (`init.backbone_weights`)."""
  c = common.base()
  c.init.backbone_weights = ''  # torchvision-layout .safetensors/.npz; '' = random init.
  c.init.backbone_prefix = ''  # Key prefix inside that file, e.g. 'module.'.
  return c


def model_config() -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.name = 'rmn'
  m.backbone = 'resnet34'
  m.width = 64
  m.stage_sizes = ()  # () = the backbone's standard depths (3, 4, 6, 3).
  m.mask_depths = (4, 3, 2, 1)  # U-Net depth of the masking block after each stage.
  m.mask_activation = 'softmax'  # Over channels at each pixel (the code); 'sigmoid' = its commented variant.
  m.dropout = 0.4
  # Shen & Li's reconstruction variant: weight of L_rec = mean |p - p'| (p = the model's input); 0 = off
  # (no decoder).
  m.reconstruction_weight = 0.0
  # Transposed-convolution levels of the reconstruction decoder (each doubles the side; 5 = 32x, the
  # ResNet's stride, so a 224 px input comes back at 224 px without a resize).
  m.reconstruction_levels = 5
  # Mask term: 'binary' = this project's reading of the "margin/binary" term (rmn.py docstring); 'none'.
  m.mask_loss = 'none'
  m.mask_loss_weight = 0.0
  m.dtype = 'auto'  # bfloat16 compute on TPU/GPU, float32 on CPU; parameters always float32.
  # 'blocks' recomputes the stem and every BasicBlock (trunk and masks) in the backward pass: same values,
  # less activation memory, about one more forward pass of compute. 'none' keeps every activation.
  m.remat = 'none'
  # Formulations of the ResNet layers (same function, different XLA programs; ferjax/models/resnet.py).
  m.dot_1x1 = True
  m.fused_batchnorm = True
  # BatchNorm statistics over the whole global batch (1), or per slice of batch / G (G = devices: per GPU,
  # as the public RMN code's DataParallel).
  m.batchnorm_groups = 1
  return m


def fer2013_config() -> ml_collections.ConfigDict:
  """The published recipe on FER2013 (train / PublicTest = validation / PrivateTest = test)."""
  c = _base()
  c.dataset.name = 'fer2013'
  c.dataset.config = ''
  c.dataset.fold = 0
  c.dataset.holdout_validation = True  # PublicTest drives the plateau schedule, stopping and selection.
  c.dataset.num_frames = 1  # Static images are 1-frame sequences.
  c.dataset.image_size = 224
  c.dataset.normalization = 'unit'
  c.input.batch_size = 48
  c.input.eval_batch_size = 48
  c.augment.crop_scale = (1.0, 1.0)  # The code only flips and rotates.
  c.augment.crop_ratio = (1.0, 1.0)
  c.augment.flip = True
  c.augment.rotation = 30.0
  c.augment.fill = 'black'  # imgaug's Affine default (constant 0), the public code's augmenter.
  c.augment.brightness = 0.0
  c.augment.contrast = 0.0  # No random masking either (no augment.mask_* keys).
  c.augment.eval_crop = 1.0
  c.model = model_config()
  c.train.num_epochs = 50.0
  c.train.num_steps = -1
  c.train.optimizer = 'radam'
  c.train.learning_rate = 1e-4
  c.train.warmup_epochs = 0.0
  c.train.weight_decay = 1e-3
  c.train.grad_clip = 0.0
  c.train.label_smoothing = 0.0
  c.train.schedule = 'plateau'
  c.train.plateau_patience = 2
  c.train.plateau_factor = 0.1
  c.train.min_learning_rate = 1e-6
  c.train.early_stop_patience = 8
  # One validation per epoch: 28,709 training images / 48 = 598 steps.
  c.train.eval_every_steps = 598
  c.train.checkpoint_every_steps = 598
  c.train.log_every_steps = 50
  c.eval.tta_copies = 10  # The code sums the softmax of 10 augmented copies (same argmax as the mean).
  return c


def synthetic_images_config() -> ml_collections.ConfigDict:
  """The quickstart: the built-in static-image dataset (`synthetic_expressions/images`, 48x48 apex frames,
  1120 / 140 / 140 train / validation / test) on a CPU in minutes. The recipe of `fer2013` (RAdam,
  plateau schedule, early stopping, flip + rotation, unit scaling) on a reduced RMN: ResNet-18 stage
  depths (2, 2, 2, 2) at width 16 with the masking blocks of depths 4/3/2/1 (8.0 M parameters); learning
  rate 3e-3 (the network is 17x smaller and trains from scratch for 20 epochs; width 8 at 1e-3 reached
  only 42 % in 12 epochs), rotation up to 10 degrees."""
  c = fer2013_config()
  c.dataset.name = 'synthetic_expressions'
  c.dataset.config = 'images'
  c.dataset.image_size = 48
  c.input.batch_size = 32
  c.input.eval_batch_size = 70
  c.input.worker_count = 1
  c.augment.rotation = 10.0
  c.model.width = 16
  c.model.stage_sizes = (2, 2, 2, 2)
  c.model.dropout = 0.2
  c.train.num_epochs = 20.0
  c.train.learning_rate = 3e-3
  c.train.min_learning_rate = 1e-5
  c.train.early_stop_patience = 6
  c.train.eval_every_steps = 35  # One epoch: 1120 / 32.
  c.train.checkpoint_every_steps = 35
  c.train.log_every_steps = 35
  c.eval.tta_copies = 0
  return c


def ck_plus_config() -> ml_collections.ConfigDict:
  """Per frame on CK+ (10-fold by subject): the model scores each of T frames, a sequence's class is the
  argmax of its frames' mean probabilities; every frame is trained on with its sequence's label. The
  FER2013 recipe otherwise, with the next fold held out for the plateau schedule and early stopping.

  A per-frame image model on a sequence dataset samples the apex (`dataset.sampling='apex'`: the
  last T frames; CK+ sequences run from a neutral onset to the apex), T = 3: the usual image protocol
  on CK+ (the last three frames carry the label). Sampling TSN segments over the whole sequence would
  train the neutral onset frames with the apex label. 16 sequences x 3 frames = 48 images per step,
  the recipe's batch."""
  c = fer2013_config()
  c.dataset.name = 'ck_plus'
  c.dataset.num_frames = 3
  c.dataset.sampling = 'apex'
  c.input.batch_size = 16  # 16 sequences x 3 frames = 48 images per step.
  c.input.eval_batch_size = 16
  c.train.eval_every_steps = 100
  c.train.checkpoint_every_steps = 100
  c.eval.tta_copies = 0
  return c


def _reconstruction(c: ml_collections.ConfigDict) -> None:
  # Shen & Li: L = CE + L_rec, plus the mask term (this project's reading, weight 0.1).
  c.model.reconstruction_weight = 1.0
  c.model.mask_loss = 'binary'
  c.model.mask_loss_weight = 0.1


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`<preset>[,reconstruction][,fold=k][,seed=s]`, e.g. `fer2013,reconstruction`."""
  return common.parse(arg, presets={'fer2013': fer2013_config,
                                    'synthetic_images': synthetic_images_config,
                                    'ck_plus': ck_plus_config},
                      default='fer2013', keys=common.KEYS, words={'reconstruction': _reconstruction})
