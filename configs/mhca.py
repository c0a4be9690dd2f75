"""Multi-head cross attention (DAN; Wen et al., Biomimetics 2023): the survey's IRNet read through DAN.

Usage:
  python -m ferjax.train --config configs/mhca.py:raf_db                   # DAN's RAF-DB recipe
  python -m ferjax.train --config configs/mhca.py:raf_db,backbone=resnet50 # the survey's IRNet reading
  python -m ferjax.train --config configs/mhca.py:synthetic_images         # the CPU quickstart
  python -m ferjax.models --config configs/mhca.py                         # 19.73 M parameters

The argument is `<preset>[,key=value...]`; presets are `raf_db` (default), `fer2013`, `synthetic_images`;
keys `backbone=<resnet18|resnet34|resnet50>`, `fold=<k>`, `seed=<s>`.

`raf_db` is DAN's recipe (the public code `yaoing/DAN`, train_rafdb.py): ResNet-18 trunk, 4 heads,
cross-entropy + affinity + partition losses (weights 1, 1), SGD lr 0.1 momentum 0.9 weight decay 1e-4,
x0.1 every 10 epochs (`train.schedule='step'`), 40 epochs, batch 256, 224 px faces with ImageNet
normalisation, horizontal flip, with p = 0.2 a rotation up to 20 degrees and a random 224 crop of the
32-px-padded image (`augment.rotate_crop_prob`, `augment.pad_crop`; zero fill), random erasing; SGD
without Nesterov's correction (`train.nesterov=False`, PyTorch's default); weight decay covers every
parameter, the affinity centres included, as DAN's. DAN starts from an MS-Celeb-1M ResNet-18 (give any
torchvision-layout ResNet-18 as `--config.init.backbone_weights=...`; from scratch otherwise). The run reports its final model
(`dataset.holdout_validation=True` selects by the validation split instead); DAN reports its best
test-set epoch.

The generic sections start from `configs/common.py`, so fields added to every config arrive here too;
every value this recipe depends on is set below.
"""

import importlib.util
import os

import ml_collections

PRESETS = ('raf_db', 'fer2013', 'synthetic_images')


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
  m.name = 'mhca'
  m.backbone = 'resnet18'  # DAN; 'resnet50' = the survey's IRNet reading (2048-d heads).
  m.width = 64
  m.stage_sizes = ()  # () = the backbone's standard depths.
  m.num_heads = 4
  m.spatial_hidden = 256  # Spatial unit's 1x1 convolution C -> 256.
  m.channel_hidden = 32  # Channel unit's Linear C -> 32 -> C.
  m.affinity_weight = 1.0
  m.partition_weight = 1.0
  # Formulations of the ResNet layers (same function, different XLA programs; ferjax/models/resnet.py).
  m.dot_1x1 = True
  m.fused_batchnorm = True
  m.dtype = 'auto'  # bfloat16 compute on TPU/GPU, float32 on CPU; parameters always float32.
  m.remat = 'none'
  return m


def raf_db_config() -> ml_collections.ConfigDict:
  """DAN's recipe on RAF-DB (basic, 7 classes; train / validation carved from train / test)."""
  c = _base()
  c.dataset.name = 'raf_db'
  c.dataset.config = ''
  c.dataset.fold = 0
  c.dataset.holdout_validation = False  # Train on all 12,271 training images, report the final model.
  c.dataset.num_frames = 1  # Static images are 1-frame sequences.
  c.dataset.image_size = 224
  c.dataset.normalization = 'imagenet'
  c.input.batch_size = 256
  c.input.eval_batch_size = 256
  c.augment.crop_scale = (1.0, 1.0)  # Whole aligned face, resized to 224.
  c.augment.crop_ratio = (1.0, 1.0)
  c.augment.flip = True
  # DAN's RandomApply([RandomRotation(20), RandomCrop(224, padding=32)], p=0.2), zero fill.
  c.augment.rotation = 20.0
  c.augment.rotate_crop_prob = 0.2
  c.augment.pad_crop = 32
  c.augment.fill = 'black'
  c.augment.brightness = 0.0
  c.augment.contrast = 0.0
  # torchvision RandomErasing (p 0.5, area 0.02-0.25, aspect 0.3-3.3, value 0 = the mean colour after
  # normalisation): one rectangle with sides of 0.14-0.5 of the image (areas 0.02-0.25).
  c.augment.mask_prob = 0.5
  c.augment.mask_size = (0.14, 0.5)
  c.augment.mask_count = 1
  c.augment.eval_crop = 1.0
  c.model = model_config()
  c.train.num_epochs = 40.0
  c.train.num_steps = -1
  c.train.optimizer = 'sgd'
  c.train.learning_rate = 0.1
  c.train.momentum = 0.9
  c.train.nesterov = False  # torch.optim.SGD's default.
  c.train.warmup_epochs = 0.0
  c.train.weight_decay = 1e-4
  # DAN's SGD decays every parameter, BatchNorm, biases and the affinity centres included.
  c.train.weight_decay_rules = ((r'.*', 1.0),)
  c.train.grad_clip = 0.0
  c.train.label_smoothing = 0.0
  c.train.schedule = 'step'  # StepLR(step_size=10, gamma=0.1), stepped per epoch.
  c.train.step_epochs = 10.0
  c.train.step_factor = 0.1
  # One validation/checkpoint per epoch: 12,271 / 256 = 48 steps.
  c.train.eval_every_steps = 48
  c.train.checkpoint_every_steps = 48
  c.train.log_every_steps = 10
  c.eval.tta_copies = 0
  return c


def fer2013_config() -> ml_collections.ConfigDict:
  """DAN's recipe on FER2013 (train / PublicTest / PrivateTest): 48 px grey faces resized to 224."""
  c = raf_db_config()
  c.dataset.name = 'fer2013'
  c.train.eval_every_steps = 112  # 28,709 / 256.
  c.train.checkpoint_every_steps = 112
  return c


def synthetic_images_config() -> ml_collections.ConfigDict:
  """The quickstart on the built-in image set (`synthetic_expressions/images`, 48 px apex frames, 1120 /
  140 / 140 train / validation / test by subject): DAN's model at width 16 (heads 64 / 8 hidden, the
  same ratios), RAdam 3e-3 (SGD 0.1 from scratch on 1,120 images is unstable) with 1 warm-up epoch and
  cosine decay over 40 epochs (20 epochs of configs/rmn.py's plateau recipe left it at 87 % training
  accuracy, still rising), best validation checkpoint tested."""
  c = raf_db_config()
  c.dataset.name = 'synthetic_expressions'
  c.dataset.config = 'images'
  c.dataset.image_size = 48
  c.dataset.holdout_validation = True
  c.input.batch_size = 32
  c.input.eval_batch_size = 70
  c.input.worker_count = 1
  c.augment.rotation = 10.0
  c.augment.rotate_crop_prob = 1.0
  c.augment.pad_crop = 0
  c.augment.fill = 'reflect'
  c.augment.mask_prob = 0.0
  c.model.width = 16
  c.model.spatial_hidden = 64
  c.model.channel_hidden = 8
  c.train.num_epochs = 40.0
  c.train.optimizer = 'radam'
  c.train.learning_rate = 3e-3
  c.train.warmup_epochs = 1.0
  c.train.weight_decay = 1e-3
  c.train.weight_decay_rules = common.WEIGHT_DECAY_RULES
  c.train.schedule = 'cosine'
  c.train.eval_every_steps = 35  # One epoch: 1120 / 32.
  c.train.checkpoint_every_steps = 35
  c.train.log_every_steps = 35
  return c


def _backbone(c: ml_collections.ConfigDict, value: str) -> None:
  c.model.backbone = value


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`<preset>[,backbone=b][,fold=k][,seed=s]`, e.g. `raf_db,backbone=resnet50`."""
  return common.parse(arg, presets={'raf_db': raf_db_config, 'fer2013': fer2013_config,
                                    'synthetic_images': synthetic_images_config},
                      default='raf_db', keys={'backbone': _backbone, **common.KEYS})
