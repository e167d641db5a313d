"""The Keras Tuner search behind `python -m cxr_tf.tune`: the tuner, the trial base config,
the search record that makes a rerun continue it, and the results (table, importance,
plots, the best config and the command that retrains it)."""

from __future__ import annotations

import functools
import json
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras_tuner as kt
import numpy as np
import pandas as pd

from cxr_tf import config as config_lib
from cxr_tf import python_command
from cxr_tf.config import ConfigError, RunConfig, TuneConfig
from cxr_tf.training import hypermodel as hypermodel_lib
from cxr_tf.training.hypermodel import CxrHyperModel, SearchSpace

SEARCH_FILE = "search.json"
BEST_CONFIG = "best_config.json"
# search.json keys that must match when a search is continued (max_trials may grow).
_RESUME_KEYS = ("tuner", "seed", "hyperband_factor", "base", "space")


def trial_number(trial_id: str) -> int:
    """The 1-based number of a trial, as Keras Tuner prints it ("Running Trial #3").

    Keras Tuner's trial ids count from 0 ("2", or "02" when max_trials >= 10) and name the
    trial's folder (`trial_02`); its progress lines number the same trial 3. Every line and
    file of this module uses the number, with the folder beside it where it matters.
    """
    return int(trial_id) + 1


def trial_folder(trial_id: str) -> str:
    """The trial's folder under the search directory, as Keras Tuner names it."""
    return f"trial_{trial_id}"


class _LogsTrials:
    """Appends every trial this tuner runs to `<search>/workers/<tuner_id>.jsonl`."""

    def _log(self, trial: kt.engine.trial.Trial, event: str, **extra: Any) -> None:
        folder = Path(self.project_dir) / "workers"
        folder.mkdir(parents=True, exist_ok=True)
        record = {
            "event": event,
            "trial": trial_number(trial.trial_id),
            "trial_id": trial.trial_id,
            "tuner_id": self.tuner_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "time": time.time(),
            **extra,
        }
        with open(folder / f"{self.tuner_id}.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def on_trial_begin(self, trial: kt.engine.trial.Trial) -> None:
        super().on_trial_begin(trial)
        self._log(trial, "begin")

    def on_trial_end(self, trial: kt.engine.trial.Trial) -> None:
        self._log(trial, "end", status=trial.status)
        super().on_trial_end(trial)  # may raise after too many consecutive failures
        ended = self.oracle.get_trial(trial.trial_id)
        score = "" if ended.score is None else f" {hypermodel_lib.OBJECTIVE} {ended.score:.4f}"
        print(
            f"[{self.tuner_id}] trial #{trial_number(trial.trial_id)} {ended.status}{score}",
            flush=True,
        )


@functools.cache
def tuner_class(name: str) -> type:
    """Keras Tuner's tuner `name` (random, bayesian, hyperband) that logs which tuner ran
    each trial; made on first use, so that importing this module starts no TensorFlow."""
    base = {
        "random": kt.RandomSearch,
        "bayesian": kt.BayesianOptimization,
        "hyperband": kt.Hyperband,
    }[name]
    doc = f"`keras_tuner.{base.__name__}` that logs which tuner ran each trial."
    return type(base.__name__, (_LogsTrials, base), {"__doc__": doc, "__module__": __name__})


def distributed_role() -> str:
    """ "standalone", "chief" or "worker", from Keras Tuner's KERASTUNER_* variables."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return "standalone"
    for name in ("KERASTUNER_ORACLE_PORT", "KERASTUNER_TUNER_ID"):
        if name not in os.environ:
            raise ConfigError(f"KERASTUNER_ORACLE_IP is set but {name} is not")
    # keras-tuner's own test: any id containing "chief" serves the oracle.
    return "chief" if "chief" in os.environ["KERASTUNER_TUNER_ID"] else "worker"


def build_tuner(tune: TuneConfig, hypermodel: CxrHyperModel) -> kt.Tuner:
    """The chosen tuner, objective `val_mean_auroc` (max), continuing an earlier search."""
    common: dict[str, Any] = dict(
        hypermodel=hypermodel,
        objective=kt.Objective(hypermodel_lib.OBJECTIVE, direction="max"),
        seed=tune.seed,
        max_consecutive_failed_trials=tune.max_consecutive_failed_trials,
        directory=tune.out_dir,
        project_name=tune.search_name,
        overwrite=False,
    )
    if tune.tuner == "hyperband":
        epochs = hypermodel.base.train.epochs
        return tuner_class("hyperband")(max_epochs=epochs, factor=tune.hyperband_factor, **common)
    return tuner_class(tune.tuner)(max_trials=tune.max_trials, **common)


def record_search(out: Path, tune: TuneConfig, base: RunConfig, space: SearchSpace) -> None:
    """Writes search.json, or checks that a continued search is the same search."""
    now = {
        "tuner": tune.tuner,
        "seed": tune.seed,
        "hyperband_factor": tune.hyperband_factor,
        "base": config_lib.to_dict(base),
        "space": space.raw,
        "tune": config_lib.to_dict(tune),
    }
    path = out / SEARCH_FILE
    if path.exists():
        earlier = json.loads(path.read_text())
        # a search begun before a field was renamed: its base under today's names
        earlier["base"] = config_lib.rename_old_keys(RunConfig, earlier.get("base", {}))
        diff = [key for key in _RESUME_KEYS if earlier.get(key) != now[key]]
        if diff:
            raise ConfigError(
                f"{out} holds a search with a different {', '.join(diff)}; rerun it with the "
                f"same settings (a larger --max_trials is fine) or choose another --name"
            )
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(now, indent=2) + "\n")


# --- results ---------------------------------------------------------------------------------


def error_line(message: str | None) -> str:
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def trial_table(trials: Sequence[kt.engine.trial.Trial], out: Path) -> pd.DataFrame:
    """One row per trial: number (1-based), folder, status, score, worker, seconds,
    hyperparameters, error."""
    runs: dict[str, dict] = {}
    for log in sorted((out / "workers").glob("*.jsonl")):
        for line in log.read_text().splitlines():
            record = json.loads(line)
            entry = runs.setdefault(record["trial_id"], {})
            entry["worker"] = record["tuner_id"]
            entry[record["event"]] = record["time"]
    rows = []
    for trial in sorted(trials, key=lambda t: int(t.trial_id)):
        hps = trial.hyperparameters
        run = runs.get(trial.trial_id, {})
        done = trial.status == "COMPLETED"
        seconds = run["end"] - run["begin"] if {"begin", "end"} <= set(run) else None
        rows.append(
            {
                "trial": trial_number(trial.trial_id),
                "folder": trial_folder(trial.trial_id),
                "status": trial.status,
                "score": trial.score if done else None,
                "worker": run.get("worker", ""),
                "seconds": None if seconds is None else round(seconds, 1),
                # Hyperband's own values (tuner/epochs, ...) lie outside the declared space.
                **{
                    n: v
                    for n, v in hps.values.items()
                    if n.startswith("tuner/") or hps.is_active(n)
                },
                "error": "" if done else error_line(trial.message),
            }
        )
    table = pd.DataFrame(rows)
    ordered = [c for c in table.columns if c != "error"] + ["error"]
    return table[ordered] if rows else table


def importance(table: pd.DataFrame, names: Sequence[str]) -> dict[str, float]:
    """A rough importance per hyperparameter over the completed trials, in [0, 1].

    Numeric with more than three values: |Spearman correlation| with the score; otherwise
    the share of the score variance between its values (eta squared). NaN with fewer than
    three trials or a single value.
    """
    done = table[table["status"] == "COMPLETED"]
    result = {}
    for name in names:
        known = done[done[name].notna()]
        x, y = known[name], known["score"].astype(float)
        if len(known) < 3 or x.nunique() < 2 or y.nunique() < 2:
            result[name] = float("nan")
        elif x.nunique() > 3 and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in x
        ):
            result[name] = abs(float(x.astype(float).rank().corr(y.rank())))
        else:
            groups = y.groupby(x.astype(str))
            between = float((groups.count() * (groups.mean() - y.mean()) ** 2).sum())
            result[name] = between / float(((y - y.mean()) ** 2).sum())
    return dict(sorted(result.items(), key=lambda kv: -np.nan_to_num(kv[1], nan=-1.0)))


def plot_scores(table: pd.DataFrame, path: Path) -> Any:
    """Score vs trial number (failed trials marked at the bottom) with the running best.

    Returns:
        The matplotlib Figure written to `path`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7, 4), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    order = table["trial"].to_numpy(dtype=int)
    score = table["score"].astype(float).to_numpy()
    ok = ~np.isnan(score)
    ax.plot(order[ok], score[ok], "o", label="trial")
    if ok.any():
        ax.plot(order, pd.Series(score).cummax().to_numpy(), "-", label="best so far")
        bottom = np.nanmin(score)
    else:
        bottom = 0.5
    if (~ok).any():
        ax.plot(order[~ok], np.full((~ok).sum(), bottom), "x", color="red", label="failed")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="trial #", ylabel=f"{hypermodel_lib.OBJECTIVE}", title="score per trial")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    return fig


def _wrap_dotted(name: str, width: int = 28) -> str:
    """A dotted hyperparameter name broken after dots into lines of at most `width` characters
    (a single longer part stays whole)."""
    parts = name.split(".")
    lines = [""]
    for piece in [f"{part}." for part in parts[:-1]] + parts[-1:]:
        if lines[-1] and len(lines[-1]) + len(piece) > width:
            lines.append("")
        lines[-1] += piece
    return "\n".join(lines)


def plot_hyperparameters(
    table: pd.DataFrame, ranked: dict[str, float], space: SearchSpace, path: Path, top: int = 6
) -> Any:
    """Score vs each of the `top` most important hyperparameters (box per categorical).

    Returns:
        The matplotlib Figure written to `path`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    names = list(ranked)[:top]
    done = table[table["status"] == "COMPLETED"]
    cols = min(3, max(1, len(names)))
    rows = max(1, -(-len(names) // cols))
    # Constrained layout keeps the two-line titles and tick labels inside the figure.
    fig = Figure(figsize=(4 * cols, 3.4 * rows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    specs = {spec.name: spec for spec in space.hyperparameters}
    for index, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, index + 1)
        known = done[done[name].notna()]
        spec = specs.get(name)
        if spec is not None and spec.kind in ("int", "float"):
            ax.plot(known[name].astype(float), known["score"].astype(float), "o")
            if spec.sampling == "log":
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())
        else:
            labels = sorted(known[name].astype(str).unique()) if len(known) else []
            data = [known["score"][known[name].astype(str) == v].astype(float) for v in labels]
            if labels:
                ax.boxplot(data, tick_labels=labels)
        value = ranked[name]
        score = "n/a" if np.isnan(value) else f"{value:.2f}"
        ax.set_title(f"{_wrap_dotted(name)}\nimportance {score}", fontsize=10)
        ax.set_ylabel(hypermodel_lib.OBJECTIVE)
        ax.tick_params(labelsize=8)
    if not names:
        fig.add_subplot().text(0.5, 0.5, "no hyperparameters", ha="center")
    fig.savefig(path)
    return fig


def _markdown(table: pd.DataFrame) -> str:
    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return ""
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|")

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(False)]
    return "\n".join(lines)


def retrain_command(out: Path, run: RunConfig, tune: TuneConfig) -> str:
    """The printed retrain line: the command and the epoch budget it trains."""
    trials = f"; the trials trained {tune.epochs}" if tune.epochs else ""
    head = run.train.head_epochs if run.train.head_epochs >= 0 else "auto"
    return (
        f"{python_command()} -m cxr_tf.fit --config {out / BEST_CONFIG}  # "
        f"{run.train.epochs} epochs ({head} head), the base config's budget{trials}; "
        "other: add --train.epochs N"
    )


def write_results(
    tuner: kt.Tuner,
    hypermodel: CxrHyperModel,
    tune: TuneConfig,
    out: Path,
    budget: RunConfig | None = None,
) -> tuple[pd.DataFrame, kt.engine.trial.Trial | None]:
    """summary.md/.csv, scores.png, hyperparameters.png and best_config.json in `out`.

    Args:
        tuner: the tuner after its search.
        hypermodel: its hypermodel (the trials' base config and space).
        tune: the search settings.
        out: the search folder.
        budget: the base config as given, whose epochs best_config.json retrains with
            (default: the trials' own).
    """
    table = trial_table(list(tuner.oracle.trials.values()), out)
    if table.empty:
        return table, None
    table.to_csv(out / "summary.csv", index=False)
    names = [c for c in table.columns if c not in ("trial", "folder", "status", "score",
                                                   "worker", "seconds", "error")]  # fmt: skip
    ranked = importance(table, [n for n in names if not n.startswith("tuner/")])
    plot_scores(table, out / "scores.png")
    plot_hyperparameters(table, ranked, hypermodel.space, out / "hyperparameters.png")
    completed = [t for t in tuner.oracle.trials.values() if t.status == "COMPLETED"]
    best = max(completed, key=lambda t: t.score) if completed else None
    counts = table["status"].value_counts().to_dict()
    text = [
        f"# Search `{tune.search_name}`",
        "",
        hypermodel.space.description,
        "",
        f"- tuner: {tune.tuner}, objective: {hypermodel_lib.OBJECTIVE} (max), "
        f"space: `{tune.space}`",
        f"- trials: {len(table)} ({', '.join(f'{n} {s.lower()}' for s, n in counts.items())})",
    ]
    if best is not None:
        run = retrain_config(hypermodel, best.hyperparameters, budget or hypermodel.base)
        config_lib.save(run, out / BEST_CONFIG)
        command, _, note = retrain_command(out, run, tune).partition("  # ")
        text += [
            f"- best: trial #{trial_number(best.trial_id)} (`{trial_folder(best.trial_id)}`), "
            f"{hypermodel_lib.OBJECTIVE} {best.score:.4f}",
            f"- retrain: `{command}` ({note})",
        ]
    text += ["", "## Hyperparameter importance (rough: over the completed trials)", ""]
    text += [f"- {n}: {'n/a' if np.isnan(v) else f'{v:.2f}'}" for n, v in ranked.items()]
    text += ["", "![scores](scores.png) ![hyperparameters](hyperparameters.png)", ""]
    text += ["## Trials", "", _markdown(table), ""]
    (out / "summary.md").write_text("\n".join(text))
    return table, best


def trial_base(tune: TuneConfig, base: RunConfig) -> RunConfig:
    """The base config of the trials: `base` with `--epochs` (the short trial budget)."""
    trial = config_lib.from_dict(RunConfig, config_lib.to_dict(base))
    if tune.epochs:
        trial.train.epochs = tune.epochs
        trial.train.head_epochs = min(trial.train.head_epochs, tune.epochs)
    return trial


def retrain_config(
    hypermodel: CxrHyperModel, hp: kt.HyperParameters, budget: RunConfig
) -> RunConfig:
    """The config to retrain a trial with: its values and the full epoch budget.

    Trials train `--epochs` epochs; retraining takes `train.epochs` and `train.head_epochs`
    from `budget` (the base config as given), unless the space tunes them.
    """
    run = hypermodel.config_for(hp)
    tuned = {spec.name for spec in hypermodel.space.hyperparameters}
    for field in ("epochs", "head_epochs"):
        if f"train.{field}" not in tuned:
            setattr(run.train, field, getattr(budget.train, field))
    run.train.run_dir = ""  # fit picks a fresh run directory
    return config_lib.from_dict(RunConfig, config_lib.to_dict(run))  # validated again
