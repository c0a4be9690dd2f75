"""LKCNN (WASA 2024): InceptionNeXt blocks over landmark blocks of the onset -> apex flow, relative
position attention. docs/models/lkcnn.md has the readings table behind every field.

Usage:
  python -m ferjax.crossval --config configs/lkcnn.py:synthetic,subject_folds=4 --workdir runs/lk4
  python -m ferjax.crossval --config configs/lkcnn.py:megc2019 --workdir runs/lk_megc      # 68 LOSO folds
  python -m ferjax.train --config configs/lkcnn.py:casme2,fold=3 --workdir runs/lk_c2_f3
  python -m ferjax.models --config configs/lkcnn.py                      # parameters per component

The MEGC2019 datasets are built from the user's copies first (docs/micro.md); their builders store no
keypoints, so their blocks are cut around the canonical positions (dataset.canonical_keypoints).

The argument is `<preset>[,key=value...]`; presets are `megc2019` (default; the MEGC2019 composite,
negative / positive / surprise, 68 subjects), `casme2`, `samm`, `smic` (one dataset's part of the
composite: `megc2019/casme2` ..., leave-one-subject-out over its subjects), `casme2_5class` (CASME II's
five classes: `casme2/5class`) and `synthetic` (the built-in `synthetic_expressions/micro`). Keys:
`fold=<k>` (the left-out subject), `subject_folds=<k>` (subject-independent k-fold instead of LOSO),
`seed=<s>`.

The paper's training recipe is not public: the dataset presets use the recipe of the composite's
public code (STSTNet's and HTNet's: Adam 5e-5, batch 256, 800 epochs, the final model of every fold);
the synthetic preset a smaller model (one stage of one MetaNeXt block, 16 channels: 11,228 parameters) and
a faster recipe (AdamW 1e-3 without decay, 100 epochs, batch 32), so that a fold trains in minutes on a
CPU.
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
  """The MEGC2019 composite, left-out subject 0; the composite's public training recipe."""
  c = common.base()
  c.dataset.name = 'megc2019'
  c.dataset.config = 'full'  # All 442 samples of the official list; 'casme2' / 'samm' / 'smic': one part.
  c.dataset.holdout_validation = False  # The final model of each fold: no fold selects on its test subject.
  c.dataset.subject_folds = 0  # LOSO.
  c.dataset.num_frames = 1  # Frames are carried but unused; the blocks input reads onset and apex.
  c.dataset.image_size = 28  # The flow image's side (HTNet's); the blocks are 14 x 14.
  c.dataset.normalization = 'unit'
  # The flow's method: 'tvl1' (OpenCV contrib), 'dis', or 'auto' (TV-L1 where OpenCV has it).
  c.dataset.micro_flow = 'auto'
  # Block centres: 'record' (the record's keypoints feature, canonical where it has none) or 'canonical'.
  c.dataset.block_keypoints = 'record'
  # The canonical keypoints (x0, y0, ..., x4, y4; fractions of the face side): HTNet's fallback points.
  c.dataset.canonical_keypoints = CANONICAL
  # 'xy': a block is centred on its keypoint; 'yx': HTNet's code's transposed indexing.
  c.dataset.block_axes = 'xy'
  c.augment.crop_scale = (1.0, 1.0)
  c.augment.crop_ratio = (1.0, 1.0)
  c.augment.flip = False  # Flipping would need u negated and the blocks swapped.
  c.augment.rotation = 0.0
  c.augment.brightness = 0.0
  c.augment.contrast = 0.0
  c.augment.eval_crop = 1.0
  c.input.batch_size = 256
  c.input.eval_batch_size = 256
  c.input.worker_count = 0  # The flow image is cached per record; in-process reading is enough.

  c.model.name = 'lkcnn'
  c.model.image_size = c.dataset.get_ref('image_size')
  c.model.dims = (32,)  # Channels per stage (one stage over a 7 x 7 map after the stem).
  c.model.depths = (2,)  # MetaNeXt blocks per stage.
  c.model.stem_patch = 2  # Patchify stem: 14 x 14 block -> 7 x 7 (InceptionNeXt: 4 on 224 px).
  c.model.square_kernel = 3  # InceptionDWConv2d's square branch.
  c.model.band_kernel = 11  # Its 1 x k and k x 1 bands.
  c.model.branch_ratio = 0.125  # Channels of each convolution branch.
  c.model.mlp_ratio = 4.0
  c.model.layer_scale = 1e-6
  c.model.shared_backbone = False  # One backbone per block.
  c.model.tokens = 'blocks'  # Attention over the four block tokens ('positions': over the map's cells).
  c.model.heads = 1
  c.model.relative_bias = True  # False: plain self-attention (the ablation of relative positions).
  c.model.pool = 'flatten'  # The weighted tokens, flattened, feed the classifier ('mean': averaged).
  c.model.dropout = 0.0

  c.train.num_epochs = 800.0
  c.train.optimizer = 'adamw'
  c.train.weight_decay = 0.0  # AdamW without decay = Adam.
  c.train.learning_rate = 5e-5
  c.train.schedule = 'constant'
  c.train.warmup_epochs = 0.0
  c.train.grad_clip = 0.0
  c.train.label_smoothing = 0.0
  c.train.log_every_steps = 50
  c.train.eval_every_steps = 1000
  c.train.checkpoint_every_steps = 1000
  return c


# HTNet's fallback keypoints on its 28 x 28 grid (main_HTNet.py), as fractions of the side; the same
# values as ferjax.data.landmark_blocks.CANONICAL (config files import no ferjax module).
CANONICAL = tuple(round(v / 28, 6) for v in (9.528073, 11.062551, 21.396168, 10.919773, 15.380184,
                                             17.380562, 10.255435, 22.121233, 20.583706, 22.25584))


def synthetic_config() -> ml_collections.ConfigDict:
  """The built-in micro-expression set (24 subjects, 216 clips, keypoints from the drawn faces)."""
  c = paper_config()
  c.dataset.name = 'synthetic_expressions'
  c.dataset.config = 'micro'
  c.model.dims = (16,)  # A quarter of the default's parameters: a fold trains in about a minute.
  c.model.depths = (1,)
  c.input.batch_size = 32
  c.input.eval_batch_size = 64
  c.train.learning_rate = 1e-3
  c.train.num_epochs = 100.0
  return c


KEYS = common.MICRO_KEYS
ARG_KEYS = tuple(KEYS)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`<preset>[,fold=k][,seed=s][,subject_folds=k]`, e.g. `synthetic,subject_folds=4`."""
  return common.parse(arg, presets=common.micro_presets(paper_config, synthetic_config),
                      default='megc2019', keys=KEYS)
