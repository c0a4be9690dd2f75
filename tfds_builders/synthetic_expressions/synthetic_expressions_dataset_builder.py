"""synthetic_expressions: procedurally drawn faces going from neutral to one of 7 expressions.

Generated in code (no download, no licence): every subject is a random cartoon identity
(`faces.Identity`) that shows each of the seven CK+ expressions once, as an onset -> apex sequence.
Splits `fold_0..fold_9` are by subject (subject i -> fold i % 10), like the CK+ and Oulu-CASIA
10-fold protocols, so a test fold only has unseen identities.

The `images` configs are a static-image dataset (for image models such as RMN, and FER2013-style runs):
each sequence's apex (last) frame alone, as a one-frame sequence with the parent's label, subject and
sequence id; the frame is exactly the last frame of the sequence the matching sequence config draws
(`images_tiny` = the apex frames of `tiny`). Splits `train` / `validation` / `test` like FER2013's, still by
subject: folds 0-7 -> train, fold 8 -> validation, fold 9 -> test.

The `micro` configs (`micro.py`) are micro-expression clips of the same identities: neutral -> a short,
low-amplitude negative / positive / surprise movement -> neutral, with `onset`, `apex` and `offset` frame
indices, `keypoints` (where the drawing puts the eyes, nose tip and mouth corners: `faces.keypoints`),
head jitter and noise; `clips_per_class` clips of each class per subject, one split per subject
(`subject_s000`, ...), so the protocol is leave-one-subject-out (or subject-independent k-fold with
`dataset.subject_folds`), as the MEGC2019 composite's.

Determinism: subject i's identity comes from `np.random.default_rng([BASE_SEED, 0, i])` and its
sequence of expression k from `np.random.default_rng([BASE_SEED, 1, i, k])`; nothing uses global
random state. Rebuilding the same version and config gives records whose every field (JPEG bytes
included) is byte-identical, whatever the number of worker processes. (The files' raw bytes can
differ: TFDS serialises the tf.train.Example feature map in a per-process order.) Subject i looks
the same in every config (only scaled).

Prepare it (no TensorFlow needed) with

  import tfds_builders.synthetic_expressions as se
  se.build('~/tensorflow_datasets', config='default')     # or config='tiny'

or `tfds build tfds_builders/synthetic_expressions --config=default --file_format=array_record`,
then read with `tfds.data_source('synthetic_expressions/default', split='fold_0', data_dir=...)`.
"""

import concurrent.futures
import dataclasses
import multiprocessing
import os

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from ferjax.data import tfds_common
from tfds_builders.synthetic_expressions import faces
from tfds_builders.synthetic_expressions import micro

# Changing it (or the drawing code) changes the data: bump the builder version when you do.
BASE_SEED = 20250101
NUM_FOLDS = 10


@dataclasses.dataclass(kw_only=True)
class SyntheticExpressionsConfig(tfds.core.BuilderConfig):
  """How much data to draw and at what size.

  Attributes:
    num_subjects: subjects s000, s001, ...; each gives 7 sequences. At least 10 (one per fold).
    image_size: frames are image_size x image_size RGB.
    min_frames / max_frames: sequence length, uniform in [min_frames, max_frames] per sequence.
    supersample: frames are drawn at image_size * supersample and shrunk (anti-aliases thin lines).
    jpeg_quality: OpenCV JPEG quality of the stored frames.
    apex_images: keep only each sequence's apex (last) frame, and split train (subjects of folds 0-7) /
      validation (fold 8) / test (fold 9) instead of fold_0..fold_9.
    micro: micro-expression clips (`micro.py`): classes negative / positive / surprise, features
      `onset` / `apex` / `offset` too, splits `subject_<id>`.
    clips_per_class: micro: clips of each class per subject.
    micro_amplitude: micro: range of the apex intensity, as a fraction of the macro set's apex.
  """
  num_subjects: int = 100
  image_size: int = 64
  min_frames: int = 8
  max_frames: int = 32
  supersample: int = 4
  jpeg_quality: int = 95
  apex_images: bool = False
  micro: bool = False
  clips_per_class: int = 3
  micro_amplitude: tuple[float, float] = (0.2, 0.35)


def subject_id(index: int) -> str:
  return f's{index:03d}'


def fold_of(index: int) -> int:
  """Subject index -> fold: i % 10."""
  return index % NUM_FOLDS


# apex_images configs: fold -> split (80 / 10 / 10 % of the subjects, as many validation as test).
IMAGE_SPLITS = {**{k: 'train' for k in range(NUM_FOLDS - 2)}, NUM_FOLDS - 2: 'validation',
                NUM_FOLDS - 1: 'test'}


def split_of(index: int, config: 'SyntheticExpressionsConfig') -> str:
  """Subject index -> split name: `fold_<i % 10>`, or train / validation / test for apex_images."""
  if config.micro:
    return f'subject_{subject_id(index)}'
  fold = fold_of(index)
  return IMAGE_SPLITS[fold] if config.apex_images else f'fold_{fold}'


def micro_examples(index: int, config: SyntheticExpressionsConfig) -> list[tuple[str, dict]]:
  """The micro-expression (key, example) pairs of subject `index`; clip j of class k draws from
  `np.random.default_rng([BASE_SEED, 2, index, k, j])`."""
  identity = faces.sample_identity(np.random.default_rng([BASE_SEED, 0, index]))
  subject = subject_id(index)
  background = faces.draw_background(identity, config.image_size, config.supersample)
  out = []
  for k, label in enumerate(micro.CLASSES):
    for j in range(config.clips_per_class):
      rng = np.random.default_rng([BASE_SEED, 2, index, k, j])
      num_frames = int(rng.integers(config.min_frames, config.max_frames + 1))
      frames, (onset, apex, offset) = micro.render_micro_clip(
          identity, label, num_frames, config.image_size, rng, amplitude=config.micro_amplitude,
          supersample=config.supersample, background=background)
      sequence_id = f'{subject}_{label}_{j}'
      out.append((sequence_id, {
          'frames': [tfds_common.encode_jpeg(f, quality=config.jpeg_quality) for f in frames],
          'label': label, 'subject': subject, 'sequence_id': sequence_id, 'num_frames': len(frames),
          'onset': onset, 'apex': apex, 'offset': offset,
          # The drawn landmarks at the resting pose (the clip's head jitter moves them by ~1 px).
          'keypoints': faces.keypoints(identity),
      }))
  return out


def micro_features(size: int) -> tfds.features.FeaturesDict:
  """The sequence features of DESIGN.md with the micro classes, plus onset / apex / offset indices and
  the face's keypoints."""
  return tfds.features.FeaturesDict({
      'frames': tfds.features.Sequence(
          tfds.features.Image(shape=(size, size, 3), encoding_format='jpeg')),
      'label': tfds.features.ClassLabel(names=list(micro.CLASSES)),
      'subject': tfds.features.Text(),
      'sequence_id': tfds.features.Text(),
      'num_frames': tfds.features.Scalar(np.int32),
      'onset': tfds.features.Scalar(np.int32),
      'apex': tfds.features.Scalar(np.int32),
      'offset': tfds.features.Scalar(np.int32),
      # (x, y) of the eyes, nose tip and mouth corners, fractions of the side (faces.KEYPOINTS).
      'keypoints': tfds.features.Tensor(shape=(len(faces.KEYPOINTS), 2), dtype=np.float32),
  })


def subject_examples(index: int, config: SyntheticExpressionsConfig) -> list[tuple[str, dict]]:
  """The 7 (key, example) pairs of subject `index` (micro configs: `micro_examples`): a pure
  function of (index, config)."""
  if config.micro:
    return micro_examples(index, config)
  identity = faces.sample_identity(np.random.default_rng([BASE_SEED, 0, index]))
  subject = subject_id(index)
  background = faces.draw_background(identity, config.image_size, config.supersample)
  out = []
  for k, expression in enumerate(faces.EXPRESSIONS):
    rng = np.random.default_rng([BASE_SEED, 1, index, k])
    num_frames = int(rng.integers(config.min_frames, config.max_frames + 1))
    keep = [num_frames - 1] if config.apex_images else None
    frames = faces.render_sequence(identity, expression, num_frames, config.image_size, rng,
                                   supersample=config.supersample, keep=keep,
                                   background=background)
    sequence_id = f'{subject}_{expression}'
    out.append((sequence_id, {
        'frames': [tfds_common.encode_jpeg(f, quality=config.jpeg_quality) for f in frames],
        'label': expression,
        'subject': subject,
        'sequence_id': sequence_id,
        'num_frames': len(frames),
    }))
  return out


class Builder(tfds_common.ArrayRecordTfData, tfds.core.GeneratorBasedBuilder):
  """DatasetBuilder for synthetic_expressions (see the module docstring)."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.',
                   '1.1.0': 'micro configs: the keypoints feature; the other configs are unchanged.'}
  BUILDER_CONFIGS = [
      SyntheticExpressionsConfig(
          name='default', description='100 subjects x 7 expressions, 64x64 px, 8-32 frames.'),
      SyntheticExpressionsConfig(
          name='tiny', description='20 subjects x 7 expressions, 32x32 px, 4-8 frames (for tests).',
          num_subjects=20, image_size=32, min_frames=4, max_frames=8),
      SyntheticExpressionsConfig(
          name='images', description=(
              'Static images: the apex frame of 200 subjects x 7 expressions at 48x48 px (FER2013 '
              'size), splits train / validation / test by subject (1120 / 140 / 140).'),
          num_subjects=200, image_size=48, apex_images=True),
      SyntheticExpressionsConfig(
          name='images_tiny', description=(
              'Static images for tests: the apex frames of `tiny` (20 subjects x 7, 32x32 px), '
              'train / validation / test (112 / 14 / 14).'),
          num_subjects=20, image_size=32, min_frames=4, max_frames=8, apex_images=True),
      SyntheticExpressionsConfig(
          name='micro', description=(
              'Micro-expressions: 24 subjects x 3 classes (negative / positive / surprise) x 3 clips, '
              '64x64 px, 10-16 frames, onset / apex / offset; one split per subject (LOSO).'),
          num_subjects=24, image_size=64, min_frames=10, max_frames=16, micro=True),
      SyntheticExpressionsConfig(
          name='micro_tiny', description='Micro-expressions for tests: 6 subjects x 3 classes x 1 clip, '
          '32x32 px, 6-8 frames.',
          num_subjects=6, image_size=32, min_frames=6, max_frames=8, micro=True, clips_per_class=1),
  ]
  DEFAULT_CONFIG_NAME = 'default'

  def __init__(self, *, file_format=None, workers: int | None = None, **kwargs):
    """Like any TFDS builder; file_format defaults to array_record (what `tfds.data_source` reads).

    workers: processes that draw subjects in parallel (default: min(4, CPU count); 1 = in-process).
    The output does not depend on it.
    """
    super().__init__(file_format=file_format or 'array_record', **kwargs)
    self._workers = workers

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's own lookup evaluates `importlib_resources.abc.Traversable` for package modules, and
    # that backport is only a dependency on Python < 3.9: here it raises ModuleNotFoundError.
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    if cfg.micro:
      if cfg.num_subjects < 2 or cfg.clips_per_class < 1 or cfg.min_frames < 6:
        raise ValueError('micro configs need num_subjects >= 2, clips_per_class >= 1 and min_frames >= 6; '
                         f'got {cfg.num_subjects}, {cfg.clips_per_class}, {cfg.min_frames}')
    elif cfg.num_subjects < NUM_FOLDS:
      raise ValueError(
          f'num_subjects must be >= {NUM_FOLDS} (one per fold), got {cfg.num_subjects}')
    if not 2 <= cfg.min_frames <= cfg.max_frames:
      raise ValueError(
          f'need 2 <= min_frames <= max_frames, got {cfg.min_frames}, {cfg.max_frames}')
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.split('\n\n')[0],
        features=(micro_features(cfg.image_size) if cfg.micro else
                  tfds_common.sequence_features(faces.EXPRESSIONS, cfg.image_size)),
        supervised_keys=('frames', 'label'),
        homepage='https://github.com/ferjax/ferjax',
        citation='',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Nothing to download.
    config = self.builder_config
    units = config.num_subjects if config.micro else NUM_FOLDS
    names = list(dict.fromkeys(split_of(i, config) for i in range(units)))  # in fold / subject order
    folds = [[i for i in range(config.num_subjects) if split_of(i, config) == name] for name in names]
    workers = self._workers or min(4, len(os.sched_getaffinity(0)))
    if workers <= 1:
      return {name: self._generate_examples(subjects) for name, subjects in zip(names, folds)}
    # One pool for the whole build, all subjects submitted up front so that workers draw ahead
    # while TFDS
    # writes a fold. Forkserver because forking a process with TFDS/absl threads running is unsafe.
    # Each subject is a pure function of its index and results are read in subject order, so
    # the data do
    # not depend on the number of workers.
    pool = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context('forkserver'))
    futures = [[pool.submit(subject_examples, i, self.builder_config) for i in subjects]
               for subjects in folds]
    remaining = [len(folds)]

    def fold_examples(fold_futures):
      try:
        for future in fold_futures:
          yield from future.result()
      finally:
        remaining[0] -= 1
        if remaining[0] == 0:
          pool.shutdown()

    return {name: fold_examples(f) for name, f in zip(names, futures)}

  def _generate_examples(self, subjects: list[int]):
    """In-process generation (workers=1); see `_split_generators` for the process pool."""
    for i in subjects:
      yield from subject_examples(i, self.builder_config)


def build(data_dir: str, config: str = 'default', workers: int | None = None) -> Builder:
  """Writes the dataset (ArrayRecord) under data_dir unless it is there; returns the builder."""
  builder = Builder(config=config, data_dir=os.path.expanduser(data_dir), workers=workers)
  builder.download_and_prepare(file_format='array_record')
  return builder
