"""The finding vocabulary, the label states and each dataset's name map (said by its source,
read through `cxr_tf.sources.registry`), and the datasets doc's table of that map."""

from __future__ import annotations

from pathlib import Path

from cxr_tf import labels
from cxr_tf.labels import FINDINGS, VOCABULARY
from cxr_tf.sources import padchest, registry

SOURCES = [registry.get(name) for name in registry.SOURCES]

SOURCE_LABELS = {source.name: source.labels for source in SOURCES if source.labels}

DATASETS_DOC = Path(__file__).resolve().parents[1] / "docs" / "datasets.md"


def test_vocabulary_extends_nih_in_order():
    assert VOCABULARY[: len(FINDINGS)] == FINDINGS and len(FINDINGS) == 14
    assert len(set(VOCABULARY)) == len(VOCABULARY) == 20
    assert all(" " not in name for name in VOCABULARY)  # safe in flags and file names
    assert labels.STATES == {0: "negative", 1: "positive", 2: "uncertain", 3: "not labelled"}


def test_every_map_targets_the_vocabulary():
    for source, mapping in SOURCE_LABELS.items():
        assert set(mapping.values()) <= set(VOCABULARY), source
    assert registry.labelled_by("nih") == FINDINGS
    chexpert = registry.labelled_by("chexpert")
    assert "Hernia" not in chexpert and "Effusion" in chexpert and len(chexpert) == 13
    assert padchest.PADCHEST_NORMAL not in padchest.PADCHEST_LABELS


def test_nih_parsing_refuses_the_other_datasets_names():
    # NIH's label file may only name NIH's 14: "Fracture" is in the vocabulary, not in NIH.
    try:
        labels.parse_finding_labels("Fracture")
    except labels.UnknownFindingError as err:
        assert "Fracture" in str(err)
    else:
        raise AssertionError("Fracture accepted as an NIH label")


def test_datasets_doc_table_is_the_map():
    text = DATASETS_DOC.read_text()
    header = "| finding | NIH | CheXpert, MIMIC-CXR-JPG | PadChest |"
    assert header in text
    lines = text.split(header, 1)[1].splitlines()[2:]
    table = lines[: next(i for i, line in enumerate(lines) if not line.startswith("|"))]
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:5]] for line in table
    }
    assert list(rows) == list(VOCABULARY)
    for finding, cells in rows.items():
        for source, cell in zip(("nih", "chexpert", "padchest"), cells, strict=True):
            names = [k for k, v in SOURCE_LABELS[source].items() if v == finding]
            want = ", ".join(f"`{n}`" for n in names) if names else "—"
            assert cell == want, (finding, source)


def test_datasets_doc_table_is_the_registry():
    # Each source says what the datasets table (docs/datasets.md) says about it, so a new
    # source cannot be added without its row, nor a row edited without its source.
    text = DATASETS_DOC.read_text()
    header = "| `--source` | what `--root` holds | labels | official split |"
    assert header in text
    lines = text.split(header, 1)[1].splitlines()[2:]
    table = lines[: next(i for i, line in enumerate(lines) if not line.startswith("|"))]
    rows = {}
    for line in table:
        # cells are split on " | " so that an escaped pipe (`A\|B`) stays inside its cell
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        rows[cells[0].strip("`")] = cells[1:]
    assert sorted(rows) == sorted(registry.SOURCES)
    for source in SOURCES:
        assert rows[source.name] == [source.holds, source.labels_note, source.split_note], (
            source.name
        )
