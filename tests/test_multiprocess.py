"""Multi-host training for real: `python -m ferjax.train` started as 2 JAX processes on one machine.

The processes meet through a localhost coordinator (`jax.distributed.initialize()`; CPU collectives
over gloo, JAX's default), each with one CPU device, as the hosts of a pod would: each reads its
own part of the data, the global batch is assembled with `jax.make_array_from_process_local_data`,
both write their shards of one Orbax checkpoint in the shared workdir, and process 0 writes metrics
and the report.

Each host trains on its own records (host h shuffles records h::2 of the training split), so the
global batches of a 2-process run are not those of a plain 1-process run. The reference is one
process with 2 (simulated) CPU devices fed the same global batches -- host 0's rows, then host 1's
-- built from the same loaders: the same partitioned program on the same data. A sum over 2 devices
is the same addition whichever way the collective runs it, so the 2-process run must match it bit
for bit. (Against 1 device the reduction order changes; tests/test_sharding.py compares 1 and 8
devices up to rounding.)

The reference runs in a subprocess, at the same time as the job, because the device count must be
set before JAX starts.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# The configuration of tests/test_train.py.
from test_train import TINY, _cli_args, _config  # noqa: E402

NUM_PROCESSES = 2
NUM_STEPS = 4
# TINY, 4 steps; checkpoints at steps 2 and 4; validation at the last step only. SGD, as in
# tests/test_sharding.py: should the two runs ever differ in the last bit, Adam (which divides by
# tiny second moments) would blow that up to the size of the learning rate, SGD would not.
OVERRIDES = {'train.num_steps': NUM_STEPS, 'train.checkpoint_every_steps': 2,
             'train.log_every_steps': 2, 'train.eval_every_steps': 1000,
             'train.optimizer': 'sgd', 'train.learning_rate': 0.1, 'train.grad_clip': 1.0}
# The job takes 40-140 s on a busy 2-core machine, over 300 s when 8 such test runs share its 2 cores;
# only a hang comes near this.
TIMEOUT_S = 600


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _env(**extra) -> dict[str, str]:
  # Without the session's compilation cache (tests/conftest.py): with it, on a heavily loaded machine,
  # process 0 once waited more than Gloo's 30 s for its peer at the first collective (cause not
  # established). Each process compiles its programs, as before the cache.
  # One CPU device per process, whatever the caller simulates; the session's other XLA flags kept.
  flags = [f for f in os.environ.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'JAX_ENABLE_COMPILATION_CACHE': 'false',
         'XLA_FLAGS': ' '.join(flags), **extra}
  return env


def _start_job(data_dir, workdir, logs, overrides=None) -> list[subprocess.Popen]:
  """Starts processes 0..N-1 of one job; the environment is all ferjax.train needs to meet."""
  overrides = OVERRIDES if overrides is None else overrides
  port = _free_port()
  processes = []
  for i in range(NUM_PROCESSES):
    env = _env(JAX_COORDINATOR_ADDRESS=f'127.0.0.1:{port}', JAX_NUM_PROCESSES=str(NUM_PROCESSES),
               JAX_PROCESS_ID=str(i))
    with open(logs[i], 'w') as log:
      processes.append(subprocess.Popen(_cli_args(data_dir, workdir, **overrides), cwd=REPO,
                                        env=env, stdout=log, stderr=subprocess.STDOUT))
  return processes


def _kill_survivors(processes) -> None:
  """Kills what is still running (a process blocked in a collective waits forever)."""
  for p in processes:
    if p.poll() is None:
      p.kill()
      p.wait()


def _wait(processes, logs, names) -> list[str]:
  """Waits for all; if one fails or time runs out, kills the rest and fails with the output."""
  deadline = time.time() + TIMEOUT_S
  try:
    # A failed process leaves its peer blocked in a collective: stop waiting at the first failure.
    while (any(p.poll() is None for p in processes) and time.time() < deadline
           and all(p.poll() in (None, 0) for p in processes)):
      time.sleep(0.2)
  finally:
    _kill_survivors(processes)
  outputs = [open(log).read() for log in logs]
  for name, p, out in zip(names, processes, outputs):
    assert p.returncode == 0, f'{name} exited with {p.returncode}:\n{out[-4000:]}'
  return outputs


def reference_run(data_dir: str, out_dir: str) -> None:
  """What train_and_evaluate does, in one process over all its devices, fed with the global
  batches of NUM_PROCESSES hosts.

  Saves the final state as an Orbax checkpoint in out_dir/checkpoints/<step>/state, and the per-step
  losses and the test report in out_dir/reference.json.
  """
  from flax import nnx
  from ferjax import models, sharding, steps, train
  from ferjax.data import datasets, protocols

  config = _config(data_dir, **OVERRIDES)
  dataset = datasets.prepare(config.dataset)
  splits = protocols.splits_for(dataset.split_names, config.dataset.fold,
                                config.dataset.holdout_validation)
  mesh = sharding.make_mesh()
  local = config.input.batch_size // NUM_PROCESSES
  host_batches = [iter(train._loaders(config, dataset, splits, (h, NUM_PROCESSES, local, local))[0])
                  for h in range(NUM_PROCESSES)]
  steps_per_epoch = max(len(dataset.source(splits.train)) // config.input.batch_size, 1)
  optimizer = steps.Optimizer.from_config(config.train, NUM_STEPS,
                                          round(config.train.warmup_epochs * steps_per_epoch))
  # As train._set_up does without weight files: the state created by one jitted init in its shardings,
  # the optimizer's numbers passed to the train step.
  def make_model(rngs):
    return models.create_model(config.model, len(dataset.class_names), rngs=rngs)
  graphdef, state, state_sharding = steps.init_sharded_state(make_model, optimizer.tx, config.seed,
                                                             mesh)
  batch_sharding = sharding.batch_sharding(mesh)
  normalization = config.dataset.normalization
  train_fn = steps.jit_train_step(graphdef, optimizer,
                                  models.get_family(config.model.name).losses(config),
                                  state_sharding, batch_sharding, sharding.replicated(mesh),
                                  normalization=normalization)
  losses = []
  for _ in range(NUM_STEPS):
    # The job's global batch: make_array_from_process_local_data puts process 0's rows first.
    parts = [next(batches) for batches in host_batches]
    batch = {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}
    state, step_metrics = train_fn(state, sharding.global_batch(batch, mesh))
    losses.append(float(step_metrics['loss']))
  _, eval_batches = train._loaders(config, dataset, splits,
                                   (0, 1, local, config.input.eval_batch_size))
  eval_fn = steps.jit_eval_step(graphdef, state_sharding, batch_sharding, normalization=normalization)
  report = train.evaluate(eval_fn, state, eval_batches(splits.test), mesh, dataset.class_names)
  manager = ocp.CheckpointManager(os.path.join(out_dir, 'checkpoints'),
                                  item_handlers={'state': ocp.StandardCheckpointHandler()})
  manager.save(NUM_STEPS, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
  manager.close()
  with open(os.path.join(out_dir, 'reference.json'), 'w') as f:
    json.dump({'num_devices': jax.device_count(), 'losses': losses, 'report': report,
               'num_test': len(dataset.source(splits.test))}, f)


def _restore_state(workdir, step):
  """The `state` item of a checkpoint, restored onto one device (whatever topology saved it)."""
  manager = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'),
                                  item_handlers={'state': ocp.StandardCheckpointHandler()})
  try:
    metadata = manager.item_metadata(step)['state']
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                            metadata.tree if hasattr(metadata, 'tree') else metadata)
    return manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))['state']
  finally:
    manager.close()


def test_two_processes_train_exactly_like_one_process_on_the_same_global_batches(tmp_path,
                                                                               synthetic_tiny):
  # Prepared before the processes start: there is nothing left for them to build or wait for.
  data_dir = synthetic_tiny
  workdir, reference_dir = tmp_path / 'run', tmp_path / 'reference'
  logs = [tmp_path / f'process_{i}.log' for i in range(NUM_PROCESSES)]
  logs.append(tmp_path / 'reference.log')
  processes = _start_job(data_dir, workdir, logs)
  with open(logs[-1], 'w') as log:
    processes.append(subprocess.Popen(
        [sys.executable, __file__, data_dir, str(reference_dir)], cwd=REPO, stdout=log,
        stderr=subprocess.STDOUT,
        env=_env(XLA_FLAGS=f"{_env()['XLA_FLAGS']} --xla_force_host_platform_device_count={NUM_PROCESSES}")))
  outputs = _wait(processes, logs, ['process 0', 'process 1', 'the reference run'])
  reference = json.loads((reference_dir / 'reference.json').read_text())
  assert reference['num_devices'] == NUM_PROCESSES

  assert f'2 process(es); global batch {TINY["input.batch_size"]}' in outputs[0], outputs[0][-3000:]
  assert "Mesh {'data': 2, 'fsdp': 1} over 2 cpu devices" in outputs[0]
  assert 'Report:' in outputs[0] and 'Report:' not in outputs[1]

  # The test split was evaluated exactly once over: each host its half, padded to 2 batches of 4,
  # gathered, padding dropped (14 sequences in 16 slots).
  report = json.loads((workdir / 'report.json').read_text())
  assert report['num_examples'] == reference['num_test'] == 14
  assert np.array(report['confusion_matrix']).sum() == 14
  assert report['confusion_matrix'] == reference['report']['confusion_matrix']
  # Only process 0 writes metrics: one test record, and the logged training losses of the reference.
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [r['split'] for r in records].count('test') == 1
  losses = reference['losses']
  np.testing.assert_allclose([r['loss'] for r in records if r['split'] == 'train'],
                             [np.mean(losses[0:2]), np.mean(losses[2:4])], rtol=1e-6)

  # One checkpoint per saved step, holding both hosts' iterator positions.
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2', '4']
  for i in range(NUM_PROCESSES):
    data_state = workdir / 'checkpoints' / '4' / 'data' / f'process_{i}-of-{NUM_PROCESSES}.json'
    assert json.loads(data_state.read_text()) == {'next_batch': NUM_STEPS}
  # The job's final train state (restored onto 1 device) is the reference's, bit for bit.
  final, expected = _restore_state(workdir, NUM_STEPS), _restore_state(reference_dir, NUM_STEPS)
  assert int(final['step']) == NUM_STEPS
  flat, flat_expected = (jax.tree_util.tree_flatten_with_path(s)[0] for s in (final, expected))
  assert [p for p, _ in flat] == [p for p, _ in flat_expected] and len(flat) > 100
  for (path, got), (_, want) in zip(flat, flat_expected):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want),
                                  err_msg=jax.tree_util.keystr(path))
  # Steps 3-4 moved the parameters: the comparison is not one of untouched arrays.
  halfway = _restore_state(workdir, 2)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(halfway['params']),
                                                      jax.tree.leaves(final['params'])))


def test_sigterm_on_one_host_stops_every_host_at_the_same_step(tmp_path, synthetic_tiny):
  """A preemption notice reaches one host only: JAX's preemption service brings both to one step,
  both save that step together and exit with the requeue code; nobody hangs in a collective."""
  from ferjax import train
  data_dir = synthetic_tiny
  workdir = tmp_path / 'run'
  logs = [tmp_path / f'process_{i}.log' for i in range(NUM_PROCESSES)]
  overrides = {**OVERRIDES, 'train.num_steps': 400, 'train.checkpoint_every_steps': 1000,
               'train.log_every_steps': 1}
  processes = _start_job(data_dir, workdir, logs, overrides)
  try:
    deadline = time.time() + TIMEOUT_S
    while not (workdir / 'metrics.jsonl').exists():  # Process 0 logged step 1: both are training.
      assert all(p.poll() is None for p in processes), [open(log).read()[-3000:] for log in logs]
      assert time.time() < deadline, 'training did not start'
      time.sleep(0.1)
    processes[1].send_signal(signal.SIGTERM)  # Host 1 only.
    for p in processes:
      p.wait(timeout=120)
  finally:
    _kill_survivors(processes)
  outputs = [open(log).read() for log in logs]
  for i, p in enumerate(processes):
    assert p.returncode == train.EXIT_PREEMPTED, f'process {i}: {p.returncode}\n{outputs[i][-3000:]}'
  saved = sorted(int(d) for d in os.listdir(workdir / 'checkpoints') if d.isdigit())
  assert len(saved) == 1 and 0 < saved[0] < 400, saved
  # Both hosts' iterator positions are in that one checkpoint: they stopped at the same step.
  for i in range(NUM_PROCESSES):
    data_state = workdir / 'checkpoints' / str(saved[0]) / 'data' / f'process_{i}-of-{NUM_PROCESSES}.json'
    assert json.loads(data_state.read_text()) == {'next_batch': saved[0]}


if __name__ == '__main__':
  from absl import flags
  flags.FLAGS.mark_as_parsed()  # grain reads absl flags.
  reference_run(*sys.argv[1:])
