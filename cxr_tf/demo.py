"""`python -m cxr_tf.demo`: the whole job on an embedded default, on a CPU, in minutes.

1. generates a synthetic NIH-like folder (`cxr_tf.synth`: the NIH files and columns,
   findings drawn as learnable patterns with known boxes);
2. converts it into patient-disjoint TFRecord shards (`cxr_tf.convert`);
3. trains the `tiny` backbone on all 14 findings (`cxr_tf.training.trainer`) with the
   `cpu-smoke` recipe (`cxr_tf/recipes/cpu-smoke.json`, also `python -m cxr_tf.fit --recipe
   cpu-smoke`);
4. evaluates it on the test split, localizes the findings with Grad-CAM against the boxes
   and exports a SavedModel for TF Serving;
5. evaluates it on external data: a CheXpert-style imitation (`cxr_tf.synth --layout
   chexpert`: another hospital's image style, uncertain and blank labels, laterals left
   out) over the findings both label, with the internal-vs-external AUROC table.

Everything lands under `--out` (default `demo/`); rerunning reuses finished steps.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from cxr_tf import python_command, recipes
from cxr_tf.cli import HelpFormatter, Parser, exit_if_checking, run_command

RECIPE = "cpu-smoke"  # the demo's training settings live in that recipe only


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.time()


def _done(start: float) -> None:
    print(f"   ({time.time() - start:.0f} s)", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(
        prog="python -m cxr_tf.demo",
        description=__doc__,
        formatter_class=HelpFormatter,
    )
    recipe = recipes.load(RECIPE)
    parser.add_argument("--out", default="demo", help="working folder")
    parser.add_argument("--n", type=int, default=1500, help="synthetic images")
    parser.add_argument(
        "--epochs",
        type=int,
        default=recipe.train.epochs,
        help=f"training epochs, as in the {RECIPE} recipe",
    )
    parser.add_argument(
        "--seed", type=int, default=recipe.train.seed, help="seed of data and training"
    )
    parser.add_argument(
        "--external_n", type=int, default=800, help="images of the external CheXpert-style set"
    )
    args = parser.parse_args(argv)
    exit_if_checking(parser)

    from cxr_tf.config import ConvertConfig, SplitConfig, SynthConfig
    from cxr_tf.data import conversion
    from cxr_tf.synthetic import layouts as synthetic_layouts
    from cxr_tf.training import trainer

    out = Path(args.out)
    nih_root = out / "nih"
    begin = time.time()
    start = _step(f"1/5 synthetic NIH-like data: {args.n} images -> {nih_root}")
    marker = nih_root / ".demo_synth.json"
    wanted = {"n": args.n, "seed": args.seed}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        print("   already there")
    else:
        synthetic_layouts.generate_layout(
            SynthConfig(
                out=str(nih_root), n=args.n, seed=args.seed, image_size=256, prevalence="0.1"
            )
        )
        marker.write_text(json.dumps(wanted))
    _done(start)

    # The recipe names the dataset as the default --out leaves it: demo/tfrecords/demo_64.
    dataset_name = Path(recipe.data.dataset).name
    size = recipe.model.input_size  # stored at the side the model takes: no resizing
    start = _step(f"2/5 conversion to sharded TFRecords ({size} px, official-style split)")
    convert_config = ConvertConfig(
        root=str(nih_root),
        out_dir=str(out / "tfrecords"),
        name=dataset_name,
        stored_size=size,
        split=SplitConfig(strategy="official", val_fraction=0.2, seed=args.seed),
    )
    manifest = conversion.convert(convert_config)
    for split, entry in manifest.splits.items():
        print(f"   {split:>10}: {entry.images:5d} images, {entry.patients:4d} patients")
    _done(start)

    run_dir = out / "runs" / "tiny"
    start = _step(f"3/5 training the tiny backbone on 14 findings ({RECIPE} recipe) -> {run_dir}")
    run = recipes.load(
        RECIPE,
        {
            "data.dataset": str(out / "tfrecords" / dataset_name),
            "train.run_dir": str(run_dir),
            "train.epochs": args.epochs,
            "train.early_stopping_patience": args.epochs,  # the demo never stops early
            "train.seed": args.seed,
        },
    )
    summary = trainer.fit(run, verbose=2)
    _done(start)

    from cxr_tf import evaluate, export, localize
    from cxr_tf.evaluation import evaluator

    start = _step("4/5 evaluation, Grad-CAM localization and SavedModel export")
    evaluate.main(["--run_dir", str(run_dir), "--split", "test", "--bootstrap", "500"])
    localize.main(["--run_dir", str(run_dir), "--split", "test", "--overlays", "8"])
    export_dir = out / "export"
    export.main(["--run_dir", str(run_dir), "--out", str(export_dir), "--name", "demo"])
    _done(start)

    external_root = out / "chexpert"
    start = _step(f"5/5 external evaluation on a CheXpert-style imitation -> {external_root}")
    marker = external_root / ".demo_synth.json"
    wanted = {"n": args.external_n, "seed": args.seed + 1}
    if not (marker.exists() and json.loads(marker.read_text()) == wanted):
        synthetic_layouts.generate_layout(
            SynthConfig(out=str(external_root), n=args.external_n, seed=args.seed + 1,
                        image_size=256, prevalence="0.1", layout="chexpert"),  # fmt: skip
            progress=False,
        )
        marker.write_text(json.dumps(wanted))
    external = conversion.convert(
        ConvertConfig(
            root=str(external_root), out_dir=str(out / "tfrecords"), name=f"chexpert_{size}",
            stored_size=size, split=SplitConfig(strategy="official", seed=args.seed),
        ),
        progress=False,
    )  # fmt: skip
    print(f"   {external.splits['test'].images} external test images (CheXpert's valid.csv)")
    evaluate.main(
        ["--run_dir", str(run_dir), "--dataset", str(out / "tfrecords" / f"chexpert_{size}"),
         "--split", "test", "--bootstrap", "500"]
    )  # fmt: skip
    _done(start)

    best = summary["best_val_mean_auroc"]
    python = python_command()
    print(
        f"\nDone in {time.time() - begin:.0f} s.\n"
        f"run directory: {run_dir}\n"
        f"best validation mean AUROC (14 synthetic findings): {best:.3f} "
        f"at epoch {summary['best_epoch']}"
    )
    print(f"evaluation report: {run_dir / evaluator.EVAL_DIR / 'test-best' / 'report.md'}")
    print(f"localization report: {run_dir / 'localize_test' / 'localization.md'}")
    print(f"SavedModel for TF Serving: {export_dir / 'demo'} (models.config beside it)")
    print(
        "\nOn the real NIH ChestX-ray14 data (images_0NN.tar.gz or unpacked, with the label,\n"
        "box and split files in one folder):\n"
        f"  {python} -m cxr_tf.convert --root /data/nih --stored_size 384\n"
        f"  {python} -m cxr_tf.fit --recipe densenet121-official\n"
        f"  {python} -m cxr_tf.evaluate --run_dir RUN   # RUN: the directory fit prints\n"
        f"(`{python} -m cxr_tf.fit --recipe list`: the published setups, CheXNet among them,\n"
        "with the figures they should reach. DenseNet121 wants a GPU: about 4 images/s on a\n"
        "2-core CPU; the ImageNet weights are downloaded by Keras on first use, or give a\n"
        "local file with --model.weights PATH.)"
    )
    return 0


if __name__ == "__main__":
    run_command(main, "demo")
