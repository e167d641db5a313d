"""What `python -m cxr_tf.explore` computes: an NIH folder or a converted dataset read into
one frame, and its statistics (prevalence, co-occurrence, patients, demographics, the
patient-overlap check, the sample grid). Plots and markdown: `exploration_report`."""

from __future__ import annotations

import dataclasses
import io
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from cxr_tf.analysis.exploration_report import (
    AGE_MAX,
    figure,
    markdown,
    plot_cooccurrence,
    plot_demographics,
    plot_patients,
    plot_prevalence,
)
from cxr_tf.config import ExploreConfig, SplitConfig
from cxr_tf.data import splits
from cxr_tf.labels import FINDINGS, NO_FINDING, POSITIVE, UNLABELLED, VOCABULARY
from cxr_tf.progress import progress_bar as tqdm
from cxr_tf.sources import registry
from cxr_tf.sources.catalog import Catalog

if TYPE_CHECKING:
    from cxr_tf.data.manifest import Manifest

PLOTS = ("prevalence", "cooccurrence", "images_per_patient", "demographics", "samples")
# Sample thumbnails: longest side in pixels (NIH images are 1024 px).
_THUMB = 192
_BATCH = 4096


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
    df: pd.DataFrame, found: Catalog, label_file: Path, config: SplitConfig
) -> tuple[dict[str, list[str]], list[str]]:
    """make_splits' splits, or the lists as given (with a note) when it refuses them."""
    kwargs: dict[str, Any] = {}
    if config.strategy == "official":
        if found.official is None:
            raise FileNotFoundError(
                f"split.strategy=official needs train_val_list.txt[.gz] and test_list.txt[.gz] "
                f"next to {label_file}; or pass --split.strategy random"
            )
        kwargs = dict(found.official)
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
    found = registry.read_catalog("nih", config.nih_root, cache_dir=config.out_dir / ".cache")
    # The statistics count NIH's 14 findings, as 0/1 columns (NIH labels each of them).
    df = found.frame.drop(columns=[f for f in VOCABULARY if f not in FINDINGS])
    df[list(FINDINGS)] = (df[list(FINDINGS)].to_numpy() == POSITIVE).astype(np.uint8)
    label_file = next(iter(found.input_files.values()))  # a catalog lists its label file first
    split_images, notes = _nih_splits(df, found, label_file, config.split)
    known = set(df["image_index"].to_numpy(object))
    unknown = sum(i not in known for images in split_images.values() for i in images)
    if unknown:
        notes.append(f"{unknown} listed image(s) are not in {label_file.name}; ignored")
    split_images = {k: [i for i in v if i in known] for k, v in split_images.items()}
    source = found.images

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
        boxes=found.boxes if found.boxes is not None else _no_boxes(),
        available=source.names & known,
        read_images=read_images,
        notes=notes,
        extra={"data_entry": str(label_file), "image_layout": source.layout},
    )


def _no_boxes() -> pd.DataFrame:
    return pd.DataFrame({c: [] for c in ("image_index", "finding", "x", "y", "w", "h")})


def _read_records(
    dataset: Path, manifest: Manifest, progress: bool
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every record's metadata (images are not decoded) and its boxes in stored pixels."""
    import tensorflow as tf

    from cxr_tf.data import schema

    size = manifest.stored_size
    features = manifest.features()
    # The report covers NIH's 14 findings; a record's state counts as positive or not (a
    # finding uncertain or not labelled there counts as not positive).
    stored = list(manifest.labels)
    columns = [stored.index(f) if f in stored else -1 for f in FINDINGS]
    total = manifest.images
    frames, boxes = [], []

    with tqdm(total=total, unit="rec", desc="read records", disable=not progress) as bar:
        for split in manifest.splits:
            files = manifest.split_files(split, dataset)
            ds = (
                tf.data.TFRecordDataset(files, num_parallel_reads=min(len(files), 8) or None)
                .batch(_BATCH)
                .map(
                    lambda s: schema.parse_metadata(s, features),
                    num_parallel_calls=tf.data.AUTOTUNE,
                )
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
                padded = np.pad(batch["labels"], ((0, 0), (0, 1)), constant_values=UNLABELLED)
                states = padded[:, columns]
                labels = pd.DataFrame((states == POSITIVE).astype(np.uint8), columns=list(FINDINGS))
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
    dataset: Path, manifest: Manifest, wanted: dict[str, str]
) -> Iterator[tuple[str, Image.Image | None]]:
    """Decodes the records named in `wanted` (image -> split), reading only their splits."""
    import tensorflow as tf

    from cxr_tf.data import schema

    features = manifest.features()
    keys = tf.constant(sorted(wanted))
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(keys, tf.ones_like(keys, tf.int32)), 0
    )
    name_only = {"image_index": schema.feature_spec(features)["image_index"]}
    for split in sorted(set(wanted.values())):
        count = sum(s == split for s in wanted.values())
        ds = (
            tf.data.TFRecordDataset(manifest.split_files(split, dataset))
            .filter(
                lambda s: table.lookup(tf.io.parse_single_example(s, name_only)["image_index"]) > 0
            )
            .take(count)  # stops reading once every wanted record of the split is found
            .map(lambda s: schema.parse_record(s, features, ("image_index", "image")))
        )
        for record in ds.as_numpy_iterator():
            yield record["image_index"].decode(), Image.fromarray(record["image"][..., 0])


def _load_dataset(config: ExploreConfig, progress: bool) -> _Source:
    from cxr_tf.data.manifest import Manifest

    dataset = Path(config.dataset)
    manifest = Manifest.load(dataset)
    frame, boxes = _read_records(dataset, manifest, progress)
    split_images = {
        s: frame["image_index"][frame["split"] == s].tolist() for s in manifest.splits
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
                "over_100": int((age > AGE_MAX).sum()),
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
    manifest = source.extra["manifest"]
    # Exploration counts NIH's 14 findings; "no finding" agrees when the dataset labels
    # nothing else.
    only_nih = set(manifest.labelled_findings) <= set(FINDINGS)
    keys = ("images", "patients", "no_finding", "positives") if only_nih else (
        "images", "patients", "positives")  # fmt: skip
    for split, entry in manifest.splits.items():
        for key in keys:
            said = getattr(entry, key)
            if key == "positives":
                said = {f: said.get(f, 0) for f in FINDINGS}
            if said != prevalence.get(split, {}).get(key):
                mismatches.append(
                    f"{split}.{key}: manifest {said}, records "
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
    fig, (ax,) = figure(mosaic.width / 100 + 1.7, mosaic.height / 100 + 0.5)
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
    plot_prevalence(prevalence, out / "prevalence.png")
    plot_cooccurrence(summary["cooccurrence"], out / "cooccurrence.png")
    plot_patients(summary["patients"], out / "images_per_patient.png")
    plot_demographics(source.frame, summary["demographics"], out / "demographics.png")
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
    (out / "report.md").write_text(markdown(summary))
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary
