"""What the pipeline builds for a config: the loaders of a run, from the config and the family's inputs.

The trainer and `python -m ferjax.benchmark --input` build their loaders here, so the benchmark measures
exactly the input path training uses. The data layer imports no model code: the caller passes the inputs
its family declares (`registry.get_family(config.model.name).inputs`).
"""

from collections.abc import Sequence

import ml_collections
import numpy as np

from ferjax.data import augment, inputs as inputs_lib, pipeline


def input_args(config: ml_collections.ConfigDict, inputs: Sequence[str]) -> dict:
  """Keyword arguments of `pipeline.train_loader` / `eval_batches` that the config implies for a model
  with `inputs` ('frames' and registered inputs)."""
  inputs = inputs_lib.check(tuple(dict.fromkeys(inputs)))
  return dict(num_frames=config.dataset.num_frames, image_size=config.dataset.image_size,
              options=augment.AugmentOptions.from_config(config.augment), inputs=inputs,
              sampling_mode=config.dataset.sampling, flow=config.dataset.get('flow', 'dis'),
              input_options=inputs_lib.options(config, inputs))


def train_loader(config, source, shard: tuple[int, int, int], worker_count: int,
                 inputs: Sequence[str] = ('frames',)):
  """The endless training loader of `source` for host `shard = (index, count, local batch size)`."""
  return pipeline.train_loader(
      source, batch_size_per_host=shard[2], seed=config.seed, worker_count=worker_count,
      shard_index=shard[0], shard_count=shard[1], **input_args(config, inputs))


def eval_batches(config, source, shard: tuple[int, int, int], inputs: Sequence[str] = ('frames',), *,
                 validation: bool = False):
  """One evaluation pass over `source` for host `shard = (index, count, local batch size)`: the rows
  of `config.eval` (windows or temporal views x test-time augmentation copies or spatial views) of every
  record, made by `config.input.worker_count` grain workers. `validation=True` uses
  `eval.validation_tta_copies` (model selection, plateau, early stopping) instead of `eval.tta_copies`, and
  no test views (`eval.temporal_views`, `eval.spatial_views` score the reported test split only)."""
  tta_copies = config.eval.validation_tta_copies if validation else config.eval.tta_copies
  views = {} if validation else dict(temporal_views=config.eval.get('temporal_views', 1),
                                     spatial_views=config.eval.get('spatial_views', 1))
  return pipeline.eval_batches(source, batch_size_per_host=shard[2], shard_index=shard[0],
                               shard_count=shard[1], worker_count=config.input.worker_count,
                               windows=config.eval.windows, tta_copies=tta_copies, **views,
                               **input_args(config, inputs))


def random_batch(config, batch_size: int, num_classes: int, rng: np.random.Generator,
                 inputs: Sequence[str] = ('frames',)) -> dict:
  """A batch of the config's shape and `inputs` with random uint8 frames (for the step benchmark)."""
  t, size = config.dataset.num_frames, config.dataset.image_size
  batch = {'frames': rng.integers(0, 256, (batch_size, t, size, size, 3), dtype=np.uint8),
           'label': rng.integers(0, num_classes, (batch_size,)).astype(np.int32)}
  return {**batch, **inputs_lib.random_values(inputs, batch_size, t, size, rng)}
