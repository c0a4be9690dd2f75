"""ResNet-34 + MFEM + MFFM/FIM + BiLSTM: micro-expression recognition from the clip's frames.

Usage:
  python -m ferjax.crossval --config configs/mfem_bilstm.py:synthetic,subject_folds=4 --workdir runs/mfem4
  python -m ferjax.train --config configs/mfem_bilstm.py:megc2019,fold=3 --workdir runs/mfem_f3
  python -m ferjax.models --config configs/mfem_bilstm.py --num_classes 3      # parameters per component

The argument is `<preset>[,key=value...]`; presets are `megc2019` (default: the MEGC2019 composite, three
classes, leave-one-subject-out over its 68 subjects), `casme2`, `samm`, `smic` (one dataset's part of the
composite), `casme2_5class` (CASME II's five classes) and `synthetic` (the built-in
`synthetic_expressions/micro`, a tiny network that trains in minutes on a CPU). Keys: `fold=<k>` (the
left-out subject), `subject_folds=<k>` (subject-independent k-fold instead of LOSO), `seed=<s>`.

The paper's full text is not public: the architecture fields are this project's reading of the survey's
description and the training recipe is this project's choice (docs/models/mfem_bilstm.md, "Readings").
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
  """The network as read from the survey on the MEGC2019 composite, left-out subject 0."""
  c = common.base()
  c.dataset.name = 'megc2019'
  c.dataset.config = 'full'  # All 442 samples of the official list; 'casme2' / 'samm' / 'smic': one part.
  c.dataset.holdout_validation = False  # The final model of each fold: nothing is selected on the test subject.
  c.dataset.subject_folds = 0  # LOSO.
  c.dataset.num_frames = 8  # T frames of the clip (onset to offset in the micro builders).
  c.dataset.sampling = 'segments'  # One frame per T equal segments of the clip (their centres in evaluation).
  c.dataset.image_size = 224
  c.dataset.normalization = 'imagenet'  # The ResNet trunk's (torchvision weights).
  c.augment.crop_scale = (0.8, 1.0)
  c.augment.crop_ratio = (0.9, 1.1)
  c.augment.flip = True
  c.augment.rotation = 5.0
  c.augment.brightness = 0.1
  c.augment.contrast = 0.1
  c.augment.eval_crop = 1.0
  c.input.batch_size = 16
  c.input.eval_batch_size = 16

  c.model.name = 'mfem_bilstm'
  c.model.backbone = 'resnet34'
  c.model.width = 64
  c.model.stage_sizes = ()  # () = the backbone's (3, 4, 6, 3).
  c.model.stages = (2, 3, 4, 5)  # ResNet stages with an MFEM after them (conv2_x .. conv5_x).
  c.model.regions = 4  # K region-attention branches per MFEM.
  c.model.region_norm = 'softmax'  # A branch's map: softmax over positions, or 'sigmoid' normalised to sum 1.
  c.model.fusion_dim = 256  # Every level's concatenated region vectors are projected to this size.
  c.model.fim_heads = 1  # Attention heads between the levels.
  c.model.fusion = 'concat'  # The FIM's level tokens -> frame vector: 'concat' or 'mean'.
  c.model.lstm_hidden = 128  # Per direction.
  c.model.lstm_layers = 1
  c.model.lstm_dropout = 0.0
  c.model.dropout = 0.5
  c.model.head_init = 'lecun_normal'

  c.init.backbone_weights = ''  # torchvision ResNet-34 .safetensors/.npz; '' = random init.
  c.init.backbone_prefix = ''
  c.init.lstm_weights = ''  # PyTorch nn.LSTM(num_layers=lstm_layers, bidirectional=True) state dict.
  c.init.lstm_prefix = ''

  c.train.num_epochs = 50.0
  c.train.optimizer = 'adamw'
  c.train.weight_decay = 1e-4
  c.train.learning_rate = 1e-4
  c.train.schedule = 'cosine'
  c.train.warmup_epochs = 2.0
  c.train.grad_clip = 1.0
  c.train.label_smoothing = 0.0
  c.train.log_every_steps = 20
  c.train.eval_every_steps = 1000
  c.train.checkpoint_every_steps = 1000
  return c


def synthetic_config() -> ml_collections.ConfigDict:
  """The built-in micro-expression set (24 subjects, 216 clips, 64 px): the same structure at a tiny width,
  32-pixel frames and T = 4, so that a fold trains in minutes of CPU time."""
  c = paper_config()
  c.dataset.name = 'synthetic_expressions'
  c.dataset.config = 'micro'
  c.dataset.num_frames = 4
  c.dataset.image_size = 32
  c.dataset.normalization = 'unit'
  c.augment.rotation = 0.0
  c.input.batch_size = 32
  c.input.eval_batch_size = 32
  c.input.worker_count = 0  # 32-pixel frames decode fast enough in-process.
  c.model.width = 8
  c.model.stage_sizes = (1, 1, 1, 1)
  c.model.regions = 2
  c.model.fusion_dim = 16
  c.model.lstm_hidden = 16
  c.model.dropout = 0.2
  c.train.learning_rate = 3e-3
  c.train.num_epochs = 40.0
  c.train.warmup_epochs = 1.0
  return c


KEYS = common.MICRO_KEYS
ARG_KEYS = tuple(KEYS)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`<preset>[,fold=k][,seed=s][,subject_folds=k]`, e.g. `synthetic,subject_folds=4`."""
  return common.parse(arg, presets=common.micro_presets(paper_config, synthetic_config),
                      default='megc2019', keys=KEYS)
