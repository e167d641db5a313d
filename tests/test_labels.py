"""The finding vocabulary, the label states and each dataset's name map, and the README's
table of that map."""

from __future__ import annotations

from pathlib import Path

from cxr_tf import labels
from cxr_tf.labels import FINDINGS, SOURCE_LABELS, VOCABULARY

README = Path(__file__).resolve().parents[1] / "README.md"


def test_vocabulary_extends_nih_in_order():
    assert VOCABULARY[: len(FINDINGS)] == FINDINGS and len(FINDINGS) == 14
    assert len(set(VOCABULARY)) == len(VOCABULARY) == 20
    assert all(" " not in name for name in VOCABULARY)  # safe in flags and file names
    assert labels.STATES == {0: "negative", 1: "positive", 2: "uncertain", 3: "not labelled"}


def test_every_map_targets_the_vocabulary():
    for source, mapping in SOURCE_LABELS.items():
        assert set(mapping.values()) <= set(VOCABULARY), source
    assert labels.labelled_by("nih") == FINDINGS
    chexpert = labels.labelled_by("chexpert")
    assert "Hernia" not in chexpert and "Effusion" in chexpert and len(chexpert) == 13
    assert labels.PADCHEST_NORMAL not in labels.PADCHEST_LABELS


def test_nih_parsing_refuses_the_other_datasets_names():
    # NIH's label file may only name NIH's 14: "Fracture" is in the vocabulary, not in NIH.
    try:
        labels.parse_finding_labels("Fracture")
    except labels.UnknownFindingError as err:
        assert "Fracture" in str(err)
    else:
        raise AssertionError("Fracture accepted as an NIH label")


def test_readme_table_is_the_map():
    text = README.read_text()
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
