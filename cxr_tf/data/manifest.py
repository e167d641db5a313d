"""A converted dataset's manifest (`manifest.json`): what the dataset is, typed.

The converter writes it last (`Manifest.to_dict`); everything that reads a converted
dataset loads it with `Manifest.load`, which validates it (a clear `DatasetError` naming the
file) and upgrades older manifests in one place (`_upgrade`), so that readers see one shape:

- `labels` names the label states every record stores, in order (schema 1: NIH's 14,
  schema 2: the whole vocabulary); `labelled_findings` the findings this dataset labels;
- `image`: the stored images (`stored_size`, `encoding`);
- `splits`: per split the image, patient and label counts and its shards (file, records,
  bytes, sha256);
- `source`, `conversion`, `shard_order`, `skipped_images`, `timing`: how it was made.

The JSON keys and layout are those of the record schema's version (`cxr_tf.data.schema`);
this module adds no key and renames none (the stored side is `"size"` in the file).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxr_tf.config import ConvertConfig, rename_old_keys
from cxr_tf.labels import (
    FINDINGS,
    NEGATIVE,
    POSITIVE,
    STATES,
    VOCABULARY,
    UnknownFindingError,
    own_findings,
)

MANIFEST = "manifest.json"  # a converted dataset's description, written last
PREPROCESSING = "cxr_tf.data.preprocessing.bytes_to_stored"
COUNT_KEYS = ("positives", "labelled", "uncertain")  # per-finding counts of a split
# What each count of a split means; written into every manifest (`count_meanings`).
COUNT_MEANINGS: dict[str, str] = {
    "images": "records written to the split",
    "patients": "distinct patient_id values among them",
    "positives": "per label: images whose state is positive",
    "labelled": "per label: images whose state is positive or negative (not uncertain, "
    "not 'not labelled')",
    "uncertain": "per label: images whose state is uncertain",
    "no_finding": "images with no positive state among all the labels (uncertain ones "
    "included); computed from the label states, not read from the dataset's own "
    "'No Finding' column, which may differ (e.g. for images with only uncertain labels, "
    "or findings outside the stored labels)",
}


class DatasetError(FileNotFoundError):
    """The converted dataset is missing, incomplete or does not fit the configuration."""


@dataclass(frozen=True)
class ImageInfo:
    """How the images are stored: `stored_size` pixels square, uint8, one channel."""

    stored_size: int
    encoding: str  # "png" or "raw"
    channels: int = 1
    dtype: str = "uint8"
    preprocessing: str = PREPROCESSING  # the function that made them from the files

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageInfo:
        return cls(
            stored_size=int(data["size"]),
            encoding=str(data["encoding"]),
            channels=int(data.get("channels", 1)),
            dtype=str(data.get("dtype", "uint8")),
            preprocessing=str(data.get("preprocessing", PREPROCESSING)),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": self.stored_size,
            "channels": self.channels,
            "dtype": self.dtype,
            "encoding": self.encoding,
            "preprocessing": self.preprocessing,
        }


@dataclass(frozen=True)
class ShardInfo:
    """One TFRecord file of a split."""

    file: str  # relative to the dataset folder
    records: int
    sha256: str
    bytes: int | None = None  # None: written before shard sizes were recorded

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ShardInfo:
        size = data.get("bytes")
        return cls(
            file=str(data["file"]),
            records=int(data["records"]),
            sha256=str(data["sha256"]),
            bytes=None if size is None else int(size),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"file": self.file, "records": self.records}
        if self.bytes is not None:
            out["bytes"] = self.bytes
        out["sha256"] = self.sha256
        return out


@dataclass(frozen=True)
class SplitInfo:
    """One split: its counts and its shards. Per-finding counts are keyed by label name;
    `labelled` counts images labelled positive or negative (not uncertain)."""

    images: int
    patients: int
    positives: dict[str, int]
    labelled: dict[str, int]
    uncertain: dict[str, int]
    no_finding: int  # images without any positive state (COUNT_MEANINGS says it in full)
    shards: tuple[ShardInfo, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SplitInfo:
        return cls(
            images=int(data["images"]),
            patients=int(data["patients"]),
            positives={str(k): int(v) for k, v in data["positives"].items()},
            labelled={str(k): int(v) for k, v in data["labelled"].items()},
            uncertain={str(k): int(v) for k, v in data["uncertain"].items()},
            no_finding=int(data["no_finding"]),
            shards=tuple(ShardInfo.from_dict(s) for s in data["shards"]),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "patients": self.patients,
            "positives": dict(self.positives),
            "labelled": dict(self.labelled),
            "uncertain": dict(self.uncertain),
            "no_finding": self.no_finding,
            "shards": [s.to_dict() for s in self.shards],
        }

    @property
    def records(self) -> int:
        """Records over all shards (the images written)."""
        return sum(s.records for s in self.shards)

    @property
    def bytes(self) -> int:
        """Bytes over all shards (shards without a recorded size count 0)."""
        return sum(s.bytes or 0 for s in self.shards)


@dataclass(frozen=True)
class SourceInfo:
    """Where the dataset came from and what conversion kept of it."""

    kind: str = ""  # a source of `cxr_tf.sources` (schema 1: set by `_upgrade`)
    root: str = ""
    layout: str = ""
    labels_file: str = ""
    described: str = ""  # where the labels came from
    listed_images: int = 0
    absent_images: int = 0
    rejected_archive_members: list = field(default_factory=list)
    image_sizes: dict[str, int] = field(default_factory=dict)  # "WxH" -> images
    not_1024_images: int = 0
    # how pixel values became 0..255 -> images, e.g. {"png 16-bit, sBIT 12": 40, "png 8-bit":
    # 3, "dicom MONOCHROME1, window": 2} (`preprocessing.decode_and_describe`, `dicom`)
    pixel_mappings: dict[str, int] = field(default_factory=dict)
    boxes: int = 0  # boxes the records hold
    boxes_cropped_out: int = 0  # boxes dropped: wholly outside a `--resize crop` square
    box_frame: str = ""
    views_kept: dict[str, int] = field(default_factory=dict)
    views_dropped: dict[str, int] = field(default_factory=dict)
    patient_ids: str = ""
    splits: str = ""  # how the splits were made
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SourceInfo:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Timing:
    """Seconds the conversion's stages took in the run that finished it."""

    setup_s: float = 0.0  # reading the source, planning, checking earlier shards
    write_s: float = 0.0  # decoding, resizing and writing the shards
    finish_s: float = 0.0  # the manifest and the TFDS metadata
    images_written_this_run: int = 0  # the rest were kept from an earlier, killed run
    # from the first shard begun to the last one finished, in whichever process or Beam
    # worker wrote them: write_s less the workers' start-up (importing TensorFlow,
    # building the encoder); 0.0 when no shard was written in this run
    shards_s: float = 0.0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Timing:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        order = ("setup_s", "write_s", "shards_s", "images_written_this_run", "finish_s")
        return {name: getattr(self, name) for name in order}


def shard_fingerprint(splits: Mapping[str, SplitInfo]) -> str:
    """A short hash of every shard's name, split and sha256: equal fingerprints mean the
    same records (pixels, labels, metadata, boxes) in the same splits and order."""
    lines = sorted(
        f"{split}/{s.file}:{s.sha256}" for split, entry in splits.items() for s in entry.shards
    )
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def _upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """An older manifest in today's shape (in place), the one place that knows the history.

    Schema 1 (NIH only, 0/1 labels): no `labelled_findings` (its labels: NIH's 14, all
    labelled), no `label_states`, no per-split `labelled` / `uncertain` counts (every image
    labelled, none uncertain), a source without `kind` (NIH) and with `data_entry` as its
    label file. Before `stored_size` was named so, `conversion` held `image_size` and
    `nih_root` (renamed here as the config renames them). Before `resize` was a choice,
    every conversion squashed; before `jpeg_decode` was, every JPEG was decoded at full
    size with TensorFlow's fast IDCT (`fast`).
    """
    labels = list(data["labels"])
    data.setdefault("labelled_findings", labels)
    data.setdefault("label_states", {str(k): STATES[k] for k in (NEGATIVE, POSITIVE)})
    source = data.setdefault("source", {})
    source.setdefault("kind", "nih")
    if "labels_file" not in source and "data_entry" in source:
        source["labels_file"] = source["data_entry"]
    data["conversion"] = rename_old_keys(ConvertConfig, data.get("conversion", {}))
    data["conversion"].setdefault("resize", "squash")  # before it was a choice
    data["conversion"].setdefault("jpeg_decode", "fast")  # TF's default, before the choice
    for entry in data["splits"].values():
        entry.setdefault("labelled", {n: entry["images"] for n in labels})
        entry.setdefault("uncertain", {n: 0 for n in labels})
    return data


@dataclass(frozen=True)
class Manifest:
    """A converted dataset's manifest; `load` one, `to_dict` gives the file's JSON."""

    schema_version: int
    dataset: str  # the folder's name
    labels: tuple[str, ...]  # the label states of each record, in order
    image: ImageInfo
    splits: dict[str, SplitInfo]
    labelled_findings: tuple[str, ...] = ()  # the findings this dataset labels
    label_states: dict[str, str] = field(default_factory=dict)  # state code -> meaning
    fingerprint: str | None = None  # shard_fingerprint(splits) when written
    cxr_tf_version: str = ""
    created: str = ""
    source: SourceInfo = field(default_factory=SourceInfo)
    shard_order: dict[str, Any] = field(default_factory=dict)
    skipped_images: list[dict] = field(default_factory=list)
    conversion: dict[str, Any] = field(default_factory=dict)  # the ConvertConfig, as JSON
    timing: Timing | None = None  # seconds of the conversion's stages
    # the folder it was loaded from (not written); shard files are relative to it
    folder: Path | None = field(default=None, compare=False)

    # ------------------------------------------------------------------ reading, writing

    @classmethod
    def load(cls, dataset_dir: str | Path) -> Manifest:
        """The manifest of a converted dataset; a clear error when the folder is not one.

        Raises:
            DatasetError: no manifest (not a finished conversion), an unreadable one, a
                schema version this version does not read, or another label order.
        """
        path = Path(dataset_dir) / MANIFEST
        if not path.exists():
            raise DatasetError(
                f"{path} not found: {dataset_dir} is not a finished conversion "
                f"(run `python -m cxr_tf.convert` first)"
            )
        try:
            data = json.loads(path.read_text())
        except ValueError as err:
            raise _not_a_manifest(path, err) from err
        return cls.from_dict(data, path, folder=Path(dataset_dir))

    @classmethod
    def from_dict(
        cls, data: Any, path: str | Path = MANIFEST, folder: Path | None = None
    ) -> Manifest:
        """A manifest from its JSON (`path` names it in errors); older ones upgraded."""
        from cxr_tf.data import schema  # TensorFlow, only once a manifest is read

        if not isinstance(data, dict):
            raise _not_a_manifest(path, TypeError(f"a {type(data).__name__}, not an object"))
        if "schema_version" not in data:
            raise _not_a_manifest(path, KeyError("schema_version"))
        version = data.get("schema_version")
        if version not in schema.READABLE_VERSIONS:
            raise DatasetError(
                f"{path}: schema version {version}, this version reads "
                f"{', '.join(map(str, schema.READABLE_VERSIONS))}; convert again"
            )
        labels = data.get("labels")
        # Schema 1 stored NIH's 14, schema 2 the whole vocabulary, each in its fixed order,
        # then (schema 2) the dataset's own findings in `own_findings` order.
        expected = list(FINDINGS) if version == 1 else list(VOCABULARY)
        own = labels[len(expected) :] if isinstance(labels, list) and version == 2 else []
        try:
            own_ok = all(isinstance(n, str) for n in own) and list(own_findings(own)) == own
        except UnknownFindingError:
            own_ok = False
        if not isinstance(labels, list) or labels[: len(expected)] != expected or not own_ok:
            raise DatasetError(
                f"{path}: label order {labels} differs from schema {version}'s {expected}"
                f"{' and its own findings, sorted' if version == 2 else ''}; convert again"
            )
        try:
            data = _upgrade(json.loads(json.dumps(data)))  # a copy: the caller's stays
            return cls(
                schema_version=int(version),
                dataset=str(data["dataset"]),
                labels=tuple(labels),
                image=ImageInfo.from_dict(data["image"]),
                splits={str(k): SplitInfo.from_dict(v) for k, v in data["splits"].items()},
                labelled_findings=tuple(data["labelled_findings"]),
                label_states=dict(data["label_states"]),
                fingerprint=data.get("fingerprint"),
                cxr_tf_version=str(data.get("cxr_tf_version", "")),
                created=str(data.get("created", "")),
                source=SourceInfo.from_dict(data["source"]),
                shard_order=dict(data.get("shard_order", {})),
                skipped_images=list(data.get("skipped_images", [])),
                conversion=dict(data.get("conversion", {})),
                timing=Timing.from_dict(data["timing"]) if data.get("timing") else None,
                folder=folder,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise _not_a_manifest(path, err) from err

    def to_dict(self) -> dict[str, Any]:
        """The JSON the file holds (keys in the converter's order)."""
        out: dict[str, Any] = {
            "schema_version": self.schema_version,
            "cxr_tf_version": self.cxr_tf_version,
            "dataset": self.dataset,
            "fingerprint": self.fingerprint,
            "created": self.created,
            "labels": list(self.labels),
            "label_states": dict(self.label_states),
            "labelled_findings": list(self.labelled_findings),
            "image": self.image.to_dict(),
            "source": self.source.to_dict(),
            "shard_order": dict(self.shard_order),
            "skipped_images": list(self.skipped_images),
            "conversion": dict(self.conversion),
            "count_meanings": dict(COUNT_MEANINGS),
            "splits": {k: v.to_dict() for k, v in self.splits.items()},
        }
        if self.timing is not None:
            out["timing"] = self.timing.to_dict()
        return out

    # ------------------------------------------------------------------------- figures

    @property
    def own_findings(self) -> tuple[str, ...]:
        """The dataset's own findings (names outside the vocabulary), after it in `labels`."""
        return self.labels[len(VOCABULARY) :] if self.schema_version >= 2 else ()

    @property
    def stored_size(self) -> int:
        """Side of the stored images, in pixels."""
        return self.image.stored_size

    @property
    def resize(self) -> str:
        """How non-square images were made square (`squash`, `crop`, `pad`; see
        `cxr_tf.data.preprocessing.to_square`); serving repeats it."""
        return str(self.conversion.get("resize", "squash"))

    @property
    def jpeg_decode(self) -> str:
        """How JPEG files were decoded (`reduced`, `full`, `fast`; see
        `cxr_tf.data.preprocessing`); serving repeats it."""
        return str(self.conversion.get("jpeg_decode", "fast"))

    @property
    def has_jpeg(self) -> bool:
        """Whether any stored image was decoded from a JPEG file (its pixel mappings)."""
        return any(name.startswith("jpeg") for name in self.source.pixel_mappings)

    @property
    def split_strategy(self) -> str:
        """How the conversion made its splits (`split.strategy`), "?" when not recorded."""
        return str(self.conversion.get("split", {}).get("strategy", "?"))

    def features(self) -> Any:
        """The `tfds.features.FeaturesDict` the records were written with."""
        from cxr_tf.data import schema

        return schema.build_features(self.stored_size, self.image.encoding, self.labels)

    def split(self, name: str) -> SplitInfo:
        """One split's entry; a `DatasetError` naming the splits there are."""
        if name not in self.splits:
            raise DatasetError(f"{self._where()}: no split {name!r} (has {sorted(self.splits)})")
        return self.splits[name]

    def images_in(self, split: str) -> int:
        """Images of a split, 0 when the dataset has no such split."""
        entry = self.splits.get(split)
        return entry.images if entry is not None else 0

    def count(self, split: str, key: str, name: str) -> int:
        """One per-finding count (`key` one of COUNT_KEYS) of a split; 0 for a finding the
        records do not store or a split the dataset does not have."""
        entry = self.splits.get(split)
        if entry is None or name not in self.labels:
            return 0
        return int(getattr(entry, key).get(name, 0))

    def shards(self) -> Iterator[tuple[str, ShardInfo]]:
        """(split, shard) over every split, in the manifest's order."""
        for split, entry in self.splits.items():
            for shard in entry.shards:
                yield split, shard

    @property
    def images(self) -> int:
        """Images over all splits."""
        return sum(e.images for e in self.splits.values())

    # ---------------------------------------------------------------------- the files

    def _where(self) -> str:
        return str(self.folder) if self.folder is not None else self.dataset

    def _folder(self, folder: str | Path | None) -> Path:
        folder = folder if folder is not None else self.folder
        if folder is None:
            raise ValueError(f"{self.dataset}: a manifest not loaded from a folder has no files")
        return Path(folder)

    def split_files(self, split: str, folder: str | Path | None = None) -> list[str]:
        """The shard files of one split, checked to exist and to have their recorded sizes.

        Args:
            folder: the dataset folder; default the one the manifest was loaded from.
        """
        where = folder if folder is not None else self._where()
        shards = self.split(split).shards
        root = self._folder(folder)
        files = [root / s.file for s in shards]
        missing = [str(f) for f in files if not f.exists()]
        if missing:
            raise DatasetError(f"{where}: missing shard(s) {missing}")
        resized = [
            f"{f} ({f.stat().st_size} bytes, the manifest says {s.bytes})"
            for f, s in zip(files, shards, strict=True)
            if s.bytes is not None and f.stat().st_size != s.bytes
        ]
        if resized:
            raise DatasetError(
                f"{where}: shard(s) changed since conversion: {'; '.join(resized)}; convert "
                f"again or restore them (`python -m cxr_tf.convert --verify` checks all)"
            )
        return [str(f) for f in files]

    def corrupt_shards(self, folder: str | Path | None = None) -> list[str]:
        """Shards whose sha256 differs from the manifest (reads every shard)."""
        root = self._folder(folder)
        bad = []
        for _, shard in self.shards():
            path = root / shard.file
            try:
                with open(path, "rb") as handle:
                    digest = hashlib.file_digest(handle, "sha256").hexdigest()
            except OSError as err:
                bad.append(f"{path} ({err.strerror})")
                continue
            if digest != shard.sha256:
                bad.append(f"{path} (sha256 differs from the manifest)")
        return bad

    # ------------------------------------------------------------------ several datasets

    @classmethod
    def merged(cls, manifests: Sequence[Manifest]) -> Manifest:
        """One manifest for datasets read together: the first one's, named "a+b", over the
        whole vocabulary and every dataset's own findings, labelling what any of them
        labels, with every split's counts summed over them and no shards (what training
        and the loss weights need). A finding one dataset does not store is not labelled
        there."""
        if len(manifests) == 1:
            return manifests[0]
        first = manifests[0]
        names = VOCABULARY + own_findings(n for m in manifests for n in m.own_findings)
        labelled = [n for n in names if any(n in m.labelled_findings for m in manifests)]
        splits = {
            split: SplitInfo(
                images=sum(m.images_in(split) for m in manifests),
                patients=sum(m.splits[split].patients for m in manifests if split in m.splits),
                no_finding=sum(
                    m.splits[split].no_finding for m in manifests if split in m.splits
                ),
                shards=(),
                **{
                    key: {n: sum(m.count(split, key, n) for m in manifests) for n in names}
                    for key in COUNT_KEYS
                },
            )
            for split in first.splits
        }
        return dataclasses.replace(
            first,
            dataset="+".join(m.dataset for m in manifests),
            labels=names,
            labelled_findings=tuple(labelled),
            splits=splits,
            folder=None,
        )


def _not_a_manifest(path: str | Path, err: Exception) -> DatasetError:
    return DatasetError(
        f"{path}: not a cxr_tf manifest ({type(err).__name__}: {err}); convert again"
    )
