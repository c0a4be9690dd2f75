"""The documentation cannot rot: README.md, CONTRIBUTING.md and docs/ are checked against the code.

- The README's quickstart (train -> predict on a video -> export) runs exactly as written, from a fresh
  working directory with the README's relative paths, with tiny-size overrides appended (`slow`).
- Every `python -m <module>` exists, every repository path (`configs/...`, `scripts/...`, `tests/x.py::name`,
  ...) exists, every `--flag` of a ferjax CLI is defined, every `--config.<section>.<field>` and backticked
  `<section>.<field>` is a field of a shipped config, and every `configs/<file>.py:<arg>` is accepted by
  that file's `get_config`.
- The README's install and test commands are the ones CI (`.ci/run`) runs.
- README.md stays short and no page, docstring or comment carries journal text.
"""

import glob
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, 'README.md')
README_MAX_LINES = 250
# Pages of user documentation.
PAGES = [README, os.path.join(REPO, 'CONTRIBUTING.md'), *sorted(glob.glob(
    os.path.join(REPO, 'docs', '**', '*.md'), recursive=True))]
# Journal text: what happened when, rather than what the software does (history lives in git).
JOURNAL = re.compile(rb'this session|last session|at commit|issue [0-9]|load average')
JOURNAL_FREE = ['README.md', 'CONTRIBUTING.md', 'docs', 'ferjax', 'configs', 'scripts', 'launch']
CONFIG_SECTIONS = ('dataset', 'input', 'augment', 'model', 'init', 'train', 'mesh', 'eval')
NOT_CONFIG_FIELDS = {'model.jax'}  # The file inside a .ferjax artifact.
QUICKSTART_HEADING = '## Quickstart'
# Appended to the quickstart's commands so that they run in seconds: the built-in dataset's `tiny`
# variant (20 subjects, 32 px, built once per test session by conftest.py), a tiny model and two steps.
TINY_TRAIN = {
    'dataset.config': 'tiny', 'dataset.num_frames': 4, 'dataset.image_size': 32,
    'input.batch_size': 8, 'input.eval_batch_size': 8, 'input.worker_count': 0,
    'train.num_steps': 2, 'train.warmup_epochs': 0.0, 'train.log_every_steps': 1,
    'train.eval_every_steps': 2, 'train.checkpoint_every_steps': 2,
}
TINY_MODELS = {'configs/res_rbg.py': {'model.width': 4, 'model.stage_sizes': '(1,1,1,1)', 'model.hidden': 8,
                                      'model.rbg_blocks': 1}}
TINY_VIDEO = ['--frames', '8', '--gap', '2', '--size', '64']


def _read(path: str) -> str:
  with open(path, encoding='utf-8') as f:
    return f.read()


def _fenced_blocks(markdown: str, language: str = 'bash') -> list[str]:
  return re.findall(rf'^```{language}\n(.*?)^```', markdown, flags=re.M | re.S)


def _section(markdown: str, heading: str) -> str:
  """The text from the line starting with `heading` to the next heading of the same level."""
  level = heading.split()[0]
  start = markdown.index('\n' + heading) + 1
  end = re.search(rf'^{level} ', markdown[start + len(heading):], flags=re.M)
  return markdown[start:start + len(heading) + end.start()] if end else markdown[start:]


def _commands(block: str) -> list[str]:
  """Shell commands of a fenced block: continuation lines joined, comments and blank lines dropped."""
  block = block.replace('\\\n', ' ')
  lines = (line.split(' #')[0].strip() for line in block.splitlines())
  return [line for line in lines if line and not line.startswith('#')]


def quickstart_commands() -> list[str]:
  return [c for block in _fenced_blocks(_section(_read(README), QUICKSTART_HEADING)) for c in _commands(block)]


def test_readme_is_short():
  lines = _read(README).count('\n')
  assert lines <= README_MAX_LINES, f'README.md has {lines} lines; keep it <= {README_MAX_LINES}, move detail to docs/'


def test_no_journal_text():
  found = []
  for top in JOURNAL_FREE:
    path = os.path.join(REPO, top)
    files = [path] if os.path.isfile(path) else [
        os.path.join(d, f) for d, subdirs, names in os.walk(path) for f in names if '__pycache__' not in d]
    for name in files:
      with open(name, 'rb') as f:
        for number, line in enumerate(f, 1):
          if JOURNAL.search(line):
            found.append(f'{os.path.relpath(name, REPO)}:{number}: {line.decode(errors="replace").strip()}')
  assert not found, 'journal text (say what the code does; history lives in git):\n' + '\n'.join(found)


def test_readme_install_and_test_commands_are_what_ci_runs():
  readme = _read(README)
  ci = [' '.join(line.replace('--quiet', '').split()) for line in _read(os.path.join(REPO, '.ci', 'run')).splitlines()]
  install = _commands(_fenced_blocks(_section(readme, '## Install'))[0])
  tests = _commands(_fenced_blocks(_section(readme, '## Tests'))[0])
  assert install == ["pip install -e '.[test]' -c constraints.txt"]
  assert 'python -m ' + install[0] in ci, 'README install command not in .ci/run'
  assert tests == ['python -m pytest -q -n 2']
  assert any(line == tests[0] or line.startswith(tests[0] + ' ') for line in ci), 'README test command not in .ci/run'


# ---------------------------------------------------------------------------------------------------------
# Every name the docs mention exists.


def _mentions(pattern: str) -> list[tuple[str, str]]:
  """(page, match) for every match of `pattern`'s first group in every page."""
  return [(os.path.relpath(page, REPO), m.group(1)) for page in PAGES for m in re.finditer(pattern, _read(page))]


def test_documented_modules_exist():
  missing = [(page, name) for page, name in _mentions(r'python -m ((?:ferjax|tfds_builders)(?:\.\w+)*)')
             if importlib.util.find_spec(name) is None]
  assert not missing, f'modules that do not exist: {missing}'


def _anchors(path: str) -> set[str]:
  """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped, spaces as hyphens."""
  if not path.endswith('.md'):
    return set()
  headings = re.findall(r'^#+ (.+)$', re.sub(r'^```.*?^```', '', _read(path), flags=re.M | re.S), flags=re.M)
  return {re.sub(r'[^\w\- ]', '', h.strip().lower()).replace(' ', '-') for h in headings}


def test_documented_paths_exist():
  tops = 'configs|scripts|launch|tests|tfds_builders|docs|ferjax|\\.ci'
  missing = []
  for page, path in _mentions(rf'(?<![\w/.-])((?:{tops})/[\w./-]*[\w])(?![\w<])'):
    if not os.path.exists(os.path.join(REPO, path)):
      missing.append((page, path))
  for page, mention in _mentions(r'(tests/\w+\.py::\w+)'):
    path, name = mention.split('::')
    if os.path.exists(os.path.join(REPO, path)):
      name_re = name.rstrip('_') + (r'\w*' if name.endswith('_') else r'\b')  # `test_sigterm_*` is a prefix.
      if not re.search(rf'^\s*(?:def|class) {name_re}', _read(os.path.join(REPO, path)), flags=re.M):
        missing.append((page, mention))
  for page, link, anchor in [(p, *m.split('#', 1)) if '#' in m else (p, m, '')
                             for p, m in _mentions(r'\]\(([^):]+)\)')]:
    target = os.path.join(os.path.dirname(os.path.join(REPO, page)), link) if link else os.path.join(REPO, page)
    if not os.path.exists(target):
      missing.append((page, link))
    elif anchor and anchor not in _anchors(target):
      missing.append((page, f'{link}#{anchor}'))
  assert not missing, f'paths or tests that do not exist: {missing}'


def test_code_points_to_existing_docs():
  """Docstrings and comments cite docs pages that exist and README sections that the README has."""
  readme_headings = set(re.findall(r'^#+ (.+)$', _read(README), flags=re.M))
  stale = []
  for pattern in ('ferjax/**/*.py', 'configs/*.py', 'scripts/*.py', 'tests/*.py'):
    for name in glob.glob(os.path.join(REPO, pattern), recursive=True):
      if os.path.samefile(name, __file__):
        continue
      source = _read(name)
      where = os.path.relpath(name, REPO)
      stale += [(where, page) for page in re.findall(r'(?<![\w/])(docs/[\w/.-]+\.md)', source)
                if not os.path.exists(os.path.join(REPO, page))]
      stale += [(where, f'README "{section}"') for section in re.findall(r'README[:,]? "([^"]+)"', source)
                if section not in readme_headings]
  assert not stale, f'references to docs that do not exist (the README is short; detail is in docs/): {stale}'


def _defined_flags() -> set[str]:
  """Every flag a ferjax CLI defines (absl DEFINE_*, argparse add_argument), plus absl's own."""
  names = {'help', 'helpfull', 'verbosity', 'v', 'alsologtostderr', 'logtostderr'}
  for pattern in ('ferjax/**/*.py', 'tfds_builders/**/*.py', 'scripts/*.py'):
    for name in glob.glob(os.path.join(REPO, pattern), recursive=True):
      source = _read(name)
      names.update(re.findall(r"DEFINE_\w+\(\s*'(\w+)'", source))
      names.update(n.replace('-', '_') for n in re.findall(r"add_argument\([^)]*?'--([\w-]+)'", source))
  names.update('no' + n for n in list(names))  # absl booleans: --noeval
  return names


def test_documented_cli_flags_exist():
  defined = _defined_flags()
  unknown = []
  for page in PAGES:
    for block in _fenced_blocks(_read(page)):
      for command in _commands(block):
        script = re.match(r'bash (launch/\S+)', command)
        if script:  # The launch scripts' own options come before `--` (the trainer's after it).
          options = _read(os.path.join(REPO, script.group(1)))
          unknown += [(os.path.relpath(page, REPO), flag) for flag in
                      re.findall(r'(?<!\S)(--[\w-]+)', command.split(' -- ')[0]) if f'{flag})' not in options]
          continue
        if not re.match(r'(?:taskset -c \d+ )?python (?:-m ferjax|-m tfds_builders|scripts/)', command):
          continue
        for flag in re.findall(r'(?<!\S)--([\w-]+)', command):
          if flag.replace('-', '_') not in defined:
            unknown.append((os.path.relpath(page, REPO), flag))
  assert not unknown, f'flags no ferjax CLI defines: {unknown}'


def _load_config_module(path: str):
  spec = importlib.util.spec_from_file_location(f'_docs_config_{os.path.basename(path)[:-3]}', path)
  module = importlib.util.module_from_spec(spec)
  sys.path.insert(0, os.path.dirname(path))
  try:
    spec.loader.exec_module(module)
  finally:
    sys.path.remove(os.path.dirname(path))
  return module


def _config_files() -> dict:
  return {os.path.relpath(p, REPO): _load_config_module(p) for p in sorted(glob.glob(os.path.join(REPO, 'configs', '*.py')))
          if hasattr(_load_config_module(p), 'get_config')}


def _flatten(config, prefix='') -> set[str]:
  keys = set()
  for key, value in config.items():
    keys.add(prefix + key)
    if hasattr(value, 'items'):
      keys |= _flatten(value, prefix + key + '.')
  return keys


def test_documented_config_fields_and_arguments_exist():
  configs = _config_files()
  fields = set()
  for module in configs.values():
    for preset in (None, *getattr(module, 'PRESETS', ())):
      fields |= _flatten(module.get_config(preset))
  sections = '|'.join(CONFIG_SECTIONS)
  unknown = [(page, f) for page, f in _mentions(rf'(?:--config\.|`)((?:{sections})\.\w+)\b(?![(*<\w])')
             if f not in fields | NOT_CONFIG_FIELDS]
  bad_args = []
  # Arguments with placeholders (`<row>`, `1|2|3`, `${fold}`) are templates, not arguments.
  for page, path, arg in [(p, *m.split(':', 1)) for p, m in _mentions(r'(configs/\w+\.py:[\w,=.]++)(?![<|$*{])')]:
    try:
      configs[path].get_config(arg.rstrip('.,'))
    except Exception as e:  # pylint: disable=broad-except
      bad_args.append((page, f'{path}:{arg}', str(e)))
  assert not unknown, f'config fields that no shipped config has: {unknown}'
  assert not bad_args, f'config arguments that get_config refuses: {bad_args}'


# ---------------------------------------------------------------------------------------------------------
# The quickstart runs as written.


def _tiny(command: str, data_dir: str) -> list[str]:
  """`command` split as the shell would, `python` as this interpreter, with tiny-size overrides appended."""
  args = shlex.split(command)
  assert args[0] == 'python', f'expected a Python command; found {command!r}'
  args[0] = sys.executable
  if args[1:3] == ['-m', 'ferjax.train']:
    model = TINY_MODELS.get(args[args.index('--config') + 1].split(':')[0], {})
    args += [f'--config.{k}={v}' for k, v in {**TINY_TRAIN, **model, 'dataset.data_dir': data_dir}.items()]
  elif args[1] == 'scripts/synthetic_video.py':
    args += TINY_VIDEO
  return args


def _link_repository(cwd) -> dict:
  """Links to the repository's configs/ and scripts/ in `cwd`, so that the docs' relative paths resolve as
  in a clone while everything the commands write lands in `cwd`; the environment to run them in."""
  for name in ('configs', 'scripts'):
    os.symlink(os.path.join(REPO, name), cwd / name)
  return {**os.environ, 'PYTHONPATH': REPO + os.pathsep + os.environ.get('PYTHONPATH', '')}


def _run(args: list[str], cwd, env) -> None:
  result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, f'{shlex.join(args)}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}'


def test_quickstart_commands_are_train_predict_export():
  commands = quickstart_commands()
  assert [shlex.split(c)[1:3] for c in commands] == [
      ['-m', 'ferjax.train'], ['scripts/synthetic_video.py', 'demo.avi'], ['-m', 'ferjax.predict'],
      ['-m', 'ferjax.export']], commands


@pytest.mark.slow
def test_quickstart_runs_as_written(tmp_path, synthetic_tiny):
  env = _link_repository(tmp_path)
  for command in quickstart_commands():
    _run(_tiny(command, synthetic_tiny), tmp_path, env)
  run = tmp_path / 'runs' / 'quickstart'
  report = json.loads((run / 'report.json').read_text())
  assert report['selection']['step'] == 2
  predictions = json.loads((tmp_path / 'demo.json').read_text())
  (clip,) = predictions['results']
  assert clip['label'] in report['class_names'] and abs(sum(clip['probs'].values()) - 1) < 1e-4
  assert (tmp_path / 'demo_frame.png').stat().st_size > 0
  from ferjax import serving  # pylint: disable=g-import-not-at-top
  model = serving.load(str(tmp_path / 'quickstart.ferjax'))
  assert list(model.class_names) == report['class_names']


@pytest.mark.slow
def test_extending_example_trains(tmp_path, synthetic_tiny):
  """docs/extending.md's family-in-a-config-file, saved as the page says, trains with its command."""
  page = _read(os.path.join(REPO, 'docs', 'extending.md'))
  (source,) = _fenced_blocks(page, 'python')
  (command,) = [c for block in _fenced_blocks(page) for c in _commands(block)]
  env = _link_repository(tmp_path)
  (tmp_path / 'toy.py').write_text(source)
  _run(_tiny(command, synthetic_tiny), tmp_path, env)
  report = json.loads((tmp_path / 'runs' / 'toy' / 'report.json').read_text())
  assert report['selection']['step'] == 2
  logged = [json.loads(line) for line in (tmp_path / 'runs' / 'toy' / 'metrics.jsonl').read_text().splitlines()]
  assert any('loss/activity' in record for record in logged)
