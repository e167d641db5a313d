"""`python -m cxr_tf.convert --verify DIR`: a converted dataset read back and checked
against its manifest, shard by shard and record by record."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cxr_tf.data import schema
from cxr_tf.data.conversion import sha256_file, short_error
from cxr_tf.data.manifest import COUNT_KEYS, MANIFEST, DatasetError, Manifest, shard_fingerprint
from cxr_tf.labels import NEGATIVE, POSITIVE, UNCERTAIN


def verify(dataset_dir: str | Path, progress: bool = True) -> list[str]:
    """Re-reads every shard and checks it against the manifest; returns the problems.

    Checked: each shard exists, has the manifest's size, sha256 and record count; the
    fingerprint matches the shards; and the records themselves agree with the manifest's
    per-split counts (images, patients, positives per finding, No Finding), with no image
    or patient in two splits.

    Raises:
        DatasetError: the folder or its manifest is missing or unreadable.
    """
    import tensorflow as tf

    from cxr_tf.progress import progress_bar as tqdm

    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise DatasetError(f"{dataset_dir} is not a folder")
    manifest = Manifest.load(dataset_dir)
    problems = []
    features = manifest.features()
    names = list(manifest.labels)
    width = len(names)
    seen_images: dict[str, str] = {}
    seen_patients: dict[int, str] = {}
    shards = list(manifest.shards())
    counted: dict[str, dict] = {}
    with tqdm(total=len(shards), unit="shard", desc="verify", disable=not progress) as bar:
        for split, shard in shards:
            bar.update(1)
            file = dataset_dir / shard.file
            if not file.is_file():
                problems.append(f"{file}: missing")
                continue
            if sha256_file(file) != shard.sha256:
                problems.append(f"{file}: sha256 differs from the manifest")
            found = counted.setdefault(
                split,
                {
                    "images": 0,
                    "patients": set(),
                    "positives": np.zeros(width, int),
                    "labelled": np.zeros(width, int),
                    "uncertain": np.zeros(width, int),
                    "nf": 0,
                },
            )
            count = 0
            try:
                for batch in tf.data.TFRecordDataset(str(file)).batch(1024):
                    parsed = schema.parse_metadata(batch, features)
                    states = parsed["labels"].numpy()
                    count += len(states)
                    found["positives"] += (states == POSITIVE).sum(axis=0)
                    found["labelled"] += ((states == POSITIVE) | (states == NEGATIVE)).sum(axis=0)
                    found["uncertain"] += (states == UNCERTAIN).sum(axis=0)
                    found["nf"] += int(((states == POSITIVE).sum(axis=1) == 0).sum())
                    for name, patient in zip(
                        parsed["image_index"].numpy(), parsed["patient_id"].numpy(), strict=True
                    ):
                        name, patient = name.decode(), int(patient)
                        if seen_images.setdefault(name, split) != split or (
                            name in found.get("names", set())
                        ):
                            problems.append(f"{file}: image {name} stored twice")
                        found.setdefault("names", set()).add(name)
                        if seen_patients.setdefault(patient, split) != split:
                            problems.append(
                                f"{file}: patient {patient} also in split {seen_patients[patient]}"
                            )
                        found["patients"].add(patient)
            except tf.errors.OpError as err:
                problems.append(f"{file}: unreadable ({short_error(err)})")
                continue
            found["images"] += count
            if count != shard.records:
                problems.append(f"{file}: {count} records, manifest says {shard.records}")
    for split, found in counted.items():
        entry = manifest.splits[split]
        facts = {
            "images": (found["images"], entry.images),
            "patients": (len(found["patients"]), entry.patients),
            "no_finding": (found["nf"], entry.no_finding),
        }
        for key in COUNT_KEYS:
            said = getattr(entry, key)
            for finding, n in zip(names, found[key], strict=True):
                facts[f"{key}.{finding}"] = (int(n), said.get(finding))
        for key, (records, said) in facts.items():
            if records != said:
                problems.append(
                    f"{dataset_dir / MANIFEST}: split {split} {key} is {said}, the records "
                    f"hold {records}"
                )
    if shard_fingerprint(manifest.splits) != manifest.fingerprint:
        problems.append(f"{dataset_dir / MANIFEST}: fingerprint does not match the shard list")
    leftovers = sorted(p.name for p in dataset_dir.glob("*.tmp"))
    if leftovers:
        problems.append(f"{dataset_dir}: unfinished temporary shards {leftovers}")
    return problems
