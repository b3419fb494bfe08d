"""Finding the images and their classes in a user's image folder.

Layouts (as torchvision's ImageFolder, plus pre-made splits):
- ``raw/<class>/**/<image>``: every image below a top-level folder belongs to that class,
  nested sub-folders included;
- ``raw/{train,valid|val|validation,test}/<class>/**/<image>``: the split is kept.

Every file below ``raw`` is accounted for: it becomes a candidate image or an ignored entry
with a reason (hidden files and folders such as ``.DS_Store``, ``._*`` AppleDouble files and
``.ipynb_checkpoints``, ``__MACOSX``, files without an image extension, files outside class
folders, broken links and file link loops). Symbolic links are followed, each folder at most
once per class, so link loops end.

Two cases are refused rather than guessed at:
- a file or folder name that is not valid UTF-8 (``pl\xe4nkton.jpg`` from an old Latin-1
  system): its images are rejected with the reason, shown with ``\xe4`` escapes, because the
  name could not be written to the manifest, the report or a model file;
- a folder link that leads outside ``data.raw``: DVC does not hash through folder links,
  so changes there would leave ``dvc status`` "up to date" and results silently stale.
  The scan stops with the fix (copy the data in, or point ``data.raw`` at the real folder).
  Links to files are fine: DVC hashes the file they point to.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from plankton_transfer.errors import UserError
from plankton_transfer.data.images import is_image_name

NAME_NOT_UTF8 = "name not UTF-8"
SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
IGNORED_FOLDERS = {"__MACOSX", "__pycache__"}


@dataclasses.dataclass(frozen=True)
class Candidate:
    path: str  # POSIX path relative to the dataset root
    label_name: str
    split: str  # "" unless the dataset came with split folders
    sample: str = ""  # the sample it was imaged in, where the input says (EcoTaxa sample_id)


@dataclasses.dataclass
class Scan:
    layout: str  # "class folders" or "split folders"
    candidates: list[Candidate] = dataclasses.field(default_factory=list)
    ignored: list[dict] = dataclasses.field(default_factory=list)  # {"path", "reason", "files"}
    rejected: list[dict] = dataclasses.field(default_factory=list)  # image files refused by name: {"path", "reason"}
    class_folders: dict[str, int] = dataclasses.field(default_factory=dict)  # class -> image files found
    outside_links: list[str] = dataclasses.field(default_factory=list)  # folder links leaving data.raw

    @property
    def files_seen(self) -> int:
        return len(self.candidates) + len(self.rejected) + sum(entry["files"] for entry in self.ignored)


def is_utf8(name: str) -> bool:
    """False for a name the file system gave as undecodable bytes (surrogate escapes)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def display_path(path: str | Path) -> str:
    """``path`` as printable text: undecodable bytes of a non-UTF-8 name become ``\\xe4`` escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def entry_is_dir(entry: os.DirEntry) -> bool:
    """``entry.is_dir()``, but a link loop (``a.jpg -> b.jpg -> a.jpg``) counts as a broken link."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def entry_is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def is_hidden(name: str) -> bool:
    return name.startswith(".") or name in IGNORED_FOLDERS


def scan_dataset(raw: str | Path) -> Scan:
    """List every file below ``raw`` as a candidate image or an ignored entry."""
    raw = Path(raw)
    if not raw.is_dir():
        raise UserError(f"data.raw: {raw} is not a folder; point data.raw in params.yaml at your image folder")
    top_dirs = sorted_entries(raw)
    split_dirs = {e.name for e in top_dirs if entry_is_dir(e) and not is_hidden(e.name) and e.name.lower() in SPLIT_FOLDERS}
    class_dirs = {e.name for e in top_dirs if entry_is_dir(e) and not is_hidden(e.name)} - split_dirs
    if split_dirs and class_dirs:
        raise UserError(
            f"{display_path(raw)} mixes split folders ({', '.join(sorted(split_dirs))}) with class folders "
            f"({', '.join(display_path(n) for n in sorted(class_dirs)[:3])}...); put every class inside the split "
            "folders or remove the split folders"
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
    refuse_outside_links(raw, scan)
    return scan


def refuse_outside_links(raw: Path, scan: Scan) -> None:
    links = scan.outside_links
    if links:
        named = ", ".join(links[:3]) + (f" and {len(links) - 3} more" if len(links) > 3 else "")
        raise UserError(
            f"folder links leaving {display_path(raw)}: {named}; DVC does not track folders behind links, so "
            "changes there would leave results silently stale: copy the data in, or point data.raw at the real folder"
        )


def leaves_raw(raw: Path, rel: Path) -> bool:
    """Whether ``raw/rel``, links resolved, lies outside ``raw`` (itself resolved: a linked
    ``data.raw`` is fine, DVC follows that one)."""
    root, real = os.path.realpath(raw), os.path.realpath(raw / rel)
    return os.path.commonpath([root, real]) != root


def sorted_entries(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return sorted(it, key=lambda e: e.name)


def scan_classes(raw: Path, parent: Path, split: str, scan: Scan) -> None:
    """Each visible sub-folder of ``raw/parent`` is a class; anything else is ignored."""
    for entry in sorted_entries(raw / parent):
        rel = parent / entry.name
        if entry_is_dir(entry) and not is_hidden(entry.name):
            label = display_path(entry.name)
            before = len(scan.candidates) + len(scan.rejected)
            collect_images(raw, rel, label, split, scan, visited=set())
            found = len(scan.candidates) + len(scan.rejected) - before
            scan.class_folders[label] = scan.class_folders.get(label, 0) + found
        else:
            ignore_entry(raw, rel, scan)


def collect_images(raw: Path, rel: Path, label: str, split: str, scan: Scan, visited: set,
                   follow_outside: bool = False) -> None:
    """Walk one class folder, following links but never entering a folder twice; a folder link
    leaving ``raw`` is recorded in ``scan.outside_links`` (not entered) unless ``follow_outside``
    (prediction, where DVC's tracking does not matter)."""
    if not follow_outside and leaves_raw(raw, rel):
        scan.outside_links.append(display_path(rel.as_posix()))
        return
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
        elif entry_is_dir(entry):
            collect_images(raw, child, label, split, scan, visited, follow_outside)
        elif not entry_is_file(entry):  # dangling, a file link loop, a socket or device
            scan.ignored.append({"path": display_path(child.as_posix()), "reason": "broken link or special file", "files": 1})
        elif not is_image_name(entry.name):
            suffix = display_path(Path(entry.name).suffix.lower()) or "no extension"
            scan.ignored.append({"path": display_path(child.as_posix()), "reason": f"not an image file ({suffix})", "files": 1})
        elif not is_utf8(child.as_posix()):
            scan.rejected.append({"path": display_path(child.as_posix()), "kind": NAME_NOT_UTF8,
                                  "reason": f"{NAME_NOT_UTF8}: rename the file or folder in UTF-8 (e.g. with convmv)"})
        else:
            scan.candidates.append(Candidate(path=child.as_posix(), label_name=label, split=split))


def ignore_entry(raw: Path, rel: Path, scan: Scan) -> None:
    """Record a file, or a whole folder with its file count, as ignored."""
    full, name = raw / rel, rel.name
    if full.is_dir():  # pathlib: False for a link loop
        files = sum(len(names) for _, _, names in os.walk(full))  # links not followed: counts end
        reason = "hidden folder" if name.startswith(".") else "system folder"
        scan.ignored.append({"path": display_path(rel.as_posix()) + "/", "reason": reason, "files": files})
        return
    if name.startswith("._"):
        reason = "hidden file (macOS AppleDouble)"
    elif name.startswith("."):
        reason = "hidden file"
    else:
        reason = "file outside class folders"
    scan.ignored.append({"path": display_path(rel.as_posix()), "reason": reason, "files": 1})
