"""STSTNet (Liong et al., FG 2019): micro-expression recognition from the onset -> apex flow and strain.

Usage:
  python -m ferjax.crossval --config configs/ststnet.py:synthetic --workdir runs/stst_syn      # every LOSO fold
  python -m ferjax.crossval --config configs/ststnet.py:synthetic,subject_folds=4 --workdir runs/stst4
  python -m ferjax.train --config configs/ststnet.py:megc2019,fold=3 --workdir runs/stst_f3

The argument is `<preset>[,key=value...]`; presets are `megc2019` (default; the paper's recipe on the
MEGC2019 composite, 68 subjects), `casme2`, `samm`, `smic` (the same recipe on one dataset's part of the
composite: `megc2019/casme2` ..., three classes, leave-one-subject-out over that dataset's subjects),
`casme2_5class` (CASME II's five classes, 26 subjects: `casme2/5class`) and `synthetic` (the built-in
`synthetic_expressions/micro`). Keys: `fold=<k>` (the left-out subject), `subject_folds=<k>`
(subject-independent k-fold instead of LOSO), `seed=<s>`.

The paper's recipe (the public code, christy1206/STSTNet ``main.py``): 28 x 28 u / v / strain images,
Adam at 5e-5 (no weight decay, no schedule), batch 256, 800 epochs, the final model of every fold (no
model selection: ferjax never selects on the test subject). The frames input is kept at one small frame
(the pipeline always carries frames); STSTNet reads only ``onset_apex_flow`` (ferjax/data/micro_flow.py).
Build the datasets first from your copies (tfds_builders/casme2, samm, smic, megc2019; docs/micro.md):
`python -m tfds_builders megc2019 --manual_dir <copies>` (and `--config casme2` ... for the per-dataset
presets, `python -m tfds_builders casme2 --config 5class ...` for `casme2_5class`).
"""

import importlib.util
import os

import ml_collections


def _common():
  """configs/common.py (config files are loaded by path, not imported as a package)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'common.py')
  spec = importlib.util.spec_from_file_location('ferjax_configs_common', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


common = _common()

PRESETS = common.MICRO_PRESETS


def paper_config() -> ml_collections.ConfigDict:
  """The paper's recipe on the MEGC2019 composite, left-out subject 0."""
  c = common.base()
  c.dataset.name = 'megc2019'
  c.dataset.config = 'full'  # All 442 samples of the official list; 'casme2' / 'samm' / 'smic': one part.
  c.dataset.holdout_validation = False  # The final model of each fold, as the paper.
  c.dataset.subject_folds = 0  # LOSO.
  c.dataset.num_frames = 1  # Frames are carried but unused; the flow input reads onset and apex.
  c.dataset.image_size = 28  # The flow/strain image side.
  c.dataset.normalization = 'unit'
  # The onset_apex_flow input's method: 'tvl1' (OpenCV contrib), 'dis', or 'auto' (TV-L1 where OpenCV has it).
  c.dataset.micro_flow = 'auto'
  c.augment.crop_scale = (1.0, 1.0)
  c.augment.crop_ratio = (1.0, 1.0)
  c.augment.flip = False  # No augmentation in the paper (and flipping would need u negated).
  c.augment.rotation = 0.0
  c.augment.brightness = 0.0
  c.augment.contrast = 0.0
  c.augment.eval_crop = 1.0
  c.input.batch_size = 256
  c.input.eval_batch_size = 256
  c.input.worker_count = 0  # The flow image is cached per record; in-process reading is enough.

  c.model.name = 'ststnet'
  c.model.image_size = c.dataset.get_ref('image_size')
  c.model.filters = (3, 5, 8)  # The three streams' 3x3 convolutions.
  c.model.dropout = 0.5

  c.train.num_epochs = 800.0
  c.train.optimizer = 'adamw'
  c.train.weight_decay = 0.0  # AdamW without decay = Adam (the code's torch.optim.Adam).
  c.train.learning_rate = 5e-5
  c.train.schedule = 'constant'
  c.train.warmup_epochs = 0.0
  c.train.grad_clip = 0.0
  c.train.label_smoothing = 0.0
  c.train.log_every_steps = 50
  c.train.eval_every_steps = 1000
  c.train.checkpoint_every_steps = 1000
  return c


def synthetic_config() -> ml_collections.ConfigDict:
  """The built-in micro-expression set (24 subjects, 216 clips): the paper's model and optimizer with a
  10x learning rate and 200 epochs, so every fold trains in seconds of CPU time."""
  c = paper_config()
  c.dataset.name = 'synthetic_expressions'
  c.dataset.config = 'micro'
  c.train.learning_rate = 5e-4
  c.train.num_epochs = 200.0
  return c


KEYS = common.MICRO_KEYS
ARG_KEYS = tuple(KEYS)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`<preset>[,fold=k][,seed=s][,subject_folds=k]`, e.g. `synthetic,subject_folds=4`."""
  return common.parse(arg, presets=common.micro_presets(paper_config, synthetic_config),
                      default='megc2019', keys=KEYS)
