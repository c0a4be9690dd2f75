r"""Parameter count of a config's model, per component: `python -m ferjax.models --config ...`.

Builds the model abstractly (`nnx.eval_shape`), so even the full-size model is counted in seconds.

  python -m ferjax.models --config configs/res_rbg.py --num_classes 7
"""

import sys

from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from ferjax import config as config_lib
from ferjax import models

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/<family>.py[:arg]).',
                                          lock_config=True)
_NUM_CLASSES = flags.DEFINE_integer('num_classes', 7, 'Classifier width.')


def main(argv):
  if len(argv) > 1 or _CONFIG.value is None:
    sys.exit('usage: python -m ferjax.models --config configs/<family>.py[:arg] [--num_classes N]')
  config = _CONFIG.value
  try:
    config_lib.validate(config)
  except config_lib.ConfigError as e:
    sys.exit(f'error: {e}')
  model = nnx.eval_shape(lambda: models.create_model(
      config.model, _NUM_CLASSES.value, rngs=nnx.Rngs(params=0)))
  counts = models.count_params(model)
  width = max(map(len, counts))
  print('\n'.join(f'{k:<{width}}  {v:>13,}' for k, v in counts.items()))


if __name__ == '__main__':
  app.run(main, flags_parser=config_lib.parse_flags)
