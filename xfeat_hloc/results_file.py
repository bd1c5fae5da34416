"""Localization results files (visuallocalization.net's submission format).

One line per query: ``name qw qx qy qz tx ty tz``, the world-to-camera pose
(``x_cam = R(q) x_world + t``, Hamilton quaternion with the scalar first, metres
for Aachen), where ``name`` is the query image's base name (hloc writes
``query/night/nexus5x/IMG_1.jpg`` as ``IMG_1.jpg``).

:func:`validate_results` checks a file against the query lists: every query
present exactly once, no unknown names, 8 fields per line, finite numbers, unit
quaternions.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pycolmap

from .errors import UserError


class InvalidResultsError(UserError, ValueError):
    """A results file that the submission server would reject or misread."""


def result_name(query: str, prepend_camera_name: bool = False) -> str:
    """The name a query gets in the results file (its base name, or
    ``camera/basename`` with ``prepend_camera_name``)."""
    parts = query.split("/")
    return "/".join(parts[-2:]) if prepend_camera_name else parts[-1]


def pose_to_line(name: str, cam_from_world: pycolmap.Rigid3d) -> str:
    """``name qw qx qy qz tx ty tz`` (with the newline)."""
    qx, qy, qz, qw = cam_from_world.rotation.quat
    if qw < 0:  # one of the two equivalent quaternions, consistently
        qw, qx, qy, qz = -qw, -qx, -qy, -qz
    values = (qw, qx, qy, qz, *cam_from_world.translation)
    return name + " " + " ".join(f"{v:.17g}" for v in values) + "\n"


def write_results(
    poses: Mapping[str, pycolmap.Rigid3d],
    path: Path,
    prepend_camera_name: bool = False,
) -> Path:
    """Write ``{query name: cam_from_world}`` atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for query, pose in poses.items():
            f.write(pose_to_line(result_name(query, prepend_camera_name), pose))
    tmp.replace(path)
    return path


def read_results(path: Path) -> dict[str, pycolmap.Rigid3d]:
    """``{name: cam_from_world}`` of a results file that passed validation."""
    poses = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        name, *values = line.split()
        qw, qx, qy, qz, tx, ty, tz = (float(v) for v in values)
        rotation = pycolmap.Rotation3d(np.array([qx, qy, qz, qw]))
        poses[name] = pycolmap.Rigid3d(rotation, np.array([tx, ty, tz]))
    return poses


@dataclass
class ValidationReport:
    """What :func:`validate_results` found.

    Attributes:
        path: the results file.
        num_queries: queries expected (from the query lists).
        num_lines: non-empty lines in the file.
        missing: expected names with no line.
        duplicates: names with more than one line.
        unknown: names that are no query.
        malformed: ``"line N: reason"`` entries (field count, numbers,
            quaternion norm).
        ambiguous: query base names shared by several queries (the format
            cannot tell them apart).
    """

    path: Path
    num_queries: int
    num_lines: int = 0
    missing: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    malformed: list[str] = field(default_factory=list)
    ambiguous: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.missing
            or self.duplicates
            or self.unknown
            or self.malformed
            or self.ambiguous
        )

    def summary(self, max_items: int = 5) -> str:
        """A readable report, a few examples per kind of problem."""
        head = (
            f"{self.path}: {self.num_lines} lines for {self.num_queries} queries: "
            + ("valid." if self.ok else "INVALID.")
        )
        lines = [head]
        for label, items, fix in (
            ("missing queries", self.missing, "localize them or add a pose"),
            ("duplicated names", self.duplicates, "keep one line per query"),
            ("names that are no query", self.unknown, "check the query lists"),
            ("malformed lines", self.malformed, "8 fields, finite, unit q"),
            ("ambiguous base names", self.ambiguous, "use prepend_camera_name"),
        ):
            if items:
                shown = ", ".join(items[:max_items])
                more = (
                    f" (+{len(items) - max_items} more)"
                    if len(items) > max_items
                    else ""
                )
                lines.append(f"  - {len(items)} {label} ({fix}): {shown}{more}")
        return "\n".join(lines)


def validate_results(
    path: Path,
    queries: Iterable[str],
    prepend_camera_name: bool = False,
    quaternion_tolerance: float = 1e-3,
) -> ValidationReport:
    """Check a results file against the full query names of the query lists.

    Args:
        path: the results file.
        queries: query image names as in the query lists
            (``query/day/milestone/x.jpg``).
        prepend_camera_name: whether names are ``camera/basename``.
        quaternion_tolerance: accepted ``| |q| - 1 |``.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidResultsError(f"Results file not found: {path}.")
    expected_names = [result_name(q, prepend_camera_name) for q in queries]
    counts = Counter(expected_names)
    report = ValidationReport(path, num_queries=len(expected_names))
    report.ambiguous = sorted(n for n, c in counts.items() if c > 1)
    expected = set(expected_names)
    seen: Counter[str] = Counter()
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            report.num_lines += 1
            if len(parts) != 8:
                report.malformed.append(
                    f"line {lineno}: {len(parts)} fields instead of 8"
                )
                continue
            name = parts[0]
            seen[name] += 1
            if name not in expected:
                report.unknown.append(name)
            try:
                values = [float(v) for v in parts[1:]]
            except ValueError:
                report.malformed.append(f"line {lineno}: a value is not a number")
                continue
            if not all(math.isfinite(v) for v in values):
                report.malformed.append(f"line {lineno}: a value is not finite")
                continue
            norm = math.sqrt(sum(v * v for v in values[:4]))
            if abs(norm - 1.0) > quaternion_tolerance:
                report.malformed.append(
                    f"line {lineno}: quaternion norm {norm:.6g} is not 1"
                )
    report.duplicates = sorted(n for n, c in seen.items() if c > 1)
    report.missing = sorted(expected - set(seen))
    return report
