"""A run's workdir: the lock that keeps two runs apart, and the config history.

Lock: `<workdir>/run.lock` holds the pid, host and start time of the run using the workdir, and that run
holds an exclusive `flock` on it. A second run stops at once and names the holder; the lock of a process
that died (SIGKILL, power loss) is released by the kernel, and the next run takes it over with a message.
Remote workdirs (gs://) cannot be flock-ed; there the lock file is advisory (written, reported, not enforced).

Config history: `config.json` is the config of the latest start; `config_history.jsonl` gets one line per
start (time, step resumed from, the full config and the fields that changed), so nothing is lost when an
allowed field (e.g. the number of epochs) changes on resume.
"""

import datetime
import fcntl
import json
import os
import socket
from collections.abc import Mapping
from typing import Any

from etils import epath

LOCK_NAME = 'run.lock'


class WorkdirError(RuntimeError):
  """The workdir cannot be used (in use by another run, not a directory, not writable)."""


def _now() -> str:
  return datetime.datetime.now().astimezone().isoformat(timespec='seconds')


def prepare(workdir: epath.Path) -> None:
  """Creates `workdir` or checks that it is a writable directory; raises WorkdirError otherwise."""
  if workdir.exists() and not workdir.is_dir():
    raise WorkdirError(f'--workdir {workdir} is a file, not a directory; choose another path')
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise WorkdirError(f'cannot create --workdir {workdir}: {e.strerror or e}') from None
  if '://' not in os.fspath(workdir) and not os.access(workdir, os.W_OK | os.X_OK):
    raise WorkdirError(f'--workdir {workdir} is not writable by this user; choose another path')


class RunLock:
  """Exclusive use of a local workdir by one process; a context manager."""

  def __init__(self, workdir: epath.Path):
    self.path = workdir / LOCK_NAME
    self._file = None
    self.took_over: str | None = None  # The stale holder's description, if there was one.

  def acquire(self) -> 'RunLock':
    if '://' in os.fspath(self.path):
      self.path.write_text(self._holder())
      return self
    f = open(self.path, 'a+')
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or 'another process'
      f.close()
      raise WorkdirError(
          f'{self.path.parent} is in use by {holder}; wait for that run to end or stop it, or use another '
          '--workdir') from None
    f.seek(0)
    previous = f.read().strip()
    if previous:  # The file outlived its holder: that process died without releasing the workdir.
      self.took_over = previous
    f.seek(0)
    f.truncate()
    f.write(self._holder())
    f.flush()
    self._file = f
    return self

  @staticmethod
  def _holder() -> str:
    return f'process {os.getpid()} on {socket.gethostname()} (started {_now()})'

  def release(self) -> None:
    if self._file is not None:
      self._file.seek(0)
      self._file.truncate()  # An empty file marks a clean exit.
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None

  def __enter__(self) -> 'RunLock':
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def record_config(workdir: epath.Path, config: Mapping[str, Any], *, resumed_from: int | None,
                  changes: list[str]) -> None:
  """Writes config.json (this start's config) and appends this start to config_history.jsonl."""
  (workdir / 'config.json').write_text(json.dumps(dict(config), indent=2))
  entry = {'time': _now(), 'resumed_from_step': resumed_from, 'changes': changes,
           'config': dict(config)}
  with (workdir / 'config_history.jsonl').open('a') as f:
    f.write(json.dumps(entry) + '\n')
