"""`python -m cxr_tf.convert`: NIH folder -> patient-disjoint, sharded TFRecords + manifest.

Each image is decoded, turned grayscale 8-bit and resized once (`cxr_tf.preprocessing`,
the same TensorFlow ops the exported model runs), stored losslessly (PNG or raw uint8)
and serialized with the record schema (`cxr_tf.schema`).

Resumable and never half-written: a shard is written to `<file>.tmp`, renamed when
complete, and then recorded in `.parts/<file>.json` (records, sha256); a rerun with the same
arguments skips recorded shards. The manifest and the TFDS metadata are written last.
"""

from __future__ import annotations

import concurrent.futures as futures
import datetime as dt
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr_tf import __version__, nih, splits
from cxr_tf.cli import build_parser, parse_config
from cxr_tf.config import SPLIT_NAMES, ConvertConfig, to_dict
from cxr_tf.labels import FINDINGS
from cxr_tf.sources import ImageSource, discover

MANIFEST = "manifest.json"
PLAN = "plan.json"
PARTS = ".parts"
BAD_REPORT = "bad_images.csv"
ABSENT_REPORT = "absent_images.txt"
TFDS_TEMPLATE = "{SPLIT}-{SHARD_X_OF_Y}.{FILEFORMAT}"
# Fields of ConvertConfig that do not change what a shard holds (safe to change on resume).
_RESUME_FREE = ("workers", "skip_bad", "nih_root", "out_dir")


class ConversionError(RuntimeError):
    """Conversion cannot go on; the message says which files or images and why."""


def shard_name(split: str, index: int, count: int) -> str:
    """`train-00000-of-00016.tfrecord` (TFDS's `{SPLIT}-{SHARD_X_OF_Y}` template)."""
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def _bytes_per_record(config: ConvertConfig) -> float:
    pixels = config.image_size**2
    # PNG of a resized radiograph is ~0.55 bytes/pixel (measured on the NIH samples at 256).
    return (pixels if config.encoding == "raw" else 0.55 * pixels) + 400


def plan_shards(split_images: dict[str, list[str]], config: ConvertConfig) -> dict[str, list]:
    """Contiguous chunks of each split's sorted images, sized to ~`shard_mb` each."""
    per_shard = max(1, int(config.shard_mb * 1e6 / _bytes_per_record(config)))
    plan: dict[str, list] = {}
    for split in SPLIT_NAMES:
        names = sorted(split_images.get(split, []))
        if not names:
            continue
        count = max(1, math.ceil(len(names) / per_shard))
        chunks = np.array_split(np.array(names, dtype=object), count)
        plan[split] = [
            {"file": shard_name(split, i, count), "images": [str(n) for n in chunk]}
            for i, chunk in enumerate(chunks)
        ]
    return plan


class _Encoder:
    """Runs the shared preprocessing as one compiled TF function (releases the GIL)."""

    def __init__(self, config: ConvertConfig) -> None:
        import tensorflow as tf

        from cxr_tf import preprocessing

        size, png = config.image_size, config.encoding == "png"

        @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
        def encode(data: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            gray = preprocessing.decode_to_gray(data)
            stored = preprocessing.resize_to_stored(gray, size)
            payload = preprocessing.encode_png(stored) if png else stored
            return payload, tf.shape(gray)[:2]

        self._encode = encode

    def __call__(self, data: bytes) -> tuple[bytes | np.ndarray, tuple[int, int]]:
        """Encoded source bytes -> (stored payload, source (height, width))."""
        payload, shape = self._encode(data)
        value = payload.numpy()
        return value, (int(shape[0]), int(shape[1]))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _short_error(err: Exception) -> str:
    text = getattr(err, "message", None) or str(err) or type(err).__name__
    return " ".join(str(text).split())[:300]


def _ordered_map(
    pool: futures.Executor, fn: Any, items: Iterator[tuple[str, Any]], window: int
) -> Iterator[tuple[str, Any]]:
    """Applies fn to each item's bytes in the pool, in order, at most `window` in flight.

    Errors (an unreadable file, undecodable bytes) come back as the exception instead of
    a result, so one bad image never stops the others.
    """

    def safe(data: Any) -> Any:
        if isinstance(data, Exception):
            return data
        try:
            return fn(data)
        except Exception as err:  # noqa: BLE001 - reported per image, never dropped
            return err

    pending: list[tuple[str, futures.Future]] = []
    for name, data in items:
        pending.append((name, pool.submit(safe, data)))
        if len(pending) >= window:
            head, future = pending.pop(0)
            yield head, future.result()
    for name, future in pending:
        yield name, future.result()


class _Metadata:
    """The label, box and demographic facts of the images being converted."""

    def __init__(self, df: pd.DataFrame, boxes: pd.DataFrame | None) -> None:
        self.rows = {r["image_index"]: r for r in df.to_dict("records")}
        self.labels = dict(
            zip(df["image_index"], df[list(FINDINGS)].to_numpy(np.uint8), strict=True)
        )
        self.boxes: dict[str, list[tuple[str, float, float, float, float]]] = {}
        if boxes is not None:
            for r in boxes.itertuples(index=False):
                self.boxes.setdefault(r.image_index, []).append((r.finding, r.x, r.y, r.w, r.h))


def _write_shard(
    dataset_dir: Path,
    shard: dict,
    source: ImageSource,
    meta: _Metadata,
    encoder: _Encoder,
    pool: futures.Executor,
    features: Any,
    skip_bad: bool,
    progress: Any,
) -> tuple[dict | None, list[dict]]:
    """Writes one shard to a temporary file and renames it when complete.

    Returns (part record or None when the shard could not be completed, bad images).
    """
    import tensorflow as tf

    from cxr_tf import schema

    final = dataset_dir / shard["file"]
    tmp = final.with_name(final.name + ".tmp")
    bad: list[dict] = []
    written: list[str] = []
    window = 4 * max(1, getattr(pool, "_max_workers", 2))
    with tf.io.TFRecordWriter(str(tmp)) as writer:
        for name, result in _ordered_map(pool, encoder, source.read(shard["images"]), window):
            progress.update(1)
            if isinstance(result, Exception):
                bad.append(
                    {"image": name, "location": source.locate(name), "error": _short_error(result)}
                )
                continue
            payload, (height, width) = result
            boxes = [
                (finding, schema.box_to_bbox(x, y, w, h, (width, height)))
                for finding, x, y, w, h in meta.boxes.get(name, [])
            ]
            example = schema.make_example(payload, meta.rows[name], meta.labels[name], boxes)
            writer.write(features.serialize_example(example))
            written.append(name)
    if bad and not skip_bad:
        tmp.unlink()
        return None, bad
    os.replace(tmp, final)
    part = {
        "file": shard["file"],
        "records": len(written),
        "bytes": final.stat().st_size,
        "sha256": _sha256(final),
        "skipped": [b["image"] for b in bad],
    }
    _write_json(dataset_dir / PARTS / (shard["file"] + ".json"), part)
    return part, bad


def _check_listed(listed: Sequence[str], known: set[str], list_path: Path | None) -> None:
    unknown = sorted(set(listed) - known)
    if unknown:
        raise ConversionError(
            f"{list_path}: {len(unknown)} listed image(s) are not in the label file, "
            f"first: {unknown[:10]}"
        )


def _select_splits(
    config: ConvertConfig, df: pd.DataFrame, files: nih.NihFiles, present: set[str] | None
) -> dict[str, list[str]]:
    """Patient-disjoint image lists per split (checked before anything is written)."""
    known = set(df["image_index"])
    keep = (lambda names: [n for n in names if n in present]) if present is not None else list
    kwargs: dict[str, Any] = {}
    strategy = config.split.strategy
    if strategy == "official":
        if files.train_val_list is None or files.test_list is None:
            raise ConversionError(
                f"split.strategy=official needs train_val_list.txt[.gz] and "
                f"test_list.txt[.gz] in {config.nih_root}"
            )
        for key, path in (("train_val", files.train_val_list), ("test", files.test_list)):
            names = nih.read_split_list(path)
            _check_listed(names, known, path)
            kwargs[key] = keep(names)
    elif strategy == "file":
        table = splits.read_split_file(config.split.split_file)
        _check_listed(table["Image Index"].tolist(), known, Path(config.split.split_file))
        if present is not None:
            table = table[table["Image Index"].isin(present)]
        kwargs["assignments"] = table
    if present is not None:
        df = df[df["image_index"].isin(present)]
    return splits.make_splits(df, config.split, **kwargs)


def _identity(config: ConvertConfig, plan: dict) -> dict:
    settings = {k: v for k, v in to_dict(config).items() if k not in _RESUME_FREE}
    digest = hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()
    return {"settings": settings, "plan_sha256": digest}


def _start_plan(dataset_dir: Path, config: ConvertConfig, plan: dict) -> None:
    """Writes plan.json, or checks that an earlier run had the same settings and plan."""
    identity = _identity(config, plan)
    path = dataset_dir / PLAN
    if path.exists():
        earlier = json.loads(path.read_text())
        if earlier.get("identity") != identity:
            changed = sorted(
                k
                for k in set(identity["settings"]) | set(earlier["identity"]["settings"])
                if identity["settings"].get(k) != earlier["identity"]["settings"].get(k)
            )
            what = f"settings {changed}" if changed else "the image lists / splits"
            raise ConversionError(
                f"{dataset_dir} holds a conversion with different {what}; "
                f"choose another --name or delete the folder to start over"
            )
        return
    _write_json(path, {"identity": identity, "shards": plan})


def convert(config: ConvertConfig, progress: bool = True) -> dict:
    """Converts `config.nih_root` into `config.out_dir/<name>/`; returns the manifest.

    Raises ConversionError (absent or bad images, mismatching earlier run) with the
    list written to a report file in the dataset folder.
    """
    from tqdm.auto import tqdm

    from cxr_tf import schema

    if not config.nih_root:
        raise ConversionError("nih_root: give the NIH folder (--nih_root DIR)")
    started = time.perf_counter()
    root = Path(config.nih_root)
    dataset_dir = Path(config.out_dir) / config.dataset_name
    dataset_dir.mkdir(parents=True, exist_ok=True)
    (dataset_dir / PARTS).mkdir(exist_ok=True)

    files = nih.find_metadata(root)
    df = nih.read_data_entry(files.data_entry)
    boxes = nih.read_boxes(files.bbox) if files.bbox is not None else None
    source = discover(root, cache_dir=dataset_dir / PARTS)
    listed = df["image_index"].tolist()
    absent = sorted(set(listed) - source.names)
    present: set[str] | None = None
    if absent:
        (dataset_dir / ABSENT_REPORT).write_text("\n".join(absent) + "\n")
        if not config.present_only:
            raise ConversionError(
                f"{len(absent)} of {len(listed)} images listed in {files.data_entry} are not "
                f"under {root} (layout: {source.layout}); first: {absent[:5]}; full list: "
                f"{dataset_dir / ABSENT_REPORT}. Pass --present_only to convert the "
                f"{len(listed) - len(absent)} present images."
            )
        present = set(listed) & source.names
        if not present:
            raise ConversionError(f"no image of {files.data_entry} is under {root}")
    split_images = _select_splits(config, df, files, present)
    plan = plan_shards(split_images, config)
    _start_plan(dataset_dir, config, plan)

    images = {n for names in split_images.values() for n in names}
    meta = _Metadata(
        df[df["image_index"].isin(images)],
        boxes[boxes["image_index"].isin(images)] if boxes is not None else None,
    )
    features = schema.build_features(config.image_size, config.encoding)
    encoder = _Encoder(config)
    workers = config.workers or os.cpu_count() or 1

    parts: dict[str, dict] = {}
    todo = []
    for shards in plan.values():
        for shard in shards:
            part_path = dataset_dir / PARTS / (shard["file"] + ".json")
            if part_path.exists() and (dataset_dir / shard["file"]).exists():
                parts[shard["file"]] = json.loads(part_path.read_text())
            else:
                todo.append(shard)
    bad: list[dict] = []
    total = sum(len(s["images"]) for s in todo)
    writing = time.perf_counter()
    with (
        futures.ThreadPoolExecutor(max_workers=workers) as pool,
        tqdm(
            total=total, unit="img", desc=f"convert {config.dataset_name}", disable=not progress
        ) as bar,
    ):
        if len(todo) < sum(len(s) for s in plan.values()):
            bar.write(f"resuming: {len(parts)} finished shard(s) kept")
        for shard in todo:
            part, shard_bad = _write_shard(
                dataset_dir, shard, source, meta, encoder, pool, features, config.skip_bad, bar
            )
            bad.extend(shard_bad)
            if part is not None:
                parts[shard["file"]] = part
    written_at = time.perf_counter()
    for part in parts.values():
        for name in part.get("skipped", []):
            if name not in {b["image"] for b in bad}:
                bad.append({"image": name, "location": source.locate(name), "error": "skipped"})
    if bad:
        pd.DataFrame(bad).to_csv(dataset_dir / BAD_REPORT, index=False)
        if not config.skip_bad:
            listing = "; ".join(f"{b['image']}: {b['error']}" for b in bad[:5])
            raise ConversionError(
                f"{len(bad)} image(s) could not be read or decoded ({listing}); full list: "
                f"{dataset_dir / BAD_REPORT}. Finished shards are kept; fix the images and "
                f"rerun, or pass --skip_bad to leave them out (they are then listed in the "
                f"manifest)."
            )
    manifest = _build_manifest(config, dataset_dir, df, files, source, plan, parts, absent, bad)
    write_tfds_metadata(dataset_dir, manifest)
    manifest["timing"] = {
        "setup_s": round(writing - started, 3),
        "write_s": round(written_at - writing, 3),
        "images_written_this_run": total,
        "finish_s": round(time.perf_counter() - written_at, 3),
    }
    _write_json(dataset_dir / MANIFEST, manifest)
    return manifest


def _build_manifest(
    config: ConvertConfig,
    dataset_dir: Path,
    df: pd.DataFrame,
    files: nih.NihFiles,
    source: ImageSource,
    plan: dict,
    parts: dict[str, dict],
    absent: list[str],
    bad: list[dict],
) -> dict:
    from cxr_tf import schema

    skipped = {b["image"] for b in bad}
    written = {
        split: [n for s in shards for n in s["images"] if n not in skipped]
        for split, shards in plan.items()
    }
    summary = splits.split_summary(written, df)
    split_entries = {}
    for split, shards in plan.items():
        entry = dict(summary[split])
        entry["shards"] = [
            {k: parts[s["file"]][k] for k in ("file", "records", "bytes", "sha256")} for s in shards
        ]
        if sum(s["records"] for s in entry["shards"]) != len(written[split]):
            raise ConversionError(f"{dataset_dir}: record count mismatch in split {split}")
        split_entries[split] = entry
    checksums = sorted(p["sha256"] for p in parts.values())
    return {
        "schema_version": schema.SCHEMA_VERSION,
        "cxr_tf_version": __version__,
        "dataset": config.dataset_name,
        "fingerprint": hashlib.sha256("".join(checksums).encode()).hexdigest()[:16],
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "labels": list(FINDINGS),
        "image": {
            "size": config.image_size,
            "channels": 1,
            "dtype": "uint8",
            "encoding": config.encoding,
            "preprocessing": "cxr_tf.preprocessing.bytes_to_stored",
        },
        "source": {
            "root": str(Path(config.nih_root).resolve()),
            "layout": source.layout,
            "data_entry": str(files.data_entry),
            "listed_images": int(len(df)),
            "absent_images": len(absent),
            "rejected_archive_members": source.rejected,
        },
        "skipped_images": bad,
        "conversion": to_dict(config),
        "splits": split_entries,
    }


def write_tfds_metadata(dataset_dir: Path, manifest: dict) -> None:
    """Writes dataset_info.json / features.json for `tfds.builder_from_directory`."""
    import tensorflow_datasets as tfds

    from cxr_tf import schema

    features = schema.build_features(manifest["image"]["size"], manifest["image"]["encoding"])
    template = tfds.core.ShardedFileTemplate(
        data_dir=dataset_dir,
        template=TFDS_TEMPLATE,
        dataset_name=manifest["dataset"],
        filetype_suffix="tfrecord",
    )
    split_infos = [
        tfds.core.SplitInfo(
            name=split,
            shard_lengths=[s["records"] for s in entry["shards"]],
            num_bytes=sum(s["bytes"] for s in entry["shards"]),
            filename_template=template,
        )
        for split, entry in manifest["splits"].items()
    ]
    facts = {
        "schema_version": manifest["schema_version"],
        "fingerprint": manifest["fingerprint"],
        "labels": manifest["labels"],
        "image": manifest["image"],
        "splits": {
            k: {f: v[f] for f in ("images", "patients")} for k, v in manifest["splits"].items()
        },
    }
    tfds.folder_dataset.write_metadata(
        data_dir=dataset_dir,
        features=features,
        split_infos=split_infos,
        filename_template=template,
        check_data=False,
        description=DESCRIPTION,
        homepage="https://nihcc.app.box.com/v/ChestXray-NIHCC",
        citation=CITATION,
        metadata=tfds.core.MetadataDict(facts),
    )


DESCRIPTION = """NIH ChestX-ray14 (Wang et al. 2017) converted by cxr_tf: frontal chest radiographs,
grayscale uint8 resized once, 14 multi-hot finding labels in a fixed order
(see `labels` in the metadata), patient ID, follow-up, age, sex, view position, original
size, pixel spacing and the expert boxes (normalised) where NIH has them. Splits are
patient-disjoint. manifest.json beside these files holds the shard checksums and the
conversion arguments."""

CITATION = """@inproceedings{wang2017chestxray,
  title={ChestX-ray8: Hospital-scale Chest X-ray Database and Benchmarks on
         Weakly-Supervised Classification and Localization of Common Thorax Diseases},
  author={Wang, Xiaosong and Peng, Yifan and Lu, Le and Lu, Zhiyong and
          Bagheri, Mohammadhadi and Summers, Ronald M.},
  booktitle={IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages={3462--3471},
  year={2017}
}"""


def verify(dataset_dir: str | Path, progress: bool = True) -> list[str]:
    """Re-reads every shard; returns problems (record counts, checksums, missing files)."""
    import tensorflow as tf
    from tqdm.auto import tqdm

    dataset_dir = Path(dataset_dir)
    path = dataset_dir / MANIFEST
    if not path.exists():
        return [f"{path}: no manifest (conversion not finished?)"]
    manifest = json.loads(path.read_text())
    problems = []
    shards = [s for entry in manifest["splits"].values() for s in entry["shards"]]
    for shard in tqdm(shards, unit="shard", desc="verify", disable=not progress):
        file = dataset_dir / shard["file"]
        if not file.exists():
            problems.append(f"{file}: missing")
            continue
        if _sha256(file) != shard["sha256"]:
            problems.append(f"{file}: sha256 differs from the manifest")
        try:
            count = sum(1 for _ in tf.data.TFRecordDataset(str(file)))
        except tf.errors.OpError as err:
            problems.append(f"{file}: unreadable ({_short_error(err)})")
            continue
        if count != shard["records"]:
            problems.append(f"{file}: {count} records, manifest says {shard['records']}")
    leftovers = sorted(p.name for p in dataset_dir.glob("*.tmp"))
    if leftovers:
        problems.append(f"{dataset_dir}: unfinished temporary shards {leftovers}")
    return problems


def _extra(parser: Any) -> None:
    parser.add_argument(
        "--verify",
        metavar="DATASET_DIR",
        help="only re-read the shards of a converted dataset and check them against its manifest",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(
        ConvertConfig,
        prog="python -m cxr_tf.convert",
        description=__doc__,
        extra=_extra,
    )
    config, args = parse_config(ConvertConfig, parser, argv)
    if args.verify:
        problems = verify(args.verify, progress=not args.quiet)
        for problem in problems:
            print(f"verify: {problem}", file=sys.stderr)
        print(f"verify: {'FAILED' if problems else 'ok'} ({args.verify})")
        return 1 if problems else 0
    try:
        manifest = convert(config, progress=not args.quiet)
    except (ConversionError, nih.MetadataError, splits.PatientOverlapError) as err:
        print(f"convert: error: {err}", file=sys.stderr)
        return 2
    dataset_dir = Path(config.out_dir) / config.dataset_name
    for split, entry in manifest["splits"].items():
        print(
            f"{split:>10}: {entry['images']:>7} images, {entry['patients']:>6} patients, "
            f"{len(entry['shards'])} shard(s)"
        )
    print(f"wrote {dataset_dir} (manifest.json, TFDS metadata)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
