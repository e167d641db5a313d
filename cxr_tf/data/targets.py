"""Label states -> targets: which outputs a task predicts, and the target of each from a
record's label states under the uncertainty policy, with `MASKED` where it is unknown.

The states (`cxr_tf.labels`: negative, positive, uncertain, not labelled) are what a record
stores, one per name of its dataset's `labels`; the targets are what the losses
(`cxr_tf.modeling.losses`) and the metrics take: float32 0/1, or `MASKED` (-1), which they
skip. The reader (`cxr_tf.data.reader`) applies `LabelSpec.select` to each batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from cxr_tf.config import UNCERTAIN_POLICIES, ConfigError, ModelConfig
from cxr_tf.data.manifest import Manifest
from cxr_tf.labels import (
    MASKED,
    NEGATIVE,
    NO_FINDING,
    POSITIVE,
    UNCERTAIN,
    UNLABELLED,
    VOCABULARY,
    resolve_name,
)


@dataclass(frozen=True)
class LabelSpec:
    """Which outputs a task predicts and how their targets come from a record's label states.

    `stored` names the label vector of the dataset being read (its manifest's `labels`);
    outputs it does not name are not labelled there. Targets are float32 0/1, or `MASKED`
    (-1) where the label is unknown: not labelled by the dataset, or uncertain under the
    `uncertain` policy `ignore` (`ones` counts uncertain as positive, `zeros` as negative).
    The losses (`cxr_tf.modeling.losses`) and the metrics skip masked targets.
    """

    task: str
    names: tuple[str, ...]
    stored: tuple[str, ...] = VOCABULARY
    uncertain: str = "ignore"

    @classmethod
    def from_config(
        cls, model: ModelConfig, manifest: Manifest | None = None, uncertain: str = "ignore"
    ) -> LabelSpec:
        stored = manifest.labels if manifest is not None else VOCABULARY
        if uncertain not in UNCERTAIN_POLICIES:
            raise ConfigError(f"train.uncertain: {uncertain!r} not in {UNCERTAIN_POLICIES}")
        return cls(model.task, model.output_names, stored, uncertain)

    def for_manifest(self, manifest: Manifest) -> LabelSpec:
        """The same outputs, read from another dataset's label vector."""
        return LabelSpec(self.task, self.names, manifest.labels, self.uncertain)

    @property
    def size(self) -> int:
        return len(self.names)

    def _columns(self, states: tf.Tensor, names: tuple[str, ...]) -> tf.Tensor:
        """int32 (B, K) states of `names`; names the dataset does not store: not labelled."""
        states = tf.cast(states, tf.int32)
        unlabelled = tf.fill(tf.shape(states[..., :1]), UNLABELLED)
        stored = [resolve_name(n, self.stored) for n in names]
        columns = [
            states[..., self.stored.index(s) : self.stored.index(s) + 1]
            if s is not None
            else unlabelled
            for s in stored
        ]
        return tf.concat(columns, axis=-1)

    def _targets(self, states: tf.Tensor) -> tf.Tensor:
        """int32 states -> float32 0/1/MASKED under the uncertainty policy."""
        uncertain = {"ignore": MASKED, "ones": 1.0, "zeros": 0.0}[self.uncertain]
        out = tf.fill(tf.shape(states), MASKED)
        out = tf.where(states == POSITIVE, 1.0, out)
        out = tf.where(states == NEGATIVE, 0.0, out)
        return tf.where(states == UNCERTAIN, uncertain, out)

    def select(self, labels: tf.Tensor) -> tf.Tensor:
        """uint8 (B, L) label states -> float32 (B, K) targets of this task (MASKED: skip)."""
        if self.task == "multilabel" or (self.task == "binary" and self.names[0] != "any"):
            return self._targets(self._columns(labels, self.names))
        if self.task == "binary":
            # Any finding of this dataset: positive when one is (uncertain ones count under
            # `ones`), negative when every labelled one is negative, else unknown.
            targets = self._targets(tf.cast(labels, tf.int32))
            positive = tf.reduce_any(targets == 1.0, axis=-1, keepdims=True)
            unsure = tf.reduce_any(
                tf.cast(labels, tf.int32) == UNCERTAIN, axis=-1, keepdims=True
            ) & tf.constant(self.uncertain == "ignore")
            return tf.where(positive, 1.0, tf.where(unsure, MASKED, 0.0))
        return tf.one_hot(self.class_index(labels), self.size)

    def class_index(self, labels: tf.Tensor) -> tf.Tensor:
        """Multi-class: index of the single class of each image, -1 when not single-label
        (images with an uncertain label count as not single-label)."""
        states = tf.cast(labels, tf.int32)
        positives = tf.cast(states == POSITIVE, tf.float32)
        count = tf.reduce_sum(positives, -1)
        findings = tuple(n for n in self.names if n != NO_FINDING)
        chosen_states = self._columns(labels, findings)
        known = tf.reduce_all(
            (chosen_states == POSITIVE) | (chosen_states == NEGATIVE), axis=-1
        ) & ~tf.reduce_any(states == UNCERTAIN, axis=-1)
        columns = [
            tf.cast(tf.equal(count, 0), tf.float32)
            if name == NO_FINDING
            else tf.cast(self._columns(labels, (name,))[..., 0] == POSITIVE, tf.float32)
            for name in self.names
        ]
        chosen = tf.stack(columns, axis=-1)
        single = tf.equal(count, 1) | tf.equal(count, 0)
        valid = single & known & tf.equal(tf.reduce_sum(chosen, -1), 1)
        return tf.where(valid, tf.argmax(chosen, -1, output_type=tf.int32), -1)

    def counts(
        self, manifest: Manifest, split: str = "train"
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """Per-output positives and images with a known target (under the uncertainty
        policy) in a split, and the split's image count, from the manifest."""
        entry = manifest.splits[split]
        total = entry.images
        if self.task == "binary" and self.names[0] == "any":
            return (
                np.array([total - entry.no_finding], np.float64),
                np.array([total], np.float64),
                total,
            )
        if self.task == "multiclass":
            raise ValueError(
                "multi-class counts need a pass over the labels: reader.class_counts()"
            )
        pos, known = [], []
        for name in self.names:
            p = entry.positives.get(name, 0) if name in self.stored else 0
            k = entry.labelled.get(name, 0)
            u = entry.uncertain.get(name, 0)
            if name not in self.stored:
                p, k, u = 0, 0, 0
            if self.uncertain == "ones":
                p, k = p + u, k + u
            elif self.uncertain == "zeros":
                k = k + u
            pos.append(p)
            known.append(k)
        return np.array(pos, np.float64), np.array(known, np.float64), total
