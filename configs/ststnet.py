"""STSTNet (Liong et al., FG 2019): micro-expression recognition from the onset -> apex flow and strain.

Usage:
  python -m ferjax.crossval --config configs/ststnet.py:synthetic --workdir runs/stst_syn      # every LOSO fold
  python -m ferjax.crossval --config configs/ststnet.py:synthetic,subject_folds=4 --workdir runs/stst4
  python -m ferjax.train --config configs/ststnet.py:megc2019,fold=3 --workdir runs/stst_f3

The argument is `<preset>[,key=value...]`; presets are `megc2019` (default; the paper's recipe on the
MEGC2019 composite) and `synthetic` (the built-in `synthetic_expressions/micro`). Keys: `fold=<k>` (the
left-out subject), `subject_folds=<k>` (subject-independent k-fold instead of LOSO), `seed=<s>`.

The paper's recipe (the public code, christy1206/STSTNet ``main.py``): 28 x 28 u / v / strain images,
Adam at 5e-5 (no weight decay, no schedule), batch 256, 800 epochs, the final model of every fold (no
model selection: ferjax never selects on the test subject). The frames input is kept at one small frame
(the pipeline always carries frames); STSTNet reads only ``onset_apex_flow`` (ferjax/data/micro_flow.py).
The MEGC2019 builders (casme2, samm, smic, the megc2019 composite) are not part of ferjax yet: the
`megc2019` preset names the dataset they will build (docs/micro.md).
"""

import importlib.util
import os

import ml_collections

PRESETS = ('megc2019', 'synthetic')
ARG_KEYS = ('fold', 'subject_folds', 'seed')


def _base() -> ml_collections.ConfigDict:
  """configs/res_rbg.py's paper config (loaded by path: config files are not a package)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'res_rbg.py')
  spec = importlib.util.spec_from_file_location('ferjax_configs_res_rbg', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.paper_config()


def paper_config() -> ml_collections.ConfigDict:
  """The paper's recipe on the MEGC2019 composite, left-out subject 0."""
  c = _base()
  c.dataset.name = 'megc2019'
  c.dataset.config = ''
  c.dataset.fold = 0
  c.dataset.holdout_validation = False  # The final model of each fold, as the paper.
  c.dataset.subject_folds = 0  # LOSO.
  c.dataset.num_frames = 1  # Frames are carried but unused; the flow input reads onset and apex.
  c.dataset.image_size = 28  # The flow/strain image side.
  c.dataset.normalization = 'unit'
  c.dataset.sampling = 'segments'
  for key in ('crop_scale', 'crop_ratio'):
    c.augment[key] = (1.0, 1.0)
  c.augment.flip = False  # No augmentation in the paper (and flipping would need u negated).
  c.augment.rotation = 0.0
  c.augment.brightness = 0.0
  c.augment.contrast = 0.0
  c.augment.mask_prob = 0.0
  c.augment.eval_crop = 1.0
  c.input.batch_size = 256
  c.input.eval_batch_size = 256
  c.input.worker_count = 0  # The flow image is cached per record; in-process reading is enough.

  c.model = ml_collections.ConfigDict()
  c.model.name = 'ststnet'
  c.model.image_size = c.dataset.get_ref('image_size')
  c.model.filters = (3, 5, 8)  # The three streams' 3x3 convolutions.
  c.model.dropout = 0.5

  c.init = ml_collections.ConfigDict()
  c.init.checkpoint = ''

  c.train.num_epochs = 800.0
  c.train.num_steps = -1
  c.train.optimizer = 'adamw'
  c.train.weight_decay = 0.0  # AdamW without decay = Adam (the code's torch.optim.Adam).
  c.train.learning_rate = 5e-5
  c.train.schedule = 'constant'
  c.train.warmup_epochs = 0.0
  c.train.early_stop_patience = 0
  c.train.grad_clip = 0.0
  c.train.label_smoothing = 0.0
  c.train.log_every_steps = 50
  c.train.eval_every_steps = 1000
  c.train.checkpoint_every_steps = 1000
  c.eval.tta_copies = 0
  c.eval.windows = 'one'
  return c


def synthetic_config() -> ml_collections.ConfigDict:
  """The built-in micro-expression set (24 subjects, 216 clips): the paper's model and optimizer with a
  10x learning rate and 200 epochs, so every fold trains in seconds on a CPU."""
  c = paper_config()
  c.dataset.name = 'synthetic_expressions'
  c.dataset.config = 'micro'
  c.train.learning_rate = 5e-4
  c.train.num_epochs = 200.0
  return c


def _int(key: str, value: str) -> int:
  try:
    return int(value)
  except ValueError:
    raise ValueError(f'config argument {key}={value!r}: expected an integer') from None


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`<preset>[,fold=k][,subject_folds=k][,seed=s]`, e.g. `synthetic,subject_folds=4`."""
  preset, *pairs = (arg or 'megc2019').split(',')
  makers = {'megc2019': paper_config, 'synthetic': synthetic_config}
  if preset not in makers:
    raise ValueError(f'config preset {preset!r} is unknown; expected one of {PRESETS}')
  c = makers[preset]()
  for pair in pairs:
    key, sep, value = pair.partition('=')
    if not sep or key not in ARG_KEYS:
      raise ValueError(f'config argument {pair!r}: expected key=value with key one of {ARG_KEYS}')
    if key == 'seed':
      c.seed = _int(key, value)
    else:
      c.dataset[key] = _int(key, value)
  return c
