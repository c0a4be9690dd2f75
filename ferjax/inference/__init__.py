"""Inference on trained runs: the code behind `ferjax.predict` and `ferjax.export`.

* `run`: reading a run: the checkpoint it selects (best_checkpoint/ when there is one, else the latest),
  its config, its model family (imported as the run's run.json records) and its parameters; also what
  training records there (`record_run`) and the trainer's `init.checkpoint` (`init_from_run`).
* `model`: the in-process model (the trainer's `steps.eval_step` on the restored parameters) or an
  exported artifact, and the metadata an artifact carries.
* `windows`: inputs (videos, frame folders, images), faces, sliding windows and the batched model.
* `outputs`: the table, JSON, CSV, annotated video and plot of a prediction.
"""
