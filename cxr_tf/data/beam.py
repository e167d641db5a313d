"""Conversion on Apache Beam (`convert --runner beam`): the local converter's shard plan run
as a Beam pipeline, one element per shard, so that a conversion can spread over the
machines of a cluster (Dataflow, Flink, Spark) or the cores of this one (DirectRunner).

Only the shard writing moves: `cxr_tf.data.conversion` reads and checks the dataset, makes
the plan, decides which shards a rerun keeps, and writes the manifest and the TFDS metadata
from the part records afterwards, as it does for a local conversion. Each element is a
`conversion.ShardTask` (the shard's images, their labels and where to read them) written by
`conversion.write_task`, the local converter's own shard writer, so the shards, the
manifest's fingerprint and the TFDS metadata are byte for byte those of a local conversion.
Conversion hands both in (this module imports nothing of it: conversion imports this one).

Workers write into the dataset folder themselves: the images' root and `out_dir` must be
paths every worker sees at the same place (this machine with DirectRunner; a shared file
system mounted alike on every worker on a cluster). A worker also writes what became of its
shard (part record or undecodable images) to `<results_dir>/<shard>.result.json`, which the
launching process reads back when the pipeline is done: a Beam pipeline returns nothing to
the program that ran it.

Resume: a shard whose part record is written is finished, as for the local converter; a
rerun of the same command after a failed or cancelled job keeps those and sends only the
others to Beam. A runner retrying an element rewrites the shard from its `.tmp` file, so a
retried shard is never half-written.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RESULT_SUFFIX = ".result.json"
INSTALL = "pip install -e '.[beam]' (Apache Beam is an optional extra of cxr_tf)"

# (part record or None, bad images): what writing one shard gives
Written = tuple[dict | None, list[dict]]


class BeamError(RuntimeError):
    """The pipeline cannot run or failed; the message says why and what to do."""


def pipeline_flags(options: str) -> list[str]:
    """`--beam_options` split as a shell would, DirectRunner when no runner is named."""
    try:
        flags = shlex.split(options)
    except ValueError as err:
        raise BeamError(f"beam_options: {err}: {options!r}") from err
    if not any(f == "--runner" or f.startswith("--runner=") for f in flags):
        flags.append("--runner=DirectRunner")
    return flags


def _result_path(results_dir: str, task: Any) -> Path:
    return Path(results_dir) / (task.shard["file"] + RESULT_SUFFIX)


def _write_element(task: Any, write: Callable[[Any], Written], results_dir: str) -> str:
    """A Beam worker's step: writes the shard and what became of it; returns its name."""
    part, bad = write(task)
    path = _result_path(results_dir, task)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"part": part, "bad": bad}) + "\n")
    tmp.replace(path)
    return task.shard["file"]


def write_shards(
    tasks: Sequence[Any],
    write: Callable[[Any], Written],
    results_dir: Path,
    options: str,
    progress: Any,
) -> list[Written]:
    """Writes every task's shard on Beam; what `write` returned for each, in the tasks'
    order.

    Args:
        tasks: the shards to write (`conversion.shard_tasks`: `.shard["file"]` names each).
        write: writes one (`conversion.write_task`); must pickle (a module's function).
        results_dir: a folder every worker sees, for the results on their way back.
        options: Beam pipeline options as on a command line ("--runner=DataflowRunner
            --project=P --region=R --temp_location=gs://B/tmp"); DirectRunner when none
            names a runner.
        progress: a tqdm bar, advanced by each shard's images once the pipeline is done.

    Raises BeamError when Beam is not installed, the options cannot be split, or the
    pipeline fails (finished shards are kept for a rerun).
    """
    try:
        import apache_beam as beam
        from apache_beam.options.pipeline_options import PipelineOptions
    except ImportError as err:
        raise BeamError(f"--runner beam needs Apache Beam: {INSTALL}") from err
    if not tasks:
        return []
    flags = pipeline_flags(options)
    folder = str(results_dir)
    for task in tasks:  # an earlier job's result must not pass for this one's
        _result_path(folder, task).unlink(missing_ok=True)
    pipeline_options = PipelineOptions(flags)
    progress.write(
        f"writing {len(tasks)} shard(s) on Beam ({' '.join(flags)}); progress shows when "
        "the pipeline is done"
    )
    try:
        with beam.Pipeline(options=pipeline_options) as pipeline:
            _ = (
                pipeline
                | "Shards" >> beam.Create(list(tasks))
                | "Spread" >> beam.Reshuffle()  # one shard per worker, not all on the first
                | "Write" >> beam.Map(_write_element, write, folder)
            )
    except Exception as err:  # the runner's own error, whatever its class
        raise BeamError(
            f"the Beam pipeline failed: {str(err).strip().splitlines()[-1][:500]}. Finished "
            f"shards are kept; fix the cause and rerun the same command to resume."
        ) from err
    results = []
    for task in tasks:
        path = _result_path(folder, task)
        if not path.is_file():
            raise BeamError(
                f"the Beam pipeline ended without writing {task.shard['file']} ({path} is "
                f"missing): are out_dir and root paths every worker sees? Rerun to resume."
            )
        result = json.loads(path.read_text())
        path.unlink()
        progress.update(len(task.shard["images"]))
        results.append((result["part"], result["bad"]))
    return results
