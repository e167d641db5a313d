"""`python -m cxr_tf.tune`: a Keras Tuner search over the training configuration.

Examples:
  # 20 random trials of the default space around the default config, 3 epochs each
  python -m cxr_tf.tune --space tuning/default.json --tuner random --max_trials 20 \\
      --epochs 3 --name densenet_lr --data.dataset tfrecords/nih_256_png

  # the same around an earlier run's config, Bayesian optimisation
  python -m cxr_tf.tune --space tuning/default.json --base runs/RUN/config.json \\
      --tuner bayesian --max_trials 30 --name from_run

  # retrain the best trial with the base config's epoch budget (not the trials' 3 epochs)
  python -m cxr_tf.fit --config tuning/densenet_lr/best_config.json
  python -m cxr_tf.fit --config tuning/densenet_lr/best_config.json --train.epochs 40

The base config is `--base FILE` (or `--config FILE`) plus dotted overrides, as for
`python -m cxr_tf.fit`; the search space is a JSON file (tuning/README.md). `--epochs` is
the trials' budget only: best_config.json keeps the base config's `train.epochs` and
`train.head_epochs` (unless the space tunes them). Results go to `<out_dir>/<name>/`:
summary.md, summary.csv, scores.png, hyperparameters.png and best_config.json. Trials are
numbered from 1 as Keras Tuner prints them ("Running Trial #1"), in every line and file;
trial #N's files are Keras Tuner's folder `trial_<N-1>` (zero-padded when max_trials >= 10),
named in the `folder` column. Rerunning the same command continues the search (a larger
--max_trials adds trials; Ctrl-C exits 130 and the rerun goes on from there). The search
folder is held by one process at a time (a second search of it exits 3). Failed trials are
listed with their error; the command exits 1 when no trial succeeded or keras-tuner
stopped after too many consecutive failures.

Distributed: run the same command once with KERASTUNER_TUNER_ID=chief and once per worker
(KERASTUNER_TUNER_ID=worker0, ...), all with KERASTUNER_ORACLE_IP / _PORT of the chief.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from cxr_tf import config as config_lib
from cxr_tf.cli import (
    add_quiet,
    bad_inputs,
    build_parser,
    dataset_problem,
    file_problem,
    parse_config,
    run_command,
    value_error,
    weights_problem,
)
from cxr_tf.config import ConfigError, RunConfig, TuneConfig


@dataclasses.dataclass
class TuneCommand(TuneConfig, RunConfig):
    """Everything `python -m cxr_tf.tune` reads: the search and its base RunConfig."""


# --- command ---------------------------------------------------------------------------------


def _extra(parser) -> None:  # argparse parser
    parser.add_argument("--base", metavar="FILE", help="base RunConfig JSON (as --config)")
    add_quiet(parser, "one line per trial")


def parse_args(argv: Sequence[str] | None) -> tuple[TuneConfig, RunConfig, bool]:
    """(search settings, base config as given, quiet) from the command line.

    The base keeps its own epoch budget; `trial_base` shortens it to `--epochs`.
    """
    parser = build_parser(TuneCommand, __doc__, "python -m cxr_tf.tune", extra=_extra)
    args_list = list(argv) if argv is not None else sys.argv[1:]
    probe = parser.parse_known_args(args_list)[0]
    if probe.base:
        args_list = ["--config", probe.base, *args_list]
    command, args = parse_config(TuneCommand, parser, args_list)
    tune = TuneConfig(**{f.name: getattr(command, f.name) for f in dataclasses.fields(TuneConfig)})
    try:  # the checks across sections (TuneCommand runs TuneConfig's only)
        base = RunConfig(data=command.data, model=command.model, train=command.train)
    except ConfigError as err:
        value_error(parser, str(err))
    return tune, base, args.quiet


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (docs/commands.md)."""
    try:
        return _run(argv)
    except KeyboardInterrupt:
        print(
            "\ntune: interrupted; rerun the same command to continue the search",
            file=sys.stderr,
        )
        return 130


def _run(argv: Sequence[str] | None) -> int:
    tune, budget, quiet = parse_args(argv)
    if bad_inputs(
        "tune",
        file_problem("space", tune.space),
        dataset_problem("data.dataset", budget.data.dataset),
        weights_problem("model.weights", budget.model.weights),
    ):
        return 2
    from cxr_tf.data.lock import FolderInUse, hold
    from cxr_tf.training.tuning import distributed_role

    out = Path(tune.out_dir) / tune.search_name
    try:
        with contextlib.ExitStack() as held:
            if distributed_role() != "worker":  # the chief holds the search folder
                held.enter_context(hold(out, "tune"))
            return _search(tune, budget, quiet, out)
    except FolderInUse as err:
        print(f"tune: error: {err}", file=sys.stderr)
        return 3
    except NotADirectoryError as err:
        print(f"tune: error: {err}", file=sys.stderr)
        return 2


def _search(tune: TuneConfig, budget: RunConfig, quiet: bool, out: Path) -> int:
    """The search once its folder is held: trials, results, the closing lines."""
    from cxr_tf.data.manifest import DatasetError
    from cxr_tf.modeling import models
    from cxr_tf.training import hypermodel as hypermodel_lib
    from cxr_tf.training import trainer
    from cxr_tf.training.tuning import (
        BEST_CONFIG,
        build_tuner,
        distributed_role,
        error_line,
        record_search,
        retrain_command,
        trial_base,
        trial_number,
        write_results,
    )

    try:
        budget = trainer.default_outputs(budget)  # outputs made explicit, as fit does
        base = trial_base(tune, budget)
        role = distributed_role()
        space = hypermodel_lib.load_space(tune.space, base)
        # Every trial would fail on missing ImageNet weights: say so once, up front.
        models.check_weights(base.model)
        if role != "worker":
            record_search(out, tune, base, space)
        hypermodel = hypermodel_lib.CxrHyperModel(base, space, verbose=0 if quiet else 1)
        tuner = build_tuner(tune, hypermodel)
    except (ConfigError, DatasetError, FileNotFoundError) as err:
        print(f"tune: error: {err}", file=sys.stderr)
        return 2
    stopped = None
    try:
        tuner.search(verbose=0 if quiet else 1)
    except Exception as err:  # keras-tuner stops with RuntimeError or gRPC
        stopped = err
    if role == "worker":  # the chief holds the trials and writes the results
        if stopped is not None:
            print(f"tune: worker stopped: {stopped}", file=sys.stderr)
        return 1 if stopped is not None else 0
    trials = sorted(tuner.oracle.trials.values(), key=lambda t: int(t.trial_id))
    table, best = write_results(tuner, hypermodel, tune, out, budget)
    failed = [t for t in trials if t.status in ("FAILED", "INVALID")]
    print(f"search {out}: {len(trials)} trial(s), {len(failed)} failed")
    for trial in failed:
        print(
            f"trial #{trial_number(trial.trial_id)} {trial.status}: {error_line(trial.message)}",
            file=sys.stderr,
        )
    if stopped is not None:
        first = str(stopped).strip().splitlines()[0] if str(stopped).strip() else repr(stopped)
        print(f"tune: search stopped: {first}", file=sys.stderr)
    if best is None:
        print("tune: error: no trial succeeded", file=sys.stderr)
        return 1
    retrain = config_lib.load(RunConfig, out / BEST_CONFIG)
    print(
        f"best: trial #{trial_number(best.trial_id)}, {hypermodel_lib.OBJECTIVE} {best.score:.4f}\n"
        f"results: {out / 'summary.md'}\n"
        f"retrain: {retrain_command(out, retrain, tune)}"
    )
    return 1 if stopped is not None else 0


if __name__ == "__main__":
    run_command(main, "tune")
