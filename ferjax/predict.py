r"""Runs a trained model on videos, frame folders and images: `python -m ferjax.predict --workdir RUN INPUT...`.

A thin command line over `ferjax.inference`. The model comes from a training run (`--workdir RUN`: the
checkpoint the run selects, best validation UAR when it kept one, else the latest; see
`ferjax.inference.run`), from one checkpoint (`--checkpoint DIR`: a step folder such as
`RUN/checkpoints/600`, or `RUN/checkpoints` / `RUN/best_checkpoint` for its newest step) or from an exported
artifact (`--model FILE.ferjax|FILE.onnx`, see `ferjax.export` and `ferjax.serving`). Only the parameters
and BatchNorm statistics are restored (Orbax partial restore), never the optimizer state; the model is the
trainer's own evaluation step (`ferjax.steps.eval_step`).

Each INPUT is a video file, a folder of frames (e.g. a CK+ sequence folder), one image, or a folder of videos
(every video in it, batch mode). For every input (details in `ferjax.inference.windows`):

1. Faces are detected on every frame (`--detector`, default: the detector the training data was cropped
   with, as the dataset's metadata records it; another one warns, since its boxes frame faces
   differently; for a model trained on whole frames, `ferjax.data.faces.DEFAULT_DETECTOR` finds the
   faces). Detections are linked into face **tracks** (`ferjax.data.face_tracks`): a face is seen at
   overlapping places in at least `--min-track-length` frames (gaps of up to `--max-gap` frames
   bridged); isolated hits are dropped. An input without a track is "no face" (an error for that
   input). Each track is a face with its own results; frames where a face has no detection are marked
   (`face: false` for the main face), never given a guessed box.
2. Per face, sliding windows of `--window` consecutive frames (default: the median length of the run's training
   sequences, recorded in its run.json; T for runs that did not record it) start every `--stride` frames
   (a last window is added so that the end of the input is covered). A window is scored when at least
   `--min-face-fraction` of its frames have a face, else it is "no face". Its face frames, and only
   they, are cropped like the builders crop (one stable square box: medians of their boxes, plus
   `--margin`), T of them are taken as evaluation samples a sequence (`dataset.sampling`), centre-cropped
   and resized as in evaluation (`augment.eval_crop`, `dataset.image_size`). Shorter inputs are one
   window; one image is T copies of itself.
3. Windows are batched (`--batch-size`) through the model; each gets class probabilities, and a face's
   prediction is the mean of its scored windows' probabilities. The input's label is that of its main
   face (the track seen in the most frames); with several faces the table, `--json` (`tracks`) and
   `--csv` (`track` column) report each.

Output: a table per input on stdout (with the frames/s of the whole path: decoding, detection, cropping,
model), and on request `--json FILE`, `--csv FILE`, `--annotate FILE.mp4|.avi` (the input with the face
box, the label and probability bars; a `.png`/`.jpg` name writes one annotated frame: the middle frame
of the window most confident in the clip label) and `--plot FILE.png` (class probabilities over time).
With several inputs (or a folder of videos), `--annotate NAME.EXT` and `--plot NAME.EXT` write one file
per input, `NAME.<input>.EXT`, where <input> is the input's name without extension; inputs that share a
name get as many parent folders as tell them apart (`a.S005_001.avi`, `a.S010_001.avi` for two CK+
sequence folders `001`), then their extension (`a.clip_avi.avi`, `a.clip_mp4.avi`). Existing output files
are kept unless `--overwrite` is given: without it, nothing is written when any output exists.

Exit codes: 0 every input predicted; 1 nothing done (a bad model, argument or existing output file; one
line on stderr); 2 some inputs failed (each reported in one line; the others' results are written).
"""

import argparse
import dataclasses
import json
import os
from pathlib import Path
import sys
from typing import Sequence

from ferjax import serving
from ferjax.data import face_tracks, faces, media
from ferjax.inference import model as model_lib, outputs, run as run_lib, windows

EXIT_USAGE = 1
EXIT_SOME_FAILED = 2


class PredictError(ValueError):
  """A user error: bad arguments, an existing output file."""


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog='python -m ferjax.predict', description=__doc__.split('\n\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('inputs', nargs='+', metavar='INPUT',
                 help='video file, folder of frames, image, or folder of videos')
  src = p.add_argument_group('model (exactly one)')
  src.add_argument('--workdir', help='a training run (best_checkpoint/ if any, else checkpoints/)')
  src.add_argument('--checkpoint', help='a checkpoint step folder, or a folder of them (newest)')
  src.add_argument('--model', help='an exported .ferjax or .onnx artifact (python -m ferjax.export)')
  p.add_argument('--detector', default=None, choices=faces.DETECTORS,
                 help="face detector (default: the one the training data was cropped with, from the "
                      f"dataset's metadata; {faces.DEFAULT_DETECTOR!r} to find the faces of a model trained "
                      "on whole frames); another one warns: its boxes differ. 'none' = centre square")
  p.add_argument('--yunet-model', help="the YuNet .onnx file for --detector yunet")
  p.add_argument('--crop', choices=('face', 'frame'), default=None,
                 help="what the model sees: 'face' (the window's face box plus --margin) or 'frame' (the "
                      "centred square of the frame; faces are still detected to mark frames without one). "
                      "Default: as the training data was made ('frame' for whole rendered frames, e.g. the "
                      "synthetic dataset)")
  p.add_argument('--margin', type=float, default=None,
                 help='border around the face box, a fraction of its side (default: as in the training '
                      "data's builder; 0.25 where it did not crop; 0 with --detector none)")
  p.add_argument('--window', type=int, default=None, help='frames per window (default: the median length of the '
                      "run's training sequences; T where the run did not record it)")
  p.add_argument('--stride', type=int, default=None, help='frames between window starts (default: window/2)')
  p.add_argument('--min-face-fraction', type=float, default=0.5,
                 help='a window is scored when at least this fraction of its frames has a face')
  p.add_argument('--min-track-length', type=int, default=face_tracks.MIN_TRACK_LENGTH,
                 help='a face is a track of detections at overlapping places in at least this many frames '
                      '(all frames of a shorter input); isolated detections are dropped')
  p.add_argument('--max-gap', type=int, default=face_tracks.MAX_GAP,
                 help='frames without a detection that a face\'s track bridges')
  p.add_argument('--batch-size', type=int, default=16, help='windows per model call')
  p.add_argument('--json', help='write every result to this JSON file')
  p.add_argument('--csv', help='write one row per window (and per clip) to this CSV file')
  p.add_argument('--annotate', metavar='NAME.EXT',
                 help='write the annotated video (.mp4/.avi) or one frame (.png/.jpg). With several inputs '
                      '(or a folder of videos): one file per input, NAME.<input>.EXT, <input> = the '
                      "input's file or folder name without extension; inputs with the same name get "
                      'their parent folders (NAME.S005_001.EXT), then their extension (NAME.clip_avi.EXT)')
  p.add_argument('--plot', metavar='NAME.EXT',
                 help='write the probabilities over time (.png/.pdf/.svg/.jpg); several inputs: as '
                      '--annotate')
  p.add_argument('--overwrite', action='store_true',
                 help='replace existing output files (without it, nothing is written when any exists)')
  p.add_argument('--max-rows', type=int, default=40, help='window rows per input in the table')
  p.add_argument('--quiet', action='store_true', help='no progress line')
  return p



def _check_args(args) -> None:
  for name in ('window', 'stride', 'batch_size', 'min_track_length'):
    value = getattr(args, name)
    if value is not None and value < 1:
      raise PredictError(f'--{name.replace("_", "-")} must be >= 1; found {value}')
  if args.max_gap < 0:
    raise PredictError(f'--max-gap must be >= 0; found {args.max_gap}')
  if not 0 < args.min_face_fraction <= 1:
    raise PredictError(f'--min-face-fraction must be in (0, 1]; found {args.min_face_fraction}')
  if args.margin is not None and not 0 <= args.margin <= 2:
    raise PredictError(f'--margin must be in [0, 2]; found {args.margin}')
  if args.annotate and Path(args.annotate).suffix.lower() not in (*outputs.VIDEO_CODECS,
                                                                *outputs.IMAGE_OUTPUT_EXTENSIONS):
    raise PredictError(f'--annotate {args.annotate}: expected a .mp4, .avi, .png or .jpg name')
  if args.plot and Path(args.plot).suffix.lower() not in ('.png', '.pdf', '.svg', '.jpg'):
    raise PredictError(f'--plot {args.plot}: expected a .png, .pdf, .svg or .jpg name')



def _outputs(args, sources: Sequence[windows.Source]) -> tuple[list[Path], dict]:
  """(every output file, {source: {'annotate': path, 'plot': path}}), absolute; refuses two outputs
  on one path and an output on an input."""
  def absolute(path: str) -> Path:
    return Path(os.path.abspath(os.path.expanduser(path)))

  paths = [absolute(p) for p in (args.json, args.csv) if p]
  per_input = {s: {} for s in sources}
  labels = outputs.input_labels(sources) if len(sources) > 1 else [''] * len(sources)
  for name in ('annotate', 'plot'):
    if getattr(args, name):
      for source, label in zip(sources, labels):
        per_input[source][name] = outputs.per_input_path(absolute(getattr(args, name)), label, len(sources) > 1)
        paths.append(per_input[source][name])
  if len(set(paths)) != len(paths):
    clash = next(p for p in paths if paths.count(p) > 1)
    raise PredictError(f'two outputs would be written to {clash}; give --json, --csv, --annotate and '
                       '--plot different names')
  inputs = {s.path for s in sources} | {f for s in sources for f in s.files}
  if clash := next((p for p in paths if p in inputs), None):
    raise PredictError(f'{clash} is an input; an output file must not replace it')
  return paths, per_input



def resolve_detector(requested: str | None, crop: dict) -> tuple[str, str | None]:
  """(detector name, a warning or None): the training data's detector unless another is requested.

  A model trained on whole frames (`crop['detector'] == 'none'`) still needs faces found, to tell
  frames with a face from frames without: faces.DEFAULT_DETECTOR does that.
  """
  trained = crop.get('detector', model_lib.BUILDER_DEFAULT_CROP['detector'])
  default = trained if trained != 'none' else faces.DEFAULT_DETECTOR
  if requested is None or requested == default:
    return default, None
  if trained == 'none':
    return requested, None
  return requested, (f'--detector {requested}: the training data was cropped with {trained!r} '
                     f'({crop.get("source", "dataset metadata")}); {requested!r} frames faces '
                     'differently, so the model sees other crops than it trained on')



def _options(args, model, detector: str) -> windows.Options:
  crop = model.metadata.get('preprocessing', {}).get('face_crop', {})
  margin = args.margin
  if margin is None:
    margin = 0.0 if detector == 'none' else (
        crop['margin'] if crop.get('detector', 'none') != 'none' else model_lib.BUILDER_DEFAULT_CROP['margin'])
  preprocessing = model.metadata.get('preprocessing', {})
  # The training sequences' typical length (older artifacts and runs: T).
  window = args.window or int((preprocessing.get('window') or {}).get('frames') or model.num_frames)
  crop_mode = args.crop or ('frame' if crop.get('detector') == 'none' else 'face')
  return windows.Options(window=window, stride=args.stride or max(window // 2, 1), margin=margin, crop=crop_mode,
                 crop_size=int(crop.get('size', model_lib.BUILDER_DEFAULT_CROP['size'])),
                 eval_crop=float(preprocessing.get('eval_crop', 1.0)),
                 min_face_fraction=args.min_face_fraction, batch_size=args.batch_size,
                 sampling=preprocessing.get('sampling', 'segments'), flow=preprocessing.get('flow', 'dis'),
                 inputs=tuple(serving.input_names(model.metadata)),
                 input_options=dict(preprocessing.get('input_options') or {}),
                 min_track_length=args.min_track_length, max_gap=args.max_gap,
                 detect_frames=int(crop.get('detect_frames', model_lib.BUILDER_DEFAULT_CROP['detect_frames'])))



def run(argv: Sequence[str]) -> int:
  """The CLI without sys.exit: returns the exit code (see the module docstring)."""
  args = _parser().parse_args(argv)
  try:
    _check_args(args)
    sources, failed = windows.expand_inputs(args.inputs)
    paths, per_input = _outputs(args, sources)
    existing = [p for p in paths if p.exists()]
    if existing and not args.overwrite:
      raise PredictError(f'{existing[0]} exists; pass --overwrite to replace it'
                         + (f' (and {len(existing) - 1} more)' if len(existing) > 1 else ''))
    for p in paths:
      if not p.parent.is_dir():
        raise PredictError(f'{p}: the folder {p.parent} does not exist')
    if not sources:
      for given, error in failed:
        print(f'error: {error}', file=sys.stderr)
      raise PredictError('no readable input')
    model = model_lib.load_model(args.workdir, args.checkpoint, args.model)
    crop = model.metadata.get('preprocessing', {}).get('face_crop', {})
    detector_name, warning = resolve_detector(args.detector, crop)
    if warning:
      print(f'warning: {warning}', file=sys.stderr)
    try:
      detector = faces.make_detector(detector_name, args.yunet_model)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
      raise PredictError(f'--detector {detector_name}: {e}') from None
    options = _options(args, model, detector_name)
  except (PredictError, run_lib.RunError, outputs.OutputError) as e:
    print(f'error: {e}', file=sys.stderr)
    return EXIT_USAGE
  except Exception as e:  # pylint: disable=broad-except  # A checkpoint that does not fit, etc.
    from ferjax import checkpointing  # pylint: disable=import-outside-toplevel
    if isinstance(e, checkpointing.CheckpointMismatchError):
      print(f'error: {e}', file=sys.stderr)
      return EXIT_USAGE
    raise
  for given, error in failed:
    print(f'error: {error}', file=sys.stderr)
  results, records = [], [{'input': g, 'error': e} for g, e in failed]
  for source in sources:
    try:
      result = windows.predict_source(source, model, detector, options, progress=not args.quiet)
    except (media.MediaError, faces.NoFaceError) as e:
      print(f'error: {e}', file=sys.stderr)
      failed.append((os.fspath(source.path), str(e)))
      records.append({'input': os.fspath(source.path), 'error': str(e)})
      continue
    if len(result.tracks) > 1 and options.crop == 'frame':
      print(f'warning: {source.path}: {len(result.tracks)} faces, but the model sees whole frames '
            '(--crop frame): every face gets the same frames; --crop face cuts each face out',
            file=sys.stderr)
    results.append(result)
    records.append(outputs.result_json(result))
    print(outputs.format_table(result, args.max_rows), flush=True)
    if args.annotate:
      outputs.write_annotated(result, per_input[source]['annotate'])
    if args.plot:
      outputs.write_plot(result, per_input[source]['plot'])
  if results:
    frames = sum(r.num_frames for r in results)
    seconds = sum(r.seconds for r in results)
    in_model = sum(r.model_seconds for r in results)
    print(f'{len(results)} input(s), {frames} frames in {seconds:.2f} s: {frames / seconds:.1f} frames/s '
          f'(decode + detect ({detector_name}) + crop + model; model {model.kind}: {in_model:.2f} s, '
          'its first call compiles)')
  if args.json:
    payload = {'model': {k: model.metadata.get(k) for k in ('class_names', 'num_frames', 'image_size',
                                                             'inputs', 'preprocessing', 'source')},
               'options': dataclasses.asdict(options) | {'detector': detector_name},
               'results': records}
    Path(args.json).write_text(json.dumps(payload, indent=1))
  if args.csv:
    Path(args.csv).write_text(outputs.csv_text(results, model.class_names))
  if failed:
    print(f'{len(failed)} of {len(failed) + len(results)} input(s) failed', file=sys.stderr)
    return EXIT_SOME_FAILED
  return 0



def main() -> None:
  model_lib.quiet_library_logs()
  sys.exit(run(sys.argv[1:]))


if __name__ == '__main__':
  main()
