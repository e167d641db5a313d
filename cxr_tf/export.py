"""`python -m cxr_tf.export`: a training run -> a SavedModel for TF Serving.

Examples:
  python -m cxr_tf.export --run_dir runs/densenet121-multilabel-3f9c2a1b
  python -m cxr_tf.export --run_dir RUN --model last --name cxr14 --version 3 --out export

The default --name is cxr_<task>, followed by the outputs of a binary or multi-class run (or
of a multi-label subset): cxr_multilabel, cxr_binary-pneumothorax, cxr_binary-any,
cxr_multiclass-no_finding-effusion-mass; so models of different outputs never become
versions of one another (TF Serving serves the highest version of a name).

Writes, in TF Serving's versioned layout (the version is one above the highest present unless
`--version` is given; a version is written under a temporary name and renamed when complete,
so a polling server never loads half an export; the hidden partial folder of an export that
was killed is removed by the next export):

  <out>/<name>/models.config                         tensorflow_model_server --model_config_file
  <out>/<name>/<version>/saved_model.pb, variables/  the SavedModel (Keras 3 ExportArchive)
  <out>/<name>/<version>/assets.extra/cxr_tf_metadata.json
  <out>/<name>/<version>/assets.extra/tf_serving_warmup_requests

Signatures (B = batch, K = outputs, S = the dataset's stored image size):
  serving_default  image_bytes: string (B,) encoded PNG/JPEG (any size, 1/3/4 channels, 8/16
                   bit) -> cxr_tf.data.preprocessing.bytes_to_stored -> model -> outputs below
  predict_images   images: float32 (B, S, S, 1) gray, 0..255 (cast uint8 images to float32)
  metadata         unused: int32 scalar (any value; TF Serving's REST API needs an input) ->
                   metadata_json (the JSON of assets.extra), labels, thresholds, stored_size, task
Outputs of both prediction signatures: labels (B, K) string, probabilities (B, K) float32,
one (B,) float32 per output name (e.g. "Effusion"); multi-label and binary: decisions (B, K)
bool, probability >= the run's threshold (thresholds.json from evaluation when it was chosen
for this very checkpoint file without test-time augmentation; else 0.5, with a warning on
stderr and the reason under threshold_source.ignored in the metadata);
multi-class: class_index (B,) int32 and class_name (B,) string (the argmax).
Bad input raises InvalidArgumentError: an empty batch, undecodable or truncated bytes, an image
side over preprocessing.MAX_SIDE, images outside 0..255. A 1x1 image is accepted and resized
like any other (the converter would store it the same way).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from cxr_tf.cli import bad_inputs, build_parser, parse_config, run_command, run_problem
from cxr_tf.config import ConfigError, ExportConfig


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(ExportConfig, __doc__, "python -m cxr_tf.export")
    config, _ = parse_config(ExportConfig, parser, argv)
    # the model file is not asked for here: a run still training is refused by its lock (3)
    if bad_inputs("export", run_problem("run_dir", config.run_dir)):
        return 2
    try:
        from cxr_tf.data.lock import FolderInUse, check_free
        from cxr_tf.evaluation.thresholds import ThresholdsError
        from cxr_tf.runs.folder import ModelFileError
        from cxr_tf.serving.exporter import ExportError, export

        try:
            # a run still training has an intermediate best.keras and no final metadata
            check_free(config.run_dir)
            export(config)
        except FolderInUse as err:
            print(f"export: error: {err}; export the run once it has finished", file=sys.stderr)
            return 3
        except (
            ExportError,
            ModelFileError,
            ThresholdsError,
            ConfigError,
            FileNotFoundError,
        ) as err:
            print(f"export: error: {err}", file=sys.stderr)
            return 2
    except KeyboardInterrupt:
        # a version is written under a temporary name: nothing half-exported is served
        print("\nexport: interrupted; nothing was exported", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    run_command(main, "export")
