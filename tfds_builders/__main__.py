"""``python -m tfds_builders <name> --manual_dir DIR``: build a ferjax dataset without TensorFlow."""

import sys

from tfds_builders import sequence_builder

if __name__ == '__main__':
  sys.exit(sequence_builder.main())
