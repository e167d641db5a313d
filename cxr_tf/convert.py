"""`python -m cxr_tf.convert --root DIR`: a dataset folder -> patient-disjoint, sharded TFRecords +
manifest.

Sources (`--source`, detected from the folder's files when left at auto, and said): NIH
ChestX-ray14, CheXpert, MIMIC-CXR-JPG, PadChest, a folder of class subfolders, or a labels
CSV; images may be PNG (8 or 16 bit), JPEG or DICOM. Every record keeps one label state per
finding of the vocabulary (negative, positive, uncertain, not labelled by this dataset);
frontal and unknown views are kept by default (`--views`).

Each image is decoded, turned grayscale 8-bit and resized once (`cxr_tf.data.preprocessing`,
the same TensorFlow ops the exported model runs), stored losslessly (PNG or raw uint8)
and serialized with the record schema (`cxr_tf.data.schema`).

Resumable and never half-written: a shard is written to `<file>.tmp`, renamed when
complete, and then recorded in `.parts/<file>.json` (records, sha256); a rerun with the same
arguments skips recorded shards. The manifest and the TFDS metadata are written last.

Every core: `--processes N` writes whole shards in N processes (`--workers` threads each);
a cluster: `--runner beam` writes them on Apache Beam (`cxr_tf.data.beam`), with the Beam
pipeline options in `--beam_options="..."` or after `--`:

    python -m cxr_tf.convert --root DIR --runner beam -- --runner=DataflowRunner ...
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cxr_tf.cli import (
    add_quiet,
    bad_inputs,
    build_parser,
    dataset_problem,
    parse_config,
    run_command,
)
from cxr_tf.config import ConfigError, ConvertConfig


def _extra(parser: Any) -> None:
    parser.add_argument(
        "--verify",
        metavar="DATASET_DIR",
        help="only re-read the shards of a converted dataset and check them against its manifest",
    )
    add_quiet(parser, "no progress bar (notes and warnings are still printed)")


def _check_source(config: ConvertConfig, sources: Sequence[str]) -> None:
    """A `--config` file's source (flags are checked by argparse's choices)."""
    if config.source not in sources:
        raise ConfigError(f"source: {config.source!r}: {', '.join(sources[:-1])} or {sources[-1]}")


def _input_problem(config: ConvertConfig) -> str:
    """What is wrong with `--root` and `--out_dir` ("" when nothing), told before
    TensorFlow starts: the root must be a folder whose source can be told (with auto)."""
    from cxr_tf.sources.catalog import CatalogError
    from cxr_tf.sources.registry import detect_source

    if not config.root:
        return ""  # conversion says what to give
    root, out_dir = Path(config.root), Path(config.out_dir)
    if not root.is_dir():
        return f"root: {root} is not a folder{'' if root.exists() else ' (nothing is there)'}"
    if out_dir.exists() and not out_dir.is_dir():
        return f"out_dir: {out_dir} exists and is not a folder"
    if config.source == "auto":
        try:
            detect_source(root)
        except CatalogError as err:
            return str(err)
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    # The registry names the sources (reading it loads pandas, not TensorFlow).
    from cxr_tf.sources.registry import SOURCES

    sources = ("auto", *SOURCES)
    argv = list(sys.argv[1:] if argv is None else argv)
    beam_flags: list[str] = []
    if "--" in argv:  # the rest are Beam pipeline options
        at = argv.index("--")
        argv, beam_flags = argv[:at], argv[at + 1 :]
    parser = build_parser(
        ConvertConfig,
        prog="python -m cxr_tf.convert",
        description=__doc__,
        extra=_extra,
        choices={"source": sources},
    )
    config, args = parse_config(
        ConvertConfig, parser, argv, check=lambda c: _check_source(c, sources)
    )
    if beam_flags:
        joined = " ".join(filter(None, (config.beam_options, shlex.join(beam_flags))))
        config = dataclasses.replace(config, beam_options=joined)
    if args.verify:
        problem = dataset_problem("verify", args.verify)
    elif config.beam_options and config.runner != "beam":
        problem = "Beam pipeline options (--beam_options, or after --) need --runner beam"
    else:
        problem = _input_problem(config)
    if bad_inputs("convert", problem):
        return 2
    from cxr_tf.data import splits
    from cxr_tf.data.conversion import ConversionError, convert
    from cxr_tf.data.lock import FolderInUse
    from cxr_tf.data.manifest import DatasetError
    from cxr_tf.data.verification import verify
    from cxr_tf.sources.base import MetadataError
    from cxr_tf.sources.catalog import CatalogError

    try:
        if args.verify:
            problems = verify(args.verify, progress=not args.quiet)
            for problem in problems:
                print(f"verify: {problem}", file=sys.stderr)
            print(f"verify: {'FAILED' if problems else 'ok'} ({args.verify})")
            return 1 if problems else 0
        manifest = convert(config, progress=not args.quiet)
    except KeyboardInterrupt:
        print("\nconvert: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except (
        ConversionError,
        DatasetError,
        CatalogError,
        MetadataError,
        splits.PatientOverlapError,
    ) as err:
        print(f"convert: error: {err}", file=sys.stderr)
        return 2
    except FolderInUse as err:  # another convert writes the same dataset folder
        print(f"convert: error: {err}", file=sys.stderr)
        return 3
    except OSError as err:  # a file named by the user cannot be read
        print(f"convert: error: {err}", file=sys.stderr)
        return 2
    dataset_dir = Path(config.out_dir) / manifest.dataset
    if config.source != "auto":  # a detected source was said when it was detected
        print(f"source: {manifest.source.kind} ({manifest.source.root})")
    for split, entry in manifest.splits.items():
        print(
            f"{split:>10}: {entry.images:>7} images, {entry.patients:>6} patients, "
            f"{len(entry.shards)} shard(s)"
        )
    print(f"wrote {dataset_dir} (manifest.json, TFDS metadata); fingerprint {manifest.fingerprint}")
    return 0


if __name__ == "__main__":
    run_command(main, "convert")
