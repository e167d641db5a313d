"""Every dataset source, in one place: the one module that imports the source modules.

The rest of the package asks here for a source (`get`), detects one (`detect_source`; and
`why_not` says per source why a folder is not it) or reads one (`read_catalog`); it never
imports a source module itself. Adding a source is one module beside these (its
`SOURCE = base.Source(...)`), its test, its synthetic imitation, its row in the
datasets table (docs/datasets.md) and one line below.
"""

from __future__ import annotations

from pathlib import Path

from cxr_tf.sources import chexpert, csv_labels, folders, mimic, nih, padchest, rsna, vindr
from cxr_tf.sources.base import Source
from cxr_tf.sources.catalog import Catalog, CatalogError

# In detection order, most specific first: the public releases' own files, then a labels
# CSV, then class folders (which almost any folder of images looks like).
_ALL: tuple[Source, ...] = (
    nih.SOURCE,
    chexpert.SOURCE,
    mimic.SOURCE,
    padchest.SOURCE,
    vindr.SOURCE,
    rsna.SOURCE,
    csv_labels.SOURCE,
    folders.SOURCE,
)
_BY_NAME: dict[str, Source] = {source.name: source for source in _ALL}
# The names `--source` takes, in detection order.
SOURCES: tuple[str, ...] = tuple(_BY_NAME)


def get(name: str) -> Source:
    """The source `--source NAME` means; CatalogError naming the choices when none is."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise CatalogError(
            f"source: unknown {name!r}; choose from {', '.join(SOURCES)}"
        ) from None


def labelled_by(name: str) -> tuple[str, ...]:
    """The vocabulary findings source `name`'s label map reaches (in vocabulary order)."""
    return get(name).labelled()


def detect_source(root: str | Path) -> str:
    """The source a folder holds, from the files it has; CatalogError when none fits, with
    one line per source saying why the folder is not it."""
    root = Path(root)
    for source in _ALL:
        if source.detect(root):
            return source.name
    reasons = "".join(
        f"\n  {name}: {reason or 'its files are not there'}"
        for name, reason in why_not(root).items()
    )
    raise CatalogError(
        f"{root}: cannot tell which dataset this is; pass --source (the reader then names the "
        f"file and row at fault). Why it is none of them:{reasons}"
    )


def missing_official_split(source: str, root: str | Path) -> str:
    """What `root` lacks of its dataset's official split ("" when nothing, or when the
    source has no official split of its own); `source` may be "auto"."""
    root = Path(root)
    if source == "auto":
        try:
            source = detect_source(root)
        except CatalogError:
            return ""  # reading the folder reports it
    check = get(source).missing_split
    try:
        return check(root) if check is not None else ""
    except OSError:  # no label file: reading the folder reports it
        return ""


def why_not(root: str | Path) -> dict[str, str]:
    """Per source (detection order), why `root` is not that source; "" for a match."""
    root = Path(root)
    out = {}
    for source in _ALL:
        if source.why_not is not None:
            out[source.name] = source.why_not(root)
        else:
            out[source.name] = "" if source.detect(root) else "its files are not there"
    return out


def read_catalog(source: str, root: str | Path, cache_dir: Path | None = None) -> Catalog:
    """Reads `root` as dataset `source` (one of SOURCES)."""
    return get(source).read(Path(root), cache_dir)
