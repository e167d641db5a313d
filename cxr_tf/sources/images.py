"""Finding and reading NIH images in the layouts users have.

- a flat `images/` folder (or PNGs directly in the root);
- the `images_001/images/ ... images_012/images/` folders NIH's archives unpack to;
- the downloaded `images_0NN.tar.gz` archives themselves, read without unpacking.

Archive members are never extracted to disk: only regular files whose path is relative,
free of `..` and ending in an image name are indexed; anything else is reported in
`ImageSource.rejected`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

_IMAGE_RE = re.compile(r"^\d{8}_\d{3}\.png$")
_ARCHIVE_RE = re.compile(r"^images_\d{3}\.tar(\.gz)?$")


def _safe_member(name: str) -> bool:
    path = PurePosixPath(name)
    return not path.is_absolute() and ".." not in path.parts and not name.startswith("/")


@dataclass
class ImageSource:
    """Where every image of an NIH root lives: a path on disk or (archive, member)."""

    root: Path
    layout: str
    files: dict[str, Path] = field(default_factory=dict)
    members: dict[str, tuple[Path, str]] = field(default_factory=dict)
    rejected: list[str] = field(default_factory=list)
    # image name -> why an archive member of that name was refused ("rejected as unsafe: ...")
    rejected_names: dict[str, str] = field(default_factory=dict)
    # image name -> "size:mtime" of its file or archive member (what a resume compares)
    stats: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> set[str]:
        return set(self.files) | set(self.members)

    def __len__(self) -> int:
        return len(self.files) + len(self.members)

    def locate(self, name: str) -> str:
        """A human-readable location of an image, for error messages."""
        if name in self.files:
            return str(self.files[name])
        archive, member = self.members[name]
        return f"{archive}:{member}"

    def identity(self, name: str) -> str:
        """Size and modification time of an image's file or archive member."""
        return self.stats.get(name, "")

    def read(self, names: Iterable[str]) -> Iterator[tuple[str, bytes | Exception]]:
        """Yields (name, bytes) — or (name, the error) — for each name.

        Folder images come in the given order; archive images in archive order, each
        archive streamed once.
        """
        names = list(names)
        by_archive: dict[Path, set[str]] = {}
        for name in names:
            if name in self.files:
                continue
            archive, member = self.members[name]
            by_archive.setdefault(archive, set()).add(member)
        for name in names:
            if name in self.files:
                try:
                    yield name, self.files[name].read_bytes()
                except OSError as err:
                    yield name, err
        for archive, wanted in sorted(by_archive.items()):
            yield from _stream_archive(archive, wanted)


def _stream_archive(archive: Path, wanted: set[str]) -> Iterator[tuple[str, bytes | Exception]]:
    left = set(wanted)
    try:
        with tarfile.open(archive, mode="r|*") as tar:
            for info in tar:
                if not left:
                    break
                if info.name not in left:
                    continue
                left.discard(info.name)
                handle = tar.extractfile(info)
                if handle is None:
                    error = OSError(f"{archive}:{info.name} unreadable")
                    yield PurePosixPath(info.name).name, error
                    continue
                yield PurePosixPath(info.name).name, handle.read()
    except (OSError, tarfile.TarError, EOFError) as err:
        for member in sorted(left):
            yield PurePosixPath(member).name, OSError(f"{archive}: {err}")
        return
    for member in sorted(left):
        yield PurePosixPath(member).name, OSError(f"{archive}:{member} missing from archive")


def _index_archive(archive: Path) -> tuple[dict[str, list], list[list[str]]]:
    """(image name -> [member, size, mtime], [[image name or member, reason]])."""
    found: dict[str, list] = {}
    rejected: list[list[str]] = []
    with tarfile.open(archive, mode="r|*") as tar:
        for info in tar:
            base = PurePosixPath(info.name).name
            if not _safe_member(info.name):
                rejected.append([base, f"{archive}: rejected as unsafe: {info.name}"])
            elif not info.isfile():
                if _IMAGE_RE.match(base):
                    rejected.append([base, f"{archive}: not a regular file: {info.name}"])
            elif _IMAGE_RE.match(base):
                found[base] = [info.name, int(info.size), int(info.mtime)]
    return found, rejected


def _archive_index(
    archive: Path, cache_dir: Path | None
) -> tuple[dict[str, list], list[list[str]]]:
    """Lists an archive once; the listing is cached in `cache_dir` (keyed by size+mtime)."""
    stat = archive.stat()
    key = f"v2|{archive.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    digest = hashlib.sha256(str(archive.resolve()).encode()).hexdigest()[:12]
    cache = cache_dir / f"{archive.name}.{digest}.json" if cache_dir else None
    if cache is not None and cache.exists():
        try:
            data = json.loads(cache.read_text())
        except (OSError, ValueError):
            data = {}
        if data.get("key") == key:
            return data["members"], data["rejected"]
    members, rejected = _index_archive(archive)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".tmp")
        tmp.write_text(json.dumps({"key": key, "members": members, "rejected": rejected}))
        os.replace(tmp, cache)
    return members, rejected


def discover(root: str | Path, cache_dir: Path | None = None) -> ImageSource:
    """Indexes the images under an NIH root (any of the three layouts, even mixed).

    `cache_dir` keeps the listing of each `.tar.gz` (listing a 4 GB archive takes minutes).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"NIH root {root} is not a folder")
    source = ImageSource(root=root, layout="")
    layouts = []
    folders = [root, root / "images"] + sorted(root.glob("images_*/images"))
    for folder in folders:
        if not folder.is_dir():
            continue
        count = 0
        with os.scandir(folder) as entries:
            for entry in entries:
                if _IMAGE_RE.match(entry.name) and entry.is_file():
                    if entry.name not in source.files:
                        stat = entry.stat()
                        source.files[entry.name] = Path(entry.path)
                        source.stats[entry.name] = f"{stat.st_size}:{stat.st_mtime_ns}"
                    count += 1
        if count:
            layouts.append("flat" if folder in (root, root / "images") else "folders")
    archives = sorted(p for p in root.iterdir() if _ARCHIVE_RE.match(p.name))
    for archive in archives:
        members, rejected = _archive_index(archive, cache_dir)
        for base, reason in rejected:
            source.rejected.append(reason)
            source.rejected_names.setdefault(base, reason)
        for base, (member, size, mtime) in members.items():
            if base not in source.files and base not in source.members:
                source.members[base] = (archive, member)
                source.stats[base] = f"{size}:{mtime}"
        layouts.append("archives")
    source.layout = "+".join(sorted(set(layouts))) or "empty"
    return source
