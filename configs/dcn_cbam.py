"""ResNet + CBAM + modulated deformable convolution (DCNv2): the survey's deformable-convolution + CBAM
network (FER2013 73.22 %), whose paper is not public, read as the nearest fully specified design.

Usage:
  python -m ferjax.train --config configs/dcn_cbam.py:fer2013           # FER2013 (the survey's dataset)
  python -m ferjax.train --config configs/dcn_cbam.py:raf_db            # RAF-DB, DAN's recipe
  python -m ferjax.train --config configs/dcn_cbam.py:synthetic_images  # the CPU quickstart
  python -m ferjax.models --config configs/dcn_cbam.py                  # 11.92 M parameters

The argument is `<preset>[,key=value...]`; presets are `fer2013` (default), `raf_db`, `synthetic_images`;
keys `backbone=<resnet18|resnet34|resnet50>`, `fold=<k>`, `seed=<s>`.

Silent choices, all fields (docs/models/dcn_cbam.md): ResNet-18 trunk (`model.backbone`), DCNv2 in the last
two stages (`model.deformable_stages=(3, 4)`, DCNv2's own placement: the later stages), one offset group,
CBAM with r = 16 in every block; FER2013 at 224 px (the 48 px faces resized; the deformable stages then work
on 14 x 14 and 7 x 7 maps) with ImageNet normalisation, SGD (Nesterov momentum 0.9) lr 0.01, weight decay
5e-4, the plateau schedule (x0.1 after 2 validations without a better UAR) on PublicTest with early stopping
after 8, at most 50 epochs, batch 64, flip + rotation up to 10 degrees + random crops of 80-100 % of the
area; the best PublicTest checkpoint is tested on PrivateTest.

The generic sections start from `configs/common.py`, so fields added to every config arrive here too;
every value this recipe depends on is set below.
"""

import importlib.util
import os

import ml_collections

PRESETS = ('fer2013', 'raf_db', 'synthetic_images')


def _common():
  """configs/common.py (config files are loaded by path, not imported as a package)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'common.py')
  spec = importlib.util.spec_from_file_location('ferjax_configs_common', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


common = _common()


def _base() -> ml_collections.ConfigDict:
  """The shared sections with the image families' trunk weights and random-masking keys."""
  return common.image_trunk_base()


def model_config() -> ml_collections.ConfigDict:
  m = ml_collections.ConfigDict()
  m.name = 'dcn_cbam'
  m.backbone = 'resnet18'
  m.width = 64
  m.stage_sizes = ()  # () = the backbone's standard depths.
  m.deformable_stages = (3, 4)  # 1-based stages whose 3x3 convolutions are DCNv2; () = none.
  m.offset_groups = 1
  m.cbam_reduction = 16
  m.dropout = 0.0
  # Formulations of the ResNet layers (same function, different XLA programs; ferjax/models/resnet.py).
  m.dot_1x1 = True
  m.fused_batchnorm = True
  m.dtype = 'auto'  # bfloat16 compute on TPU/GPU, float32 on CPU; parameters always float32.
  m.remat = 'none'
  return m


def _images(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  c.dataset.config = ''
  c.dataset.fold = 0
  c.dataset.num_frames = 1  # Static images are 1-frame sequences.
  c.dataset.image_size = 224
  c.dataset.normalization = 'imagenet'
  c.augment.brightness = 0.0
  c.augment.contrast = 0.0
  c.augment.mask_prob = 0.0
  c.augment.eval_crop = 1.0
  c.model = model_config()
  c.train.num_steps = -1
  c.train.warmup_epochs = 0.0
  c.train.grad_clip = 0.0
  c.train.label_smoothing = 0.0
  c.eval.tta_copies = 0
  return c


def fer2013_config() -> ml_collections.ConfigDict:
  """FER2013: train / PublicTest (validation: plateau schedule, early stopping, selection) / PrivateTest."""
  c = _images(_base())
  c.dataset.name = 'fer2013'
  c.dataset.holdout_validation = True
  c.input.batch_size = 64
  c.input.eval_batch_size = 64
  c.augment.crop_scale = (0.8, 1.0)
  c.augment.crop_ratio = (0.9, 1.1)
  c.augment.flip = True
  c.augment.rotation = 10.0
  c.train.num_epochs = 50.0
  c.train.optimizer = 'sgd'
  c.train.learning_rate = 0.01
  c.train.momentum = 0.9
  c.train.weight_decay = 5e-4
  c.train.schedule = 'plateau'
  c.train.plateau_patience = 2
  c.train.plateau_factor = 0.1
  c.train.min_learning_rate = 1e-5
  c.train.early_stop_patience = 8
  c.train.eval_every_steps = 449  # One epoch: 28,709 / 64.
  c.train.checkpoint_every_steps = 449
  c.train.log_every_steps = 50
  return c


def raf_db_config() -> ml_collections.ConfigDict:
  """RAF-DB with DAN's recipe (configs/mhca.py:raf_db): SGD 0.1 x0.1 every 10 epochs, 40 epochs, batch
  256, flip + (p = 0.2) rotation up to 20 degrees and a padded crop + random erasing, final model reported."""
  c = _images(_base())
  c.dataset.name = 'raf_db'
  c.dataset.holdout_validation = False
  c.input.batch_size = 256
  c.input.eval_batch_size = 256
  c.augment.crop_scale = (1.0, 1.0)
  c.augment.crop_ratio = (1.0, 1.0)
  c.augment.flip = True
  c.augment.rotation = 20.0  # With p = 0.2, with a random crop of the 32-px-padded image, zero fill.
  c.augment.rotate_crop_prob = 0.2
  c.augment.pad_crop = 32
  c.augment.fill = 'black'
  c.augment.mask_prob = 0.5
  c.augment.mask_size = (0.14, 0.5)
  c.augment.mask_count = 1
  c.train.num_epochs = 40.0
  c.train.optimizer = 'sgd'
  c.train.learning_rate = 0.1
  c.train.momentum = 0.9
  c.train.nesterov = False
  c.train.weight_decay = 1e-4
  c.train.weight_decay_rules = ((r'.*', 1.0),)  # DAN's SGD decays every parameter.
  c.train.schedule = 'step'  # x0.1 every 10 epochs.
  c.train.step_epochs = 10.0
  c.train.step_factor = 0.1
  c.train.eval_every_steps = 48  # One epoch: 12,271 / 256.
  c.train.checkpoint_every_steps = 48
  c.train.log_every_steps = 10
  return c


def synthetic_images_config() -> ml_collections.ConfigDict:
  """The quickstart on the built-in image set (`synthetic_expressions/images`, 48 px apex frames, 1120 /
  140 / 140 train / validation / test by subject): the default model at width 16 (deformable stages on
  3 x 3 and 2 x 2 maps), RAdam 3e-3 with the plateau schedule and early stopping of configs/rmn.py's
  quickstart, best validation checkpoint tested."""
  c = fer2013_config()
  c.dataset.name = 'synthetic_expressions'
  c.dataset.config = 'images'
  c.dataset.image_size = 48
  c.input.batch_size = 32
  c.input.eval_batch_size = 70
  c.input.worker_count = 1
  c.augment.crop_scale = (1.0, 1.0)
  c.augment.crop_ratio = (1.0, 1.0)
  c.model.width = 16
  c.train.num_epochs = 20.0
  c.train.optimizer = 'radam'
  c.train.learning_rate = 3e-3
  c.train.weight_decay = 1e-3
  c.train.weight_decay_rules = common.WEIGHT_DECAY_RULES
  c.train.early_stop_patience = 6
  c.train.eval_every_steps = 35  # One epoch: 1120 / 32.
  c.train.checkpoint_every_steps = 35
  c.train.log_every_steps = 35
  return c


def _backbone(c: ml_collections.ConfigDict, value: str) -> None:
  c.model.backbone = value


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`<preset>[,backbone=b][,fold=k][,seed=s]`, e.g. `fer2013,backbone=resnet50`."""
  return common.parse(arg, presets={'fer2013': fer2013_config, 'raf_db': raf_db_config,
                                    'synthetic_images': synthetic_images_config},
                      default='fer2013', keys={'backbone': _backbone, **common.KEYS})
