"""Ground-truth labels for check images: a CSV (``file,class_index``) or wnid-named subfolders."""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError

WNID = re.compile(r"^n\d{8}$")


def read_labels_csv(path: str | Path) -> dict[str, int]:
    """``file,class_index`` (a header row naming them; other columns, e.g. ``wnid``, are ignored).
    Keys are the file names as written (relative paths or base names)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"labels file not found: {p}")
    try:
        with p.open(newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read labels file {p}: {exc}") from None
    if not rows:
        raise InputError(f"labels file {p} is empty")
    header = [h.strip().lower() for h in rows[0]]
    if "file" in header and "class_index" in header:
        fi, ci, body = header.index("file"), header.index("class_index"), rows[1:]
    else:
        fi, ci, body = 0, 1, rows
    labels: dict[str, int] = {}
    for n, row in enumerate(body, start=2 if body is not rows else 1):
        if not row or not "".join(row).strip():
            continue
        try:
            labels[row[fi].strip()] = int(row[ci])
        except (IndexError, ValueError):
            raise InputError(f"labels file {p} line {n}: expected file,class_index, got {','.join(row)!r}") from None
    if not labels:
        raise InputError(f"labels file {p} has no rows")
    return labels


def labels_for(files: Sequence[Path], root: Path | None, table: dict[str, int] | None,
               wnids: list[str] | None, num_classes: int) -> np.ndarray | None:
    """Class index per file (-1 where unknown), from ``table`` or from wnid-named parent folders."""
    if table is None and wnids is None:
        return None
    index = {w: i for i, w in enumerate(wnids or [])}
    out = np.full(len(files), -1, dtype=np.int64)
    for i, f in enumerate(files):
        if table is not None:
            rel = f.relative_to(root).as_posix() if root is not None and root in f.parents else f.name
            value = table.get(rel, table.get(f.name))
        else:
            value = index.get(f.parent.name) if WNID.match(f.parent.name) else None
        if value is not None:
            if not 0 <= value < num_classes:
                raise InputError(f"label {value} for {f.name} is outside 0..{num_classes - 1}")
            out[i] = value
    return out if (out >= 0).any() else None


def has_wnid_folders(root: Path) -> bool:
    subdirs = [d for d in root.iterdir() if d.is_dir()]
    return bool(subdirs) and all(WNID.match(d.name) for d in subdirs)
