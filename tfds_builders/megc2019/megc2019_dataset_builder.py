"""The MEGC2019 composite ("Full"): CASME II, SAMM and SMIC-HS relabelled negative / positive / surprise.

The samples are those of the official list (``megc2019_composite.csv`` beside this file: ``dataset, subject,
sample, label``; 442 samples of 68 subjects: CASME II 145, SMIC 164, SAMM 133), labelled as the list says,
not re-derived from the sheets (a re-derivation gives slightly different sets). The three copies sit
anywhere below the manual dir, each in its own layout (``tfds_builders/casme2``, ``samm``, ``smic``); their
records are built exactly as those builders build them (frames onset to offset, ``onset`` / ``apex`` /
``offset``, SMIC's apex stand-in at ``apex_position``). The list writes SMIC samples ``s01_ne_01`` for the
folder ``s1/micro/negative/s1_ne_01``; both spellings match.

Subjects are ``casme2/sub01``, ``smic/s01``, ``samm/006`` (splits ``subject_casme2_sub01`` ...: leave-one-
subject-out over 68 subjects); ``source_dataset`` names each sample's dataset, for UF1 / UAR per dataset
(Full / SMIC / CASME II / SAMM) in ``ferjax.crossval``'s table. A listed sample that the user's copy lacks (or
a whole dataset that is absent) is never dropped silently: the build prints a warning with the count and
names, and ``info.metadata['missing']`` / ``['num_missing']`` record them; a listed sample whose row or frames
are unusable is in ``info.metadata['skipped']`` with the reason, as in the single-dataset builders.

Configs: ``full`` (all three), ``casme2``, ``samm``, ``smic`` (one dataset's part of the list: the
literature's per-dataset protocol, three classes).
"""

import csv
import dataclasses
from pathlib import Path

from absl import logging
import tensorflow_datasets as tfds

from tfds_builders import micro_builder as mb
from tfds_builders import sequence_builder as sb
from tfds_builders.casme2 import layout as casme2_layout
from tfds_builders.samm import layout as samm_layout
from tfds_builders.smic import layout as smic_layout

CLASSES = ('negative', 'positive', 'surprise')
LIST_FILE = Path(__file__).resolve().parent / 'megc2019_composite.csv'

EXPECTED_LAYOUT = f"""\
Any of the three datasets, each in its own layout, at any depth below the manual dir:
CASME II:
{casme2_layout.EXPECTED_LAYOUT}SAMM:
{samm_layout.EXPECTED_LAYOUT}SMIC-HS:
{smic_layout.EXPECTED_LAYOUT}"""


@dataclasses.dataclass(eq=False)
class Megc2019Config(mb.MicroConfig):
  """Composite config.

  Attributes:
    datasets: which of 'casme2', 'samm', 'smic' the list's samples come from.
    list_file: the composite's list (``dataset,subject,sample,label``); None: the official list shipped here.
  """
  datasets: tuple[str, ...] = mb.DATASETS
  list_file: str | None = None


def read_list(path: str | Path) -> list[dict[str, str]]:
  """The rows of the composite's list (with their line numbers under 'line')."""
  with open(path, newline='', encoding='utf-8-sig') as f:
    rows = list(csv.DictReader(f))
  needed = {'dataset', 'subject', 'sample', 'label'}
  if not rows or not needed <= set(rows[0]):
    raise sb.BuildError(f'{path}: expected a CSV with the header dataset,subject,sample,label; found '
                        f'{sorted(rows[0]) if rows else "no rows"}')
  for line, row in enumerate(rows, 2):
    row['line'] = line
    if row['dataset'] not in mb.DATASETS or row['label'] not in CLASSES:
      raise sb.BuildError(f'{path} line {line}: dataset must be one of {mb.DATASETS} and label one of '
                          f'{CLASSES}; found {row["dataset"]!r}, {row["label"]!r}')
  return rows


def list_key(row: dict[str, str]) -> str:
  """The key of a listed sample in its dataset's clips (``Clip.key``)."""
  if row['dataset'] == 'casme2':
    return f'{row["subject"]}/{row["sample"]}'
  if row['dataset'] == 'smic':
    return smic_layout.sample_name(row['sample']) or row['sample']
  return row['sample']


class Builder(mb.MicroBuilder):
  """MEGC2019 composite: 442 clips of 68 subjects, negative / positive / surprise, LOSO splits."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  CLASS_NAMES = CLASSES
  EXPECTED_LAYOUT = EXPECTED_LAYOUT
  HOMEPAGE = 'https://facial-micro-expressiongc.github.io/MEGC2019/'
  BUILDER_CONFIGS = [
      Megc2019Config(name='full', description='All 442 samples of the official list (68 subjects).'),
      *[Megc2019Config(name=d, datasets=(d,), description=f'The list\'s {d} samples only.')
        for d in mb.DATASETS],
  ]
  DEFAULT_BUILDER_CONFIG_NAME = 'full'
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
The composite is built from your copies of CASME II, SAMM and SMIC (each licensed by its authors; see
tfds_builders/casme2, samm and smic). Put them below one manual dir:
{EXPECTED_LAYOUT}
Then: python -m tfds_builders megc2019 --manual_dir <that dir>
"""

  def _find_clips(self, manual_dir: Path):
    config = self.builder_config
    unknown = sorted(set(config.datasets) - set(mb.DATASETS))
    if unknown:
      raise sb.BuildError(f'megc2019: datasets must be among {mb.DATASETS}; found {unknown}')
    listed = [r for r in read_list(config.list_file or LIST_FILE) if r['dataset'] in config.datasets]
    finders = {
        'casme2': lambda: casme2_layout.find_clips(manual_dir, config.use_released_crops),
        'samm': lambda: samm_layout.find_clips(manual_dir, config.use_released_crops),
        'smic': lambda: smic_layout.find_clips(manual_dir, config.use_released_crops,
                                               config.apex_position),
    }
    clips, skips, self._absent = {}, {}, {}
    for dataset in config.datasets:
      try:
        found, skipped = finders[dataset]()
      except (sb.ManualDirError, mb.SheetError) as e:
        self._absent[dataset] = str(e).split('\n')[0]
        print(f'megc2019: WARNING: no usable {dataset} copy: {self._absent[dataset]}', flush=True)
        continue
      clips.update({(dataset, c.key): c for c in found})
      skips.update({(dataset, s.sequence_id): s for s in skipped})
    if not clips:
      raise sb.manual_dir_error('megc2019', manual_dir, EXPECTED_LAYOUT,
                                problem='found none of CASME II, SAMM and SMIC-HS')
    self._labels, self._missing, kept, unusable = {}, [], [], []
    for row in listed:
      key = (row['dataset'], list_key(row))
      name = f'{row["dataset"]}/{row["subject"]}/{row["sample"]}'
      if key in clips:
        clip = clips[key]
        self._labels[key] = row['label']
        kept.append(clip)
      elif key in skips:
        s = skips[key]
        unusable.append(mb.Skip(name, s.path, f'{s.reason} (list line {row["line"]})', s.row))
      else:
        self._missing.append(name)
    if self._missing:
      shown = ', '.join(self._missing[:20]) + (' ...' if len(self._missing) > 20 else '')
      print(f'megc2019: WARNING: {len(self._missing)} of the {len(listed)} listed samples are not in your '
            f'copy (listed in info.metadata["missing"]): {shown}', flush=True)
      logging.warning('megc2019: %d listed samples missing: %s', len(self._missing), shown)
    return kept, unusable

  def _label(self, clip: mb.Clip) -> str:
    return self._labels[(clip.dataset, clip.key)]

  def _subject(self, clip: mb.Clip) -> str:
    return f'{clip.dataset}/{clip.subject}'

  def _sequence_id(self, clip: mb.Clip) -> str:
    return f'{clip.dataset}/{clip.key}'

  def _extra_metadata(self, sources):
    by_dataset = {d: sum(s.sequence_id.startswith(d + '/') for s in sources) for d in mb.DATASETS}
    return {**super()._extra_metadata(sources), 'num_missing': len(self._missing),
            'missing': self._missing, 'absent_datasets': self._absent, 'samples_by_dataset': by_dataset,
            'list_file': str(self.builder_config.list_file or LIST_FILE.name)}
