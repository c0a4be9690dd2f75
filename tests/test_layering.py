"""ferjax's layering: no import cycle between its modules, no module reading another's `_private` names,
the data layer importing no model code, and the TFDS internals in use pinned in one adapter.

The import graph is read from the source (every `import` statement, also those inside functions), so a
cycle hidden behind a function-level import counts too.
"""

import ast
import hashlib
import inspect
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / 'ferjax'


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(REPO).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(p): p for p in sorted(PACKAGE.rglob('*.py'))}


def _resolve(name: str, modules) -> str | None:
  """The ferjax module `name` denotes (a module, or the package/module holding the attribute)."""
  while name and name not in modules:
    name = name.rpartition('.')[0]
  return name or None


def _imports(module: str, path: pathlib.Path, modules):
  """(imported ferjax module, names bound to ferjax modules in `module`, `from x import _y` hits)."""
  tree = ast.parse(path.read_text(), str(path))
  package = module if path.name == '__init__.py' else module.rpartition('.')[0]
  edges, bound, private = set(), {}, []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        if alias.name.split('.')[0] == 'ferjax':
          target = _resolve(alias.name, modules)
          edges.add(target)
          if alias.asname:
            bound[alias.asname] = target
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        parts = package.split('.')
        base = '.'.join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
      if base.split('.')[0] != 'ferjax':
        continue
      for alias in node.names:
        full = f'{base}.{alias.name}'
        if full in modules:  # A submodule.
          edges.add(full)
          bound[alias.asname or alias.name] = full
        else:
          edges.add(_resolve(base, modules))
          if alias.name.startswith('_') and not alias.name.startswith('__'):
            private.append(f'{module}: from {base} import {alias.name} (line {node.lineno})')
  edges.discard(module)
  edges.discard(None)
  return edges, bound, private, tree


def _graph():
  modules = _modules()
  graph, problems = {}, []
  for name, path in modules.items():
    edges, bound, private, tree = _imports(name, path, modules)
    graph[name] = edges
    problems += private
    for node in ast.walk(tree):
      if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
          and node.value.id in bound and bound[node.value.id] != name
          and node.attr.startswith('_') and not node.attr.startswith('__')):
        problems.append(f'{name}: {node.value.id}.{node.attr} (line {node.lineno}; '
                        f'{bound[node.value.id]} is another module)')
  return graph, problems


def _cycles(graph) -> list[list[str]]:
  """The strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_the_walker_sees_a_cycle_and_a_private_import(tmp_path, monkeypatch):
  """The checks below would catch what they claim: a two-module cycle through a function-level import,
  and a cross-module `_name` read by attribute and by `from ... import`."""
  package = tmp_path / 'ferjax'
  package.mkdir()
  (package / '__init__.py').write_text('')
  (package / 'a.py').write_text('from ferjax import b\n\ndef f():\n  return b._hidden\n')
  (package / 'b.py').write_text('def g():\n  from ferjax import a\n  return a\n_hidden = 1\n')
  (package / 'c.py').write_text('from ferjax.b import _hidden\n')
  monkeypatch.setattr(__import__(__name__), 'REPO', tmp_path)
  monkeypatch.setattr(__import__(__name__), 'PACKAGE', package)
  graph, problems = _graph()
  assert _cycles(graph) == [['ferjax.a', 'ferjax.b']]
  assert len(problems) == 2 and any('b._hidden' in p for p in problems)
  assert any('from ferjax.b import _hidden' in p for p in problems)


def test_no_import_cycle_between_ferjax_modules():
  graph, _ = _graph()
  assert len(graph) > 40
  assert _cycles(graph) == [], 'import cycles between ferjax modules'


def test_no_module_reads_another_modules_private_names():
  _, problems = _graph()
  assert problems == [], '\n'.join(problems)


def _reaches(graph, start: str) -> set[str]:
  seen, todo = set(), [start]
  while todo:
    v = todo.pop()
    for w in graph.get(v, ()):
      if w not in seen:
        seen.add(w)
        todo.append(w)
  return seen


def test_leaf_modules_and_the_data_layer():
  """The config checks, the normalisation constants and losses import no other ferjax module but the
  checks; the family registry reaches no model code; no data module reaches ferjax.models."""
  graph, _ = _graph()
  assert graph['ferjax.checks'] == set()
  assert graph['ferjax.normalization'] == set()
  assert _reaches(graph, 'ferjax.registry') <= {'ferjax.checks', 'ferjax.losses'}
  for name in graph:
    if name.startswith('ferjax.data'):
      reached = _reaches(graph, name)
      assert not any(m.startswith('ferjax.models') for m in reached), (name, sorted(reached))
  assert not any(m.startswith('ferjax.models') for m in _reaches(graph, 'ferjax.config'))


# The TFDS internals ferjax uses (ferjax/data/tfds_common.py:tfds_internals) as checked on this TFDS: a
# newer TFDS that changes them fails here, and the adapter must be rechecked against it (the round trip
# through tfds.load is tests/test_tfds_load.py, with TensorFlow installed).
CHECKED_TFDS = '4.9.10'
EXAMPLE_PARSER_SOURCE_SHA256 = 'd68a42c46306546e490b5a7a1068ae4d0a7c762c80574ee1d952780683c5a930'


def test_tfds_internals_are_the_checked_ones():
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from ferjax.data import tfds_common  # pylint: disable=import-outside-toplevel
  parser_class, source_class = tfds_common.tfds_internals()
  assert list(inspect.signature(parser_class).parameters) == ['example_specs']
  assert list(inspect.signature(parser_class.parse_example).parameters) == ['self', 'serialized_example']
  params = inspect.signature(source_class).parameters
  assert {'dataset_info', 'split', 'deserialize_method'} <= set(params)
  assert hasattr(tfds.decode.DeserializeMethod, 'RAW_BYTES')
  digest = hashlib.sha256(inspect.getsource(parser_class).encode()).hexdigest()
  if digest != EXAMPLE_PARSER_SOURCE_SHA256:
    pytest.fail(f'tensorflow_datasets {tfds.__version__} changed ExampleParser (checked on {CHECKED_TFDS}): '
                'recheck ferjax/data/tfds_common.py:ArrayRecordTfData against it, run '
                'tests/test_tfds_load.py with TensorFlow, then update EXAMPLE_PARSER_SOURCE_SHA256')


def test_built_in_families_register_without_being_named(tmp_path):
  """ferjax/models/__init__.py names no family module, and the registry finds every module of the package
  (in a fresh process that imports only the registry)."""
  graph, _ = _graph()
  assert not {m for m in graph['ferjax.models'] if m.startswith('ferjax.models.')}
  run = subprocess.run([sys.executable, '-c', 'from ferjax import registry; print(*registry.names())'],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120,
                       env={**os.environ, 'PYTHONPATH': str(REPO)})
  assert run.returncode == 0, run.stderr[-2000:]
  assert {'res_rbg', 'rfscnn', 'rmn'} <= set(run.stdout.split())
