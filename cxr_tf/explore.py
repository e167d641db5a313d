"""Exploring ChestX-ray14 before training: who is in which split, how rare each finding is.

`python -m cxr_tf.explore --nih_root DIR` reads an NIH folder (Data_Entry, split lists and,
for the sample grid, whatever images are present); `--dataset DIR` reads a converted
dataset (manifest and records). Both write into `--out` (default `explore/<name>`):

- `report.md`: the tables below, linking every plot;
- `summary.json`: every number of the report;
- `prevalence.png`: per-split finding prevalence and `No Finding` share;
- `cooccurrence.png`: finding co-occurrence counts and P(B|A);
- `images_per_patient.png`: images per patient (follow-ups), per split;
- `demographics.png`: age, sex and view position per split;
- `samples.png`: a few images per finding, boxes drawn where the image has one.

For an NIH folder the splits come from `--split.*` through `cxr_tf.splits.make_splits`;
for a dataset, from its manifest. The patient-overlap check is reported (PASS or the
offending patients), never raised: when the split lists overlap, the statistics are over
the lists as given.
"""

from __future__ import annotations

import dataclasses
import io
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from cxr_tf import nih, splits
from cxr_tf.cli import build_parser, parse_config
from cxr_tf.config import ConfigError, SplitConfig
from cxr_tf.labels import FINDINGS, NO_FINDING

PLOTS = ("prevalence", "cooccurrence", "images_per_patient", "demographics", "samples")
# Sample thumbnails: longest side in pixels (NIH images are 1024 px).
_THUMB = 192
_AGE_MAX = 100  # older ages are data errors in the 2017 label file; counted, not plotted
_BATCH = 4096


@dataclasses.dataclass
class ExploreConfig:
    """What `python -m cxr_tf.explore` reads and where it writes."""

    nih_root: str = dataclasses.field(default="", metadata={"help": "an NIH folder"})
    dataset: str = dataclasses.field(default="", metadata={"help": "a converted dataset folder"})
    out: str = dataclasses.field(default="", metadata={"help": "output folder; explore/<name>"})
    samples_per_finding: int = dataclasses.field(
        default=4, metadata={"help": "images per finding in samples.png (0: no grid)"}
    )
    # Used for an NIH folder only; a dataset's splits are those it was converted with.
    split: SplitConfig = dataclasses.field(default_factory=SplitConfig)

    def __post_init__(self) -> None:
        if not self.nih_root and not self.dataset:
            raise ConfigError("nih_root: give an NIH folder (--nih_root) or a dataset (--dataset)")
        if self.nih_root and self.dataset:
            raise ConfigError("dataset: give --nih_root or --dataset, not both")
        if not 0 <= self.samples_per_finding <= 16:
            raise ConfigError(
                f"samples_per_finding: must be in [0, 16], not {self.samples_per_finding}"
            )

    @property
    def name(self) -> str:
        return Path(self.nih_root or self.dataset).resolve().name

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path("explore") / self.name


@dataclasses.dataclass
class _Source:
    """What was read, from either input, in one shape; plus how to fetch pixels.

    `frame` has one row per (image, split): image_index, split, patient_id, follow_up, age,
    sex, view_position and one 0/1 column per finding.
    """

    kind: str
    frame: pd.DataFrame
    unique: pd.DataFrame  # the same images, one row each (no split column)
    splits: dict[str, list[str]]
    boxes: pd.DataFrame  # image_index, finding, x, y, w, h in pixels of the image as read
    available: set[str]  # images whose pixels can be read
    # Yields (name, image or None when unreadable) for each name, in any order.
    read_images: Callable[[Sequence[str]], Iterator[tuple[str, Image.Image | None]]]
    notes: list[str]
    extra: dict[str, Any]


# --- reading -------------------------------------------------------------------------


def _split_frame(df: pd.DataFrame, split_images: dict[str, list[str]]) -> pd.DataFrame:
    """The rows of `df` per split (an image listed in two splits appears twice)."""
    index = pd.Index(df["image_index"])
    parts = []
    for name, images in split_images.items():
        rows = index.get_indexer(images)
        parts.append(df.iloc[rows[rows >= 0]].assign(split=name))
    return pd.concat(parts, ignore_index=True)


def _nih_splits(
    df: pd.DataFrame, files: nih.NihFiles, config: SplitConfig
) -> tuple[dict[str, list[str]], list[str]]:
    """make_splits' splits, or the lists as given (with a note) when it refuses them."""
    kwargs: dict[str, Any] = {}
    if config.strategy == "official":
        if files.train_val_list is None or files.test_list is None:
            raise FileNotFoundError(
                f"split.strategy=official needs train_val_list.txt[.gz] and test_list.txt[.gz] "
                f"next to {files.data_entry}; or pass --split.strategy random"
            )
        kwargs = {
            "train_val": nih.read_split_list(files.train_val_list),
            "test": nih.read_split_list(files.test_list),
        }
    try:
        return splits.make_splits(df, config, **kwargs), []
    except ValueError as err:  # PatientOverlapError included
        if config.strategy == "official":
            raw = kwargs
        elif config.strategy == "file":
            table = splits.read_split_file(config.split_file)
            raw = {s: table["Image Index"][table["split"] == s].tolist() for s in splits.SPLITS}
        else:
            raise
        note = (
            f"the split lists were refused ({str(err)[:300]}); statistics are over the lists "
            f"as given, without a validation split carved out"
        )
        return {name: list(images) for name, images in raw.items()}, [note]


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _load_nih(config: ExploreConfig) -> _Source:
    from cxr_tf.sources import discover

    root = Path(config.nih_root)
    files = nih.find_metadata(root)
    df = nih.read_data_entry(files.data_entry)
    boxes = nih.read_boxes(files.bbox) if files.bbox is not None else None
    split_images, notes = _nih_splits(df, files, config.split)
    known = set(df["image_index"].to_numpy(object))
    unknown = sum(i not in known for images in split_images.values() for i in images)
    if unknown:
        notes.append(f"{unknown} listed image(s) are not in {files.data_entry.name}; ignored")
    split_images = {k: [i for i in v if i in known] for k, v in split_images.items()}
    source = discover(root, cache_dir=config.out_dir / ".cache")

    def read_images(names: Sequence[str]) -> Iterator[tuple[str, Image.Image | None]]:
        # One call for all names: an archive is streamed once per call.
        for name, data in source.read(names):
            try:
                if isinstance(data, Exception):
                    raise data
                yield name, _decode(data)
            except (OSError, ValueError):
                yield name, None

    return _Source(
        kind="nih",
        frame=_split_frame(df, split_images),
        unique=df,
        splits=split_images,
        boxes=boxes if boxes is not None else _no_boxes(),
        available=source.names & known,
        read_images=read_images,
        notes=notes,
        extra={"data_entry": str(files.data_entry), "image_layout": source.layout},
    )


def _no_boxes() -> pd.DataFrame:
    return pd.DataFrame({c: [] for c in ("image_index", "finding", "x", "y", "w", "h")})


def _record_spec(features: Any) -> dict[str, Any]:
    import tensorflow as tf

    from cxr_tf import schema

    spec = {}
    for key, feature in schema.feature_spec(features).items():
        if key in ("image", "original_size", "pixel_spacing"):
            continue
        # Ragged keeps "no box" apart from a zero-padded Atelectasis box.
        if isinstance(feature, tf.io.FixedLenSequenceFeature):
            feature = tf.io.RaggedFeature(feature.dtype)
        spec[key] = feature
    return spec


def _read_records(
    dataset: Path, manifest: dict, progress: bool
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every record's metadata (images are not decoded) and its boxes in stored pixels."""
    import tensorflow as tf

    from cxr_tf import schema
    from cxr_tf.pipeline import split_files

    size = manifest["image"]["size"]
    spec = _record_spec(schema.build_features(size, manifest["image"]["encoding"]))
    total = sum(int(e["images"]) for e in manifest["splits"].values())
    frames, boxes = [], []

    def parse(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
        parsed = tf.io.parse_example(serialized, spec)
        # Ragged values do not survive as_numpy_iterator: ship counts and flat values.
        parsed["boxes/count"] = parsed["boxes/finding"].row_lengths()
        for key in ("boxes/finding", "boxes/bbox"):
            parsed[key] = parsed[key].flat_values
        return parsed

    with tqdm(total=total, unit="rec", desc="read records", disable=not progress) as bar:
        for split in manifest["splits"]:
            files = split_files(dataset, split, manifest)
            ds = (
                tf.data.TFRecordDataset(files, num_parallel_reads=min(len(files), 8) or None)
                .batch(_BATCH)
                .map(parse, num_parallel_calls=tf.data.AUTOTUNE)
                .prefetch(2)
            )
            for batch in ds.as_numpy_iterator():
                names = batch["image_index"].astype(str).astype(object)
                part = pd.DataFrame(
                    {
                        "image_index": names,
                        "split": split,
                        "patient_id": batch["patient_id"],
                        "follow_up": batch["follow_up"],
                        "age": batch["age"],
                        "sex": np.asarray(schema.SEXES)[batch["sex"]],
                        "view_position": np.asarray(schema.VIEWS)[batch["view_position"]],
                    }
                )
                labels = pd.DataFrame(batch["labels"].astype(np.uint8), columns=list(FINDINGS))
                frames.append(pd.concat([part, labels], axis=1))
                if len(batch["boxes/finding"]):
                    xywh = schema.boxes_xywh(batch["boxes/bbox"], size)
                    box = pd.DataFrame(xywh, columns=["x", "y", "w", "h"])
                    box.insert(0, "finding", np.asarray(FINDINGS)[batch["boxes/finding"]])
                    box.insert(0, "image_index", np.repeat(names, batch["boxes/count"]))
                    boxes.append(box)
                bar.update(len(names))
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return frame, pd.concat(boxes, ignore_index=True) if boxes else _no_boxes()


def _record_images(
    dataset: Path, manifest: dict, wanted: dict[str, str]
) -> Iterator[tuple[str, Image.Image | None]]:
    """Decodes the records named in `wanted` (image -> split), reading only their splits."""
    import tensorflow as tf

    from cxr_tf.pipeline import split_files

    size, encoding = manifest["image"]["size"], manifest["image"]["encoding"]
    keys = tf.constant(sorted(wanted))
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(keys, tf.ones_like(keys, tf.int32)), 0
    )
    spec = {
        "image_index": tf.io.FixedLenFeature([], tf.string),
        "image": tf.io.FixedLenFeature([], tf.string),
    }
    for split in sorted(set(wanted.values())):
        count = sum(s == split for s in wanted.values())
        ds = (
            tf.data.TFRecordDataset(split_files(dataset, split, manifest))
            .filter(lambda s: table.lookup(tf.io.parse_single_example(s, spec)["image_index"]) > 0)
            .take(count)  # stops reading once every wanted record of the split is found
            .map(lambda s: tf.io.parse_single_example(s, spec))
        )
        for record in ds.as_numpy_iterator():
            data = record["image"]
            if encoding == "png":
                image = _decode(data)
            else:
                image = Image.fromarray(np.frombuffer(data, np.uint8).reshape(size, size))
            yield record["image_index"].decode(), image


def _load_dataset(config: ExploreConfig, progress: bool) -> _Source:
    from cxr_tf.pipeline import load_manifest

    dataset = Path(config.dataset)
    manifest = load_manifest(dataset)
    frame, boxes = _read_records(dataset, manifest, progress)
    split_images = {
        s: frame["image_index"][frame["split"] == s].tolist() for s in manifest["splits"]
    }
    split_of = dict(zip(frame["image_index"], frame["split"], strict=True))
    return _Source(
        kind="dataset",
        frame=frame,
        unique=frame.drop(columns="split").drop_duplicates("image_index"),
        splits=split_images,
        boxes=boxes,
        available=set(split_of),
        read_images=lambda names: _record_images(
            dataset, manifest, {n: split_of[n] for n in names}
        ),
        notes=[],
        extra={"manifest": manifest},
    )


# --- numbers -------------------------------------------------------------------------


def _overlap(split_images: dict[str, list[str]], df: pd.DataFrame) -> dict[str, Any]:
    """The patient-overlap check as a report entry (PASS, or FAIL with the patients)."""
    try:
        splits.check_patient_disjoint(split_images, df)
    except splits.PatientOverlapError as err:
        return {
            "status": "FAIL",
            "patients": [int(p) for p in err.patients],
            "splits_by_patient": {str(p): s for p, s in err.splits_by_patient.items()},
            "message": str(err),
        }
    except ValueError as err:  # an image listed twice or unknown
        return {"status": "FAIL", "patients": [], "splits_by_patient": {}, "message": str(err)}
    return {"status": "PASS", "patients": [], "splits_by_patient": {}, "message": ""}


def _with_rates(entry: dict) -> dict:
    images = entry["images"]
    positives = entry["positives"]
    entry["no_finding_share"] = entry["no_finding"] / images if images else 0.0
    entry["prevalence"] = {f: (n / images if images else 0.0) for f, n in positives.items()}
    # positives / negatives; None where a finding has no negative (never in practice)
    entry["pos_neg_ratio"] = {
        f: (n / (images - n) if images - n else None) for f, n in positives.items()
    }
    return entry


def _prevalence(source: _Source) -> dict[str, dict]:
    """split_summary of every split and of all images, with shares and pos/neg ratios."""
    summary = splits.split_summary(source.splits, source.unique)
    everything = sorted({i for images in source.splits.values() for i in images})
    summary.update(splits.split_summary({"all": everything}, source.unique))
    return {name: _with_rates(entry) for name, entry in summary.items()}


def _cooccurrence(unique: pd.DataFrame) -> dict[str, Any]:
    labels = unique[list(FINDINGS)].to_numpy(np.int64)
    counts = labels.T @ labels
    diagonal = np.diag(counts).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        conditional = np.where(diagonal[:, None] > 0, counts / diagonal[:, None], 0.0)
    return {
        "findings": list(FINDINGS),
        "counts": counts.tolist(),
        "conditional": np.round(conditional, 4).tolist(),  # row A, column B: P(B | A)
    }


def _per_patient(frame: pd.DataFrame) -> dict[str, Any]:
    def stats(part: pd.DataFrame) -> dict[str, Any]:
        per = part.groupby("patient_id").size()
        return {
            "images": int(len(part)),
            "patients": int(len(per)),
            "mean": float(per.mean()) if len(per) else 0.0,
            "median": float(per.median()) if len(per) else 0.0,
            "p90": float(per.quantile(0.9)) if len(per) else 0.0,
            "max": int(per.max()) if len(per) else 0,
            "single_image_patients": int((per == 1).sum()),
            "follow_up_images": int((part["follow_up"] > 0).sum()),
            "max_follow_up": int(part["follow_up"].max()) if len(part) else 0,
            "histogram": {str(k): int(v) for k, v in per.value_counts().sort_index().items()},
        }

    unique = frame.drop_duplicates("image_index")
    return {"all": stats(unique), **{s: stats(p) for s, p in frame.groupby("split", sort=False)}}


def _demographics(frame: pd.DataFrame) -> dict[str, Any]:
    out = {}
    for name, part in [
        ("all", frame.drop_duplicates("image_index")),
        *frame.groupby("split", sort=False),
    ]:
        age = part["age"]
        out[name] = {
            "age": {
                "mean": float(age.mean()) if len(age) else 0.0,
                "median": float(age.median()) if len(age) else 0.0,
                "std": float(age.std()) if len(age) > 1 else 0.0,
                "min": int(age.min()) if len(age) else 0,
                "max": int(age.max()) if len(age) else 0,
                "over_100": int((age > _AGE_MAX).sum()),
            },
            "sex": {str(k): int(v) for k, v in part["sex"].value_counts().sort_index().items()},
            "view_position": {
                str(k): int(v) for k, v in part["view_position"].value_counts().sort_index().items()
            },
        }
    return out


def _manifest_check(source: _Source, prevalence: dict[str, dict]) -> dict[str, Any]:
    """A dataset's per-split counts read from its records against its manifest."""
    mismatches = []
    for split, entry in source.extra["manifest"]["splits"].items():
        for key in ("images", "patients", "no_finding", "positives"):
            if entry.get(key) != prevalence.get(split, {}).get(key):
                mismatches.append(
                    f"{split}.{key}: manifest {entry.get(key)}, records "
                    f"{prevalence.get(split, {}).get(key)}"
                )
    return {"consistent": not mismatches, "mismatches": mismatches}


# --- sample grid ---------------------------------------------------------------------


def _pick_samples(source: _Source, per_row: int) -> dict[str, list[str]]:
    """Up to `per_row` readable images per finding (and No Finding), boxed images first."""
    unique = source.unique
    readable = unique["image_index"].isin(source.available).to_numpy()
    labels = unique[list(FINDINGS)].to_numpy(bool)
    names = unique["image_index"].to_numpy(object)
    picks: dict[str, list[str]] = {}
    for column, row in enumerate([*FINDINGS, NO_FINDING]):
        has = labels[:, column] if row != NO_FINDING else ~labels.any(axis=1)
        candidates = sorted(names[has & readable])
        boxed = set(source.boxes["image_index"][source.boxes["finding"] == row])
        candidates.sort(key=lambda n: n not in boxed)  # stable: boxed first, then by name
        picks[row] = candidates[:per_row]
    return picks


def _cell(image: Image.Image, boxes: pd.DataFrame, finding: str) -> Image.Image:
    """A square RGB thumbnail of any PNG mode (RGBA, 16-bit) with the image's boxes drawn."""
    if image.mode in ("I;16", "I"):
        image = Image.fromarray((np.asarray(image, np.float64) / 256).clip(0, 255).astype(np.uint8))
    gray = image.convert("L")
    scale = _THUMB / max(gray.size)
    size = (round(gray.width * scale), round(gray.height * scale))
    cell = Image.new("RGB", (_THUMB, _THUMB), "black")
    cell.paste(gray.resize(size, Image.BILINEAR).convert("RGB"))
    draw = ImageDraw.Draw(cell)
    for box in boxes.itertuples(index=False):
        mine = box.finding == finding
        corners = [box.x * scale, box.y * scale, (box.x + box.w) * scale, (box.y + box.h) * scale]
        draw.rectangle(corners, outline="red" if mine else "yellow", width=3 if mine else 1)
    return cell


def _samples(source: _Source, per_row: int, path: Path, progress: bool) -> dict[str, Any]:
    """Draws one row per finding (and No Finding) of sample images into `path`."""
    picks = _pick_samples(source, per_row)
    wanted = sorted({n for names in picks.values() for n in names})
    images: dict[str, Image.Image] = {}
    with tqdm(total=len(wanted), unit="img", desc="sample images", disable=not progress) as bar:
        for name, image in source.read_images(wanted):
            if image is not None:
                images[name] = image
            bar.update(1)
    modes = pd.Series([im.mode for im in images.values()], dtype=object).value_counts()
    shown_rows = source.frame[source.frame["image_index"].isin(images)]
    split_of = dict(zip(shown_rows["image_index"], shown_rows["split"], strict=False))
    boxes_of = dict(tuple(source.boxes.groupby("image_index")))

    # One mosaic shown in a single axes: 60 small axes take seconds to lay out.
    rows = [*FINDINGS, NO_FINDING]
    step, band = _THUMB + 6, 18  # cell pitch and caption band, in mosaic pixels
    mosaic = Image.new("RGB", (per_row * step, len(rows) * (step + band)), "white")
    shown = {row: [n for n in picks[row] if n in images] for row in rows}
    captions = []
    for r, row in enumerate(rows):
        top = r * (step + band) + band
        for c in range(per_row):
            if c < len(shown[row]):
                name = shown[row][c]
                cell = _cell(images[name], boxes_of.get(name, _no_boxes()), row)
                captions.append((c * step, top, f"{name} ({split_of.get(name, '?')})"))
            else:
                cell = Image.new("RGB", (_THUMB, _THUMB), "#e8e8e8")
                if c == 0:
                    captions.append((c * step, top, "none found"))
            mosaic.paste(cell, (c * step, top))
    fig, (ax,) = _figure(mosaic.width / 100 + 1.7, mosaic.height / 100 + 0.5)
    ax.imshow(np.asarray(mosaic), interpolation="nearest")
    for x, y, text in captions:
        ax.text(x + 2, y - 3, text, fontsize=7, va="bottom")
    ax.set_yticks([r * (step + band) + band + _THUMB / 2 for r in range(len(rows))], rows)
    ax.set_xticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title("Samples per finding: red = box of the row's finding, yellow = other boxes")
    fig.subplots_adjust(
        left=1.6 / fig.get_figwidth(), right=0.99, bottom=0.01, top=1 - 0.4 / fig.get_figheight()
    )
    fig.savefig(path)
    listed = len(source.unique)
    return {
        "listed": listed,
        "found": len(source.available),
        "absent": listed - len(source.available),
        "requested": len(wanted),
        "decoded": len(images),
        "unreadable": len(wanted) - len(images),
        "modes": {str(k): int(v) for k, v in modes.items()},
        "shown": shown,
    }


# --- plots ---------------------------------------------------------------------------


def _figure(width: float, height: float, cols: int = 1) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)  # Agg, without pyplot's global state
    return fig, fig.subplots(1, cols, squeeze=False)[0]


def _save(fig: Figure, axes: Any, path: Path) -> None:
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


def _bars(ax: Any, categories: Sequence[str], series: dict[str, Sequence[float]]) -> None:
    """Grouped bars: one group per category, one bar per series."""
    width = 0.8 / max(1, len(series))
    x = np.arange(len(categories))
    for i, (label, values) in enumerate(series.items()):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(x, categories, rotation=35 if len(categories) > 8 else 0, ha="right")


def _split_names(prevalence: dict) -> list[str]:
    return [s for s in prevalence if s != "all"]


def _plot_prevalence(prevalence: dict, path: Path) -> None:
    fig, (ax,) = _figure(14, 5)
    series = {
        f"{s} ({prevalence[s]['images']})": [
            *(100 * prevalence[s]["prevalence"][f] for f in FINDINGS),
            100 * prevalence[s]["no_finding_share"],
        ]
        for s in _split_names(prevalence)
    }
    _bars(ax, [*FINDINGS, NO_FINDING], series)
    ax.set_yscale("log")
    ax.set_ylabel("% of the split's images (log)")
    ax.set_title("Finding prevalence per split")
    _save(fig, [ax], path)


def _plot_cooccurrence(co: dict, path: Path) -> None:
    counts = np.asarray(co["counts"], np.float64)
    conditional = np.asarray(co["conditional"])
    off_diagonal = conditional[~np.eye(len(FINDINGS), dtype=bool)]
    fig, axes = _figure(18, 8, cols=2)
    panels = [
        (counts, LogNorm(vmin=1, vmax=max(2.0, counts.max())), "{:.0f}"),
        # The diagonal (always 1) is left out so that the colours show the pairs.
        (
            np.where(np.eye(len(FINDINGS), dtype=bool), np.nan, conditional),
            Normalize(vmin=0, vmax=max(0.01, off_diagonal.max(initial=0))),
            "{:.2f}",
        ),
    ]
    titles = ["Images with both findings (log colour)", "P(column finding | row finding)"]
    for ax, (values, norm, fmt), title in zip(axes, panels, titles, strict=True):
        shown = ax.imshow(np.ma.masked_invalid(np.where(values > 0, values, np.nan)), norm=norm)
        fig.colorbar(shown, ax=ax, shrink=0.8)
        ax.set_xticks(range(len(FINDINGS)), FINDINGS, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(len(FINDINGS)), FINDINGS, fontsize=8)
        ax.set_title(title)
        bright = np.asarray(norm(np.nan_to_num(np.maximum(values, 1e-9)))) > 0.6
        for (i, j), v in np.ndenumerate(values):
            if np.isnan(v):
                continue
            # in_layout=False: tight_layout would otherwise measure all 392 labels.
            color = "black" if bright[i, j] else "white"
            ax.text(
                j,
                i,
                fmt.format(v),
                ha="center",
                va="center",
                fontsize=5.5,
                color=color,
                in_layout=False,
            )
    fig.tight_layout()
    fig.savefig(path)


_PATIENT_BINS = ((1, 1), (2, 2), (3, 3), (4, 5), (6, 10), (11, 20), (21, 50), (51, 10**9))


def _plot_patients(patients: dict, path: Path) -> None:
    fig, axes = _figure(14, 4.5, cols=2)
    labels = [
        f"{lo}" if lo == hi else f"{lo}-{hi}" if hi < 10**9 else f">{lo - 1}"
        for lo, hi in _PATIENT_BINS
    ]
    series = {}
    for name, entry in patients.items():
        hist = {int(k): v for k, v in entry["histogram"].items()}
        if not hist:
            continue
        total = max(1, entry["patients"])
        series[f"{name} ({entry['patients']} patients)"] = [
            100 * sum(v for k, v in hist.items() if lo <= k <= hi) / total
            for lo, hi in _PATIENT_BINS
        ]
        sizes = np.arange(1, max(hist) + 1)
        counts = np.array([hist.get(int(k), 0) for k in sizes])
        axes[1].plot(sizes, np.cumsum(counts * sizes) / max(1, entry["images"]), label=name)
    _bars(axes[0], labels, series)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("images per patient")
    axes[0].set_ylabel("% of the split's patients (log)")
    axes[0].set_title("Images per patient")
    axes[1].set_xscale("log")
    axes[1].set_xlabel("images per patient (log)")
    axes[1].set_ylabel("share of the split's images")
    axes[1].set_title("Images held by patients with at most N images")
    _save(fig, axes, path)


def _plot_demographics(frame: pd.DataFrame, demographics: dict, path: Path) -> None:
    names = [s for s in demographics if s != "all"]
    fig, axes = _figure(16, 4.5, cols=3)
    bins = np.arange(0, _AGE_MAX + 5, 5)
    for split in names:
        ages = frame["age"][frame["split"] == split].clip(upper=_AGE_MAX)
        axes[0].hist(ages, bins=bins, density=True, histtype="step", lw=1.5, label=split)
    axes[0].set_xlabel(f"age (years; over {_AGE_MAX} counted as {_AGE_MAX})")
    axes[0].set_ylabel("density")
    axes[0].set_title("Age")
    for ax, key, title in ((axes[1], "sex", "Sex"), (axes[2], "view_position", "View position")):
        categories = sorted({c for s in names for c in demographics[s][key]})
        series = {}
        for split in names:
            counts = demographics[split][key]
            total = max(1, sum(counts.values()))
            series[split] = [100 * counts.get(c, 0) / total for c in categories]
        _bars(ax, categories, series)
        ax.set_ylabel("% of the split's images")
        ax.set_title(title)
    _save(fig, axes, path)


# --- report --------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} (1:{1 / value:.0f})" if value else "0"


def _report(summary: dict) -> str:
    prev = summary["prevalence"]
    names = _split_names(prev)
    cols = [*names, "all"]
    overlap = summary["overlap"]
    out = [f"# Exploring `{summary['source']['name']}`", ""]
    out.append(
        f"{'NIH folder' if summary['source']['kind'] == 'nih' else 'Converted dataset'} "
        f"`{summary['source']['path']}`: "
        f"{prev['all']['images']} images of {prev['all']['patients']} patients; "
        f"split strategy {summary['source']['split']}."
    )
    out += [f"\n> Note: {n}" for n in summary["notes"]]

    out += ["", "## Patient overlap between splits", ""]
    if overlap["status"] == "PASS":
        out.append("**PASS**: no patient has images in more than one split.")
    else:
        out.append(f"**FAIL**: {overlap['message']}")
        if overlap["patients"]:
            rows = [(p, " / ".join(s)) for p, s in overlap["splits_by_patient"].items()]
            out += ["", _table(["patient", "splits"], rows)]

    out += ["", "## Finding prevalence", "", "![prevalence](prevalence.png)", ""]
    rows = [
        [
            f,
            *(
                f"{prev[s]['positives'][f]} ({_pct(prev[s]['positives'][f], prev[s]['images'])})"
                for s in cols
            ),
        ]
        for f in FINDINGS
    ]
    rows.append(
        [
            NO_FINDING,
            *(
                f"{prev[s]['no_finding']} ({_pct(prev[s]['no_finding'], prev[s]['images'])})"
                for s in cols
            ),
        ]
    )
    rows.append(["images", *(prev[s]["images"] for s in cols)])
    rows.append(["patients", *(prev[s]["patients"] for s in cols)])
    out.append(_table(["finding", *cols], rows))

    out += [
        "",
        "## Class imbalance",
        "",
        "Positives / negatives per finding (1:N = negatives per positive).",
        "",
    ]
    rows = [[f, *(_ratio(prev[s]["pos_neg_ratio"][f]) for s in cols)] for f in FINDINGS]
    out.append(_table(["finding", *cols], rows))

    co = summary["cooccurrence"]
    counts, conditional = np.asarray(co["counts"]), np.asarray(co["conditional"])
    numbered = [f"{i + 1}. {f}" for i, f in enumerate(FINDINGS)]
    numbers = [str(i + 1) for i in range(len(FINDINGS))]
    out += ["", "## Co-occurrence", "", "![cooccurrence](cooccurrence.png)", ""]
    out += ["Images with both findings (all splits; the diagonal is the finding's count):", ""]
    out.append(
        _table(
            ["", *numbers], [[n, *row] for n, row in zip(numbered, counts.tolist(), strict=True)]
        )
    )
    out += [
        "",
        "P(column | row) in %, e.g. row Effusion, column Atelectasis = share of Effusion images "
        "that also show Atelectasis:",
        "",
    ]
    out.append(
        _table(
            ["", *numbers],
            [
                [n, *(f"{100 * v:.0f}" for v in row)]
                for n, row in zip(numbered, conditional, strict=True)
            ],
        )
    )
    pairs = sorted(
        ((counts[a, b], a, b) for a in range(len(FINDINGS)) for b in range(a + 1, len(FINDINGS))),
        reverse=True,
    )[:10]
    rows = [
        [
            FINDINGS[a],
            FINDINGS[b],
            int(n),
            f"{100 * conditional[a, b]:.1f}%",
            f"{100 * conditional[b, a]:.1f}%",
        ]
        for n, a, b in pairs
        if n
    ]
    out += [
        "",
        "Most frequent pairs:",
        "",
        _table(["A", "B", "images", "P(B\\|A)", "P(A\\|B)"], rows),
    ]

    patients = summary["patients"]
    out += [
        "",
        "## Images per patient and follow-ups",
        "",
        "![images per patient](images_per_patient.png)",
        "",
    ]
    rows = [
        [
            s,
            p["patients"],
            p["images"],
            f"{p['mean']:.2f}",
            f"{p['median']:.0f}",
            f"{p['p90']:.0f}",
            p["max"],
            _pct(p["single_image_patients"], p["patients"]),
            _pct(p["follow_up_images"], p["images"]),
            p["max_follow_up"],
        ]
        for s, p in ((s, patients[s]) for s in cols if s in patients)
    ]
    headers = [
        "split",
        "patients",
        "images",
        "mean",
        "median",
        "p90",
        "max",
        "1-image patients",
        "follow-up images (#>0)",
        "max follow-up #",
    ]
    out.append(_table(headers, rows))

    demo = summary["demographics"]
    out += ["", "## Age, sex and view position", "", "![demographics](demographics.png)", ""]
    rows = []
    for s in (s for s in cols if s in demo):
        d, n = demo[s], sum(demo[s]["sex"].values())
        views = ", ".join(f"{k} {_pct(v, n)}" for k, v in d["view_position"].items())
        sexes = ", ".join(f"{k} {_pct(v, n)}" for k, v in d["sex"].items())
        age = d["age"]
        rows.append(
            [
                s,
                n,
                f"{age['mean']:.1f} ± {age['std']:.1f}",
                f"{age['median']:.0f}",
                f"{age['min']}-{age['max']}",
                age["over_100"],
                sexes,
                views,
            ]
        )
    out.append(
        _table(
            ["split", "images", "age mean ± sd", "median", "range", "> 100", "sex", "view"], rows
        )
    )

    samples = summary["samples"]
    out += ["", "## Sample images", ""]
    if samples is None:
        out.append("Not drawn (samples_per_finding = 0).")
    else:
        out.append(
            f"{samples['found']} of {samples['listed']} images found ({samples['absent']} absent); "
            f"{samples['decoded']} of {samples['requested']} picked decoded "
            f"(modes: {', '.join(f'{k} {v}' for k, v in samples['modes'].items()) or '-'}). "
            "Boxed images come first; the red box is the row's finding, thin yellow ones "
            "are the image's other boxes."
        )
        out += ["", "![samples](samples.png)"]

    boxes = summary["boxes"]
    out += ["", "## Boxes", "", f"{boxes['boxes']} boxes on {boxes['images']} images.", ""]
    if boxes["per_finding"]:
        out.append(_table(["finding", "boxes"], list(boxes["per_finding"].items())))
    if "manifest_check" in summary:
        check = summary["manifest_check"]
        out += ["", "## Records against the manifest", ""]
        out.append(
            "**consistent**"
            if check["consistent"]
            else "**MISMATCH**: " + "; ".join(check["mismatches"])
        )
    return "\n".join(out) + "\n"


# --- entry points --------------------------------------------------------------------


def explore(config: ExploreConfig, progress: bool = True) -> dict[str, Any]:
    """Writes the plots, `report.md` and `summary.json` into `config.out_dir`.

    Returns:
        The summary written to `summary.json`.
    """
    start = time.perf_counter()
    out = config.out_dir
    source = _load_nih(config) if config.nih_root else _load_dataset(config, progress)
    out.mkdir(parents=True, exist_ok=True)  # only once the input proved readable
    loaded = time.perf_counter()
    prevalence = _prevalence(source)
    summary: dict[str, Any] = {
        "source": {
            "kind": source.kind,
            "path": str(Path(config.nih_root or config.dataset).resolve()),
            "name": config.name,
            "split": config.split.strategy if source.kind == "nih" else "as converted",
            **{k: v for k, v in source.extra.items() if k != "manifest"},
        },
        "notes": source.notes,
        "overlap": _overlap(source.splits, source.unique),
        "prevalence": prevalence,
        "cooccurrence": _cooccurrence(source.unique),
        "patients": _per_patient(source.frame),
        "demographics": _demographics(source.frame),
        "boxes": {
            "boxes": int(len(source.boxes)),
            "images": int(source.boxes["image_index"].nunique()),
            "per_finding": {
                str(k): int(v)
                for k, v in source.boxes["finding"].value_counts().sort_index().items()
            },
        },
    }
    if source.kind == "dataset":
        summary["manifest_check"] = _manifest_check(source, prevalence)
    _plot_prevalence(prevalence, out / "prevalence.png")
    _plot_cooccurrence(summary["cooccurrence"], out / "cooccurrence.png")
    _plot_patients(summary["patients"], out / "images_per_patient.png")
    _plot_demographics(source.frame, summary["demographics"], out / "demographics.png")
    summary["samples"] = None
    if config.samples_per_finding:
        summary["samples"] = _samples(
            source, config.samples_per_finding, out / "samples.png", progress
        )
    plots = [
        f"{p}.png"
        for p in PLOTS
        if (out / f"{p}.png").exists() and (p != "samples" or summary["samples"])
    ]
    summary["files"] = {"report": "report.md", "summary": "summary.json", "plots": plots}
    summary["seconds"] = {
        "load": round(loaded - start, 2),
        "total": round(time.perf_counter() - start, 2),
    }
    (out / "report.md").write_text(_report(summary))
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _extra(parser: Any) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m cxr_tf.explore (--nih_root DIR | --dataset DIR) [--out DIR]`."""
    parser = build_parser(
        ExploreConfig, description=__doc__, prog="python -m cxr_tf.explore", extra=_extra
    )
    config, args = parse_config(ExploreConfig, parser, argv)
    try:
        summary = explore(config, progress=not args.quiet)
    except (FileNotFoundError, ValueError) as err:  # missing files, bad metadata or lists
        print(f"explore: error: {err}", file=sys.stderr)
        return 1
    for split, entry in summary["prevalence"].items():
        print(
            f"{split:>10}: {entry['images']:>7} images, {entry['patients']:>6} patients, "
            f"No Finding {100 * entry['no_finding_share']:.1f}%"
        )
    print(f"patient overlap: {summary['overlap']['status']}")
    print(f"wrote {config.out_dir}/report.md ({summary['seconds']['total']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
