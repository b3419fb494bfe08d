"""Finding the images and their classes in a user's image folder.

Layouts (as torchvision's ImageFolder, plus pre-made splits):
- ``raw/<class>/**/<image>``: every image below a top-level folder belongs to that class,
  nested sub-folders included;
- ``raw/{train,valid|val|validation,test}/<class>/**/<image>``: the split is kept.

Every file below ``raw`` is accounted for: it becomes a candidate image or an ignored entry
with a reason (hidden files and folders such as ``.DS_Store``, ``._*`` AppleDouble files and
``.ipynb_checkpoints``, ``__MACOSX``, files without an image extension, files outside class
folders, broken links). Symbolic links are followed, each folder at most once per class, so
link loops end.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from plankton_transfer.errors import UserError
from plankton_transfer.data.images import is_image_name

SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
IGNORED_FOLDERS = {"__MACOSX", "__pycache__"}


@dataclasses.dataclass(frozen=True)
class Candidate:
    path: str  # POSIX path relative to the dataset root
    label_name: str
    split: str  # "" unless the dataset came with split folders


@dataclasses.dataclass
class Scan:
    layout: str  # "class folders" or "split folders"
    candidates: list[Candidate] = dataclasses.field(default_factory=list)
    ignored: list[dict] = dataclasses.field(default_factory=list)  # {"path", "reason", "files"}
    class_folders: dict[str, int] = dataclasses.field(default_factory=dict)  # class -> candidate count

    @property
    def files_seen(self) -> int:
        return len(self.candidates) + sum(entry["files"] for entry in self.ignored)


def is_hidden(name: str) -> bool:
    return name.startswith(".") or name in IGNORED_FOLDERS


def scan_dataset(raw: str | Path) -> Scan:
    """List every file below ``raw`` as a candidate image or an ignored entry."""
    raw = Path(raw)
    if not raw.is_dir():
        raise UserError(f"data.raw: {raw} is not a folder; point data.raw in params.yaml at your image folder")
    top_dirs = sorted_entries(raw)
    split_dirs = {e.name for e in top_dirs if e.is_dir() and not is_hidden(e.name) and e.name.lower() in SPLIT_FOLDERS}
    class_dirs = {e.name for e in top_dirs if e.is_dir() and not is_hidden(e.name)} - split_dirs
    if split_dirs and class_dirs:
        raise UserError(
            f"{raw} mixes split folders ({', '.join(sorted(split_dirs))}) with class folders "
            f"({', '.join(sorted(class_dirs)[:3])}...); put every class inside the split folders or remove the split folders"
        )
    if split_dirs:
        if not any(SPLIT_FOLDERS[name.lower()] == "train" for name in split_dirs):
            raise UserError(f"{raw} has split folders ({', '.join(sorted(split_dirs))}) but no train/ folder; add one")
        scan = Scan(layout="split folders")
        for entry in top_dirs:
            if entry.name in split_dirs:
                scan_classes(raw, Path(entry.name), SPLIT_FOLDERS[entry.name.lower()], scan)
            else:
                ignore_entry(raw, Path(entry.name), scan)
    else:
        scan = Scan(layout="class folders")
        scan_classes(raw, Path(), "", scan)
    return scan


def sorted_entries(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return sorted(it, key=lambda e: e.name)


def scan_classes(raw: Path, parent: Path, split: str, scan: Scan) -> None:
    """Each visible sub-folder of ``raw/parent`` is a class; anything else is ignored."""
    for entry in sorted_entries(raw / parent):
        rel = parent / entry.name
        if entry.is_dir() and not is_hidden(entry.name):
            before = len(scan.candidates)
            collect_images(raw, rel, entry.name, split, scan, visited=set())
            scan.class_folders[entry.name] = scan.class_folders.get(entry.name, 0) + len(scan.candidates) - before
        else:
            ignore_entry(raw, rel, scan)


def collect_images(raw: Path, rel: Path, label: str, split: str, scan: Scan, visited: set) -> None:
    """Walk one class folder, following links but never entering a folder twice."""
    real = os.stat(raw / rel)  # follows links
    identity = (real.st_dev, real.st_ino)
    if identity in visited:
        scan.ignored.append({"path": rel.as_posix(), "reason": "folder already visited (link loop)", "files": 0})
        return
    visited.add(identity)
    for entry in sorted_entries(raw / rel):
        child = rel / entry.name
        if is_hidden(entry.name):
            ignore_entry(raw, child, scan)
        elif entry.is_dir():
            collect_images(raw, child, label, split, scan, visited)
        elif not entry.is_file():
            scan.ignored.append({"path": child.as_posix(), "reason": "broken link or special file", "files": 1})
        elif not is_image_name(entry.name):
            suffix = Path(entry.name).suffix.lower() or "no extension"
            scan.ignored.append({"path": child.as_posix(), "reason": f"not an image file ({suffix})", "files": 1})
        else:
            scan.candidates.append(Candidate(path=child.as_posix(), label_name=label, split=split))


def ignore_entry(raw: Path, rel: Path, scan: Scan) -> None:
    """Record a file, or a whole folder with its file count, as ignored."""
    full, name = raw / rel, rel.name
    if full.is_dir():
        files = sum(len(names) for _, _, names in os.walk(full))  # links not followed: counts end
        reason = "hidden folder" if name.startswith(".") else "system folder"
        scan.ignored.append({"path": rel.as_posix() + "/", "reason": reason, "files": files})
        return
    if name.startswith("._"):
        reason = "hidden file (macOS AppleDouble)"
    elif name.startswith("."):
        reason = "hidden file"
    else:
        reason = "file outside class folders"
    scan.ignored.append({"path": rel.as_posix(), "reason": reason, "files": 1})
