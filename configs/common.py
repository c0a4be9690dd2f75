"""What every config file shares: the generic sections with their defaults, and the argument parser.

A config file (`configs/<family>.py`) starts from `base()`, sets its family's `model` section and changes
what its recipe changes, and parses its argument with `parse`:

  `<preset>[,key=value|word...]`, e.g. `ck_plus`, `oulu_casia,fold=3`, `synthetic,seed=1`,
  `fer2013,reconstruction`.

Every file takes `fold=<k>` and `seed=<s>` (`KEYS`); a family adds its own keys and words. Config files
are loaded by path, not imported as a package: they load this file by path too (their `_common()`).
Field comments below say what each field means.
"""

from collections.abc import Callable, Mapping

import ml_collections

# The weight-decay rule of every config: (regex over a parameter's path, multiplier), first match wins,
# no match = no decay. Kernels of convolutions and linear layers and GRU weight matrices decay; biases
# and normalisation scales/offsets do not (torchvision, timm and the flax examples exempt them).
WEIGHT_DECAY_RULES = ((r'(^|/)(kernel|weight_[^/]*)$', 1.0),)


def base() -> ml_collections.ConfigDict:
  """The generic sections (everything but `model` and the family's own keys) with the shared defaults."""
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = ''
  c.dataset.config = ''  # TFDS builder config ('' = the builder's default).
  c.dataset.data_dir = ''  # '' = TFDS default (~/tensorflow_datasets or $TFDS_DATA_DIR).
  c.dataset.fold = 0
  # The papers train on every non-test fold (9 of 10; n-1 subjects for LOSO) and report the final model.
  # True holds out the next fold/subject for validation, and the best validation UAR then selects the
  # reported checkpoint (never the test fold).
  c.dataset.holdout_validation = False
  # Leave-one-subject-out datasets (eNTERFACE'05, RML): 0 = LOSO; k >= 2 = subject-independent k-fold
  # (subjects sorted, fold i = subjects [i::k]). k-fold datasets ignore it.
  c.dataset.subject_folds = 0
  c.dataset.num_frames = 16  # T
  c.dataset.image_size = 224
  # On-device input scaling: 'imagenet' = /255 then ImageNet mean/std, 'unit' = /255 only.
  c.dataset.normalization = 'imagenet'
  # Which T frames: 'segments' (TSN: a random frame of each of T segments in training, their centres in
  # evaluation), 'clip' (the central T frames, RFSCNN's rule) or 'apex' (the last T frames).
  c.dataset.sampling = 'segments'

  c.input = ml_collections.ConfigDict()
  c.input.batch_size = 32  # Global, over all hosts and devices.
  c.input.eval_batch_size = 32
  c.input.worker_count = 2  # grain worker processes per host (0 = in-process).

  c.augment = ml_collections.ConfigDict()
  c.augment.crop_scale = (0.6, 1.0)
  c.augment.crop_ratio = (0.9, 1.1)
  c.augment.flip = True
  c.augment.rotation = 10.0  # Degrees.
  # With this probability per sequence the rotation and the padded crop are applied (torchvision's
  # RandomApply around RandomRotation + RandomCrop(padding=pad_crop)); 1 = every sequence.
  c.augment.rotate_crop_prob = 1.0
  # > 0: a random shift of -pad_crop..pad_crop output pixels per axis (a crop of the output-size image
  # padded by pad_crop on every side); 0 = none.
  c.augment.pad_crop = 0
  c.augment.brightness = 0.2
  c.augment.contrast = 0.2
  c.augment.eval_crop = 0.875  # 224 of 256.
  # The border a rotation uncovers: 'reflect' (mirrored) or 'black' (zeros; zero motion for flow).
  c.augment.fill = 'reflect'

  c.model = ml_collections.ConfigDict()

  c.init = ml_collections.ConfigDict()
  # Any init.<submodule>_weights / _prefix loads a file into that submodule (ResNet or GRU layout).
  # A previous run's workdir: the checkpoint it selects (best_checkpoint/, else the newest) initialises it.
  c.init.checkpoint = ''

  c.train = ml_collections.ConfigDict()
  c.train.num_epochs = 60.0
  c.train.num_steps = -1  # > 0 overrides num_epochs.
  c.train.optimizer = 'adamw'  # 'adamw' | 'radam' | 'sgd'.
  # 'cosine' (warm-up + cosine decay) | 'constant' (warm-up + constant) | 'step' (see step_epochs) |
  # 'plateau' (warm-up + constant, multiplied by plateau_factor after more than plateau_patience
  # validations without a better UAR, down to min_learning_rate).
  c.train.schedule = 'cosine'
  c.train.plateau_patience = 2
  c.train.plateau_factor = 0.1
  c.train.min_learning_rate = 0.0
  # 'step': the rate times step_factor every step_epochs epochs (PyTorch's StepLR stepped per epoch).
  c.train.step_epochs = 10.0
  c.train.step_factor = 0.1
  # > 0: stop after this many validations in a row without a better UAR (needs a validation split).
  c.train.early_stop_patience = 0
  c.train.learning_rate = 3e-4  # Peak, for the global batch.
  c.train.warmup_epochs = 3.0
  c.train.weight_decay = 0.05  # Times each parameter's multiplier from weight_decay_rules.
  c.train.weight_decay_rules = WEIGHT_DECAY_RULES
  c.train.momentum = 0.9  # sgd only.
  c.train.nesterov = True  # sgd only: Nesterov's momentum (False: PyTorch's SGD default).
  c.train.grad_clip = 1.0  # Global-norm clipping; 0 disables.
  c.train.label_smoothing = 0.1
  c.train.log_every_steps = 10
  c.train.eval_every_steps = 200
  c.train.checkpoint_every_steps = 200
  c.train.max_to_keep = 2
  # Regex over parameter paths ('backbone/layer1/0/conv1/kernel'); '' trains all. The others stay frozen
  # (no update, no weight decay).
  c.train.trainable = ''

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # -1 = all devices not used by the other axes.
  c.mesh.fsdp = 1  # >1 shards parameters and optimizer state over this many devices.

  c.eval = ml_collections.ConfigDict()
  # Test-time augmentation: K copies per window (copy 0 plain, the others the training flip/crop/rotation
  # from a fixed per-(sequence, copy) seed), probabilities averaged; 0 or 1 = none.
  c.eval.tta_copies = 0
  # 'one': one window per sequence (the sampling mode's); 'all': consecutive T-frame windows covering
  # every frame, probabilities averaged (long videos).
  c.eval.windows = 'one'
  # Fixed test views, the test split only (validation stays plain), probabilities averaged: K temporal
  # clips spread over the sequence (ferjax.data.sampling.view_indices) x V spatial crops (1 centre,
  # 3 along the longer side, 5 centre + corners, 10 those + mirrored; ferjax.data.augment.view_boxes).
  # 1 x 1 = the sampling mode's frames, centre crop.
  c.eval.temporal_views = 1
  c.eval.spatial_views = 1
  # Test-time augmentation of validation (model selection, plateau schedule, early stopping); 0 or 1 =
  # none: validation follows the plain model's scores, as the public RMN code's does.
  c.eval.validation_tta_copies = 0
  return c


def image_trunk_base() -> ml_collections.ConfigDict:
  """``base()`` plus the keys of the ResNet image families (mhca, dcn_cbam): the trunk's torchvision
  weights (``init.backbone_weights``) and the augment chain's random masking (their ``augment.mask_*``
  keys; off unless a recipe sets it)."""
  c = base()
  c.init.backbone_weights = ''  # torchvision-layout .safetensors/.npz; '' = random init.
  c.init.backbone_prefix = ''  # Key prefix inside that file, e.g. 'module.'.
  c.augment.mask_prob = 0.0
  c.augment.mask_size = (0.1, 0.3)
  c.augment.mask_count = 1
  return c


def integer(key: str, value: str) -> int:
  """`value` of argument `key=value` as an int, or a ValueError naming the argument."""
  try:
    return int(value)
  except ValueError:
    raise ValueError(f'config argument {key}={value!r}: expected an integer') from None


def _fold(c: ml_collections.ConfigDict, value: str) -> None:
  c.dataset.fold = integer('fold', value)


def _seed(c: ml_collections.ConfigDict, value: str) -> None:
  c.seed = integer('seed', value)


# The argument keys of every config file: `key -> set(config, value)`.
KEYS: dict[str, Callable[[ml_collections.ConfigDict, str], None]] = {'fold': _fold, 'seed': _seed}

Preset = Callable[[], ml_collections.ConfigDict]


def _subject_folds(c: ml_collections.ConfigDict, value: str) -> None:
  c.dataset.subject_folds = integer('subject_folds', value)


# The micro-expression families' argument keys: `subject_folds=k` (0 = leave one subject out).
MICRO_KEYS = {**KEYS, 'subject_folds': _subject_folds}
MICRO_PRESETS = ('megc2019', 'casme2', 'samm', 'smic', 'casme2_5class', 'synthetic')


def micro_presets(composite: Preset, synthetic: Preset) -> dict[str, Preset]:
  """The micro-expression families' presets from their two recipes: `megc2019` (the composite, as
  `composite` makes it), one dataset's part of the composite (`casme2`, `samm`, `smic`: `megc2019/<part>`,
  three classes), CASME II's five classes (`casme2_5class`: happiness, disgust, repression, surprise,
  others; leave-one-subject-out over its 26 subjects) with the composite's recipe, and `synthetic`."""

  def part(dataset: str) -> Preset:
    def make() -> ml_collections.ConfigDict:
      c = composite()
      c.dataset.config = dataset
      return c
    return make

  def casme2_5class() -> ml_collections.ConfigDict:
    c = composite()
    c.dataset.name = 'casme2'
    c.dataset.config = '5class'
    return c

  presets = {'megc2019': composite, 'casme2': part('casme2'), 'samm': part('samm'), 'smic': part('smic'),
             'casme2_5class': casme2_5class, 'synthetic': synthetic}
  assert tuple(presets) == MICRO_PRESETS
  return presets


def parse(arg: str | None, *, presets: Mapping[str, Preset], default: str,
          keys: Mapping[str, Callable[[ml_collections.ConfigDict, str], None]] = KEYS,
          words: Mapping[str, Callable[[ml_collections.ConfigDict], None]] | None = None,
          other_preset: Callable[[str], ml_collections.ConfigDict] | None = None
          ) -> ml_collections.ConfigDict:
  """The config of `arg` = `<preset>[,key=value|word...]` ('' or None = `default`).

  Args:
    arg: the part of `--config file.py:<arg>` after the colon.
    presets: preset name -> function making its config.
    default: the preset when `arg` is empty.
    keys: `key -> set(config, value)` for `key=value` parts, applied in order (pass `{..., **KEYS}`).
    words: `word -> set(config)` for bare words (e.g. `reconstruction`).
    other_preset: makes the config of a name not in `presets` (e.g. any prepared dataset); None = such a
      name is an error.
  """
  preset, *parts = (arg or default).split(',')
  if preset in presets:
    c = presets[preset]()
  elif other_preset is not None:
    c = other_preset(preset)
  else:
    raise ValueError(f'config preset {preset!r} is unknown; expected one of {tuple(presets)}')
  words = words or {}
  for part in parts:
    key, sep, value = part.partition('=')
    if not sep and key in words:
      words[key](c)
    elif sep and key in keys:
      keys[key](c, value)
    else:
      expected = f'key=value with key one of {tuple(keys)}'
      if words:
        expected += f', or one of the words {tuple(words)}'
      raise ValueError(f'config argument {part!r}: expected {expected}')
  return c
