"""Pictures a user can open: match plots (PNG, OpenCV) and 3D views (HTML, plotly).

- :func:`plot_matches`: two images side by side with their matches as lines,
  coloured by inlier flag, by score, or by position.
- :func:`plot_pair`: the same for one pair of an hloc features.h5 / matches.h5,
  optionally marking the matches that a reconstruction kept in one 3D track.
- :func:`write_3d_html`: a self-contained HTML page (plotly.js embedded, it opens
  offline) with a reconstruction's 3D points and camera frustums, optionally
  with other cameras (e.g. the ground truth, already in the same frame).

Keypoints are ``(x, y)`` pixels with pixel centres at integer coordinates.
Files are written atomically (a temporary file, then a rename).
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pycolmap

from .errors import UserError
from .evaluation.strecha import GTCamera
from .utils.io import get_keypoints, get_matches, read_image

GREEN = (40, 200, 60)
RED = (230, 40, 40)


# ---------------------------------------------------------------------- helpers
def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _as_rgb(image: np.ndarray | str | Path) -> np.ndarray:
    if isinstance(image, (str, Path)):
        return read_image(Path(image))
    image = np.asarray(image)
    if image.dtype != np.uint8:
        scale = 255.0 if image.max() <= 1.0 else 1.0
        image = np.clip(image * scale, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def _score_colors(scores: np.ndarray) -> np.ndarray:
    """RGB colours from red (0) to green (1), ``(N, 3)`` uint8."""
    s = np.clip(np.asarray(scores, np.float64), 0, 1)[:, None]
    return (np.array(RED) * (1 - s) + np.array(GREEN) * s).astype(np.uint8)


def _position_colors(kpts: np.ndarray, width: int, height: int) -> np.ndarray:
    """Distinct hues by position in the first image, ``(N, 3)`` uint8 RGB."""
    if len(kpts) == 0:
        return np.zeros((0, 3), np.uint8)
    hue = (kpts[:, 0] / max(width, 1) * 150 + kpts[:, 1] / max(height, 1) * 29) % 180
    hsv = np.stack([hue, np.full_like(hue, 220), np.full_like(hue, 255)], -1)
    hsv = hsv.astype(np.uint8)[None]
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]


def _put_text(canvas: np.ndarray, lines: Sequence[str], scale: float) -> None:
    """White text with a dark outline at the top left, one line per entry."""
    y = int(24 * scale)
    for line in lines:
        for color, thickness in (((0, 0, 0), 4), ((255, 255, 255), 1)):
            cv2.putText(
                canvas,
                line,
                (int(8 * scale), y),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.6 * scale,
                color,
                max(1, int(round(thickness * scale))),
                cv2.LINE_AA,
            )
        y += int(24 * scale)


# ------------------------------------------------------------------ match plots
def plot_matches(
    image0: np.ndarray | str | Path,
    image1: np.ndarray | str | Path,
    kpts0: np.ndarray,
    kpts1: np.ndarray,
    path: str | Path,
    inliers: np.ndarray | None = None,
    scores: np.ndarray | None = None,
    all_kpts0: np.ndarray | None = None,
    all_kpts1: np.ndarray | None = None,
    text: Sequence[str] | str = (),
    max_matches: int | None = 400,
    max_height: int = 720,
    seed: int = 0,
) -> Path:
    """Draw matches between two images side by side and write a PNG.

    Args:
        image0, image1: RGB ``(H, W, 3)`` / grayscale arrays, or image paths.
        kpts0, kpts1: matched keypoints ``(M, 2)`` in pixels of each image
            (``kpts0[i]`` matches ``kpts1[i]``; pixel centres at integers).
        path: the PNG to write.
        inliers: optional ``(M,)`` bool: inliers green, outliers red.
        scores: optional ``(M,)`` in [0, 1], red (0) to green (1); used when
            ``inliers`` is None. Without either, colours follow the position.
        all_kpts0, all_kpts1: optional keypoints drawn as small grey dots.
        text: lines written at the top left (default: the number of matches).
        max_matches: draw at most this many matches (a random subset, outliers
            kept in proportion); None draws all.
        max_height: both images are scaled to this height at most.

    Returns:
        The path of the PNG.
    """
    path = Path(path)
    img0, img1 = _as_rgb(image0), _as_rgb(image1)
    kpts0 = np.asarray(kpts0, np.float64).reshape(-1, 2)
    kpts1 = np.asarray(kpts1, np.float64).reshape(-1, 2)
    if len(kpts0) != len(kpts1):
        raise ValueError(
            f"kpts0 and kpts1 differ in length: {len(kpts0)}, {len(kpts1)}"
        )
    height = min(max(img0.shape[0], img1.shape[0]), max_height)
    scale0 = height / img0.shape[0]
    scale1 = height / img1.shape[0]
    sized = [
        cv2.resize(img, (round(img.shape[1] * s), height), interpolation=cv2.INTER_AREA)
        if s != 1
        else img
        for img, s in ((img0, scale0), (img1, scale1))
    ]
    gap = 10
    width0 = sized[0].shape[1]
    canvas = np.full((height, width0 + gap + sized[1].shape[1], 3), 255, np.uint8)
    canvas[:, :width0] = sized[0]
    canvas[:, width0 + gap :] = sized[1]
    shift = np.array([width0 + gap, 0.0])

    def to_canvas(k: np.ndarray, s: float, offset: np.ndarray) -> np.ndarray:
        # cv2 drawing with shift=4: coordinates in 1/16 pixel; pixel centres at
        # integers in both the image and the canvas.
        return np.round(((k + 0.5) * s - 0.5 + offset) * 16).astype(np.int64)

    thick = max(1, round(height / 480))
    for kpts, s, offset in ((all_kpts0, scale0, 0.0), (all_kpts1, scale1, shift)):
        if kpts is None:
            continue
        for x, y in to_canvas(np.asarray(kpts, np.float64).reshape(-1, 2), s, offset):
            cv2.circle(
                canvas,
                (int(x), int(y)),
                16 * thick,
                (150, 150, 150),
                -1,
                cv2.LINE_AA,
                4,
            )

    if inliers is not None:
        inliers = np.asarray(inliers, bool).reshape(-1)
        colors = np.where(inliers[:, None], np.array(GREEN), np.array(RED))
    elif scores is not None:
        colors = _score_colors(np.asarray(scores).reshape(-1))
    else:
        colors = _position_colors(kpts0, img0.shape[1], img0.shape[0])
    order = np.arange(len(kpts0))
    if max_matches is not None and len(order) > max_matches:
        order = np.sort(np.random.default_rng(seed).choice(order, max_matches, False))
    p0 = to_canvas(kpts0[order], scale0, 0.0)
    p1 = to_canvas(kpts1[order], scale1, shift)
    # Lines on layers blended over the images so that these stay visible:
    # outliers faint, the others (inliers, or all) stronger; endpoints opaque.
    strong = np.ones(len(order), bool) if inliers is None else inliers[order]
    for selection, alpha in ((~strong, 0.3), (strong, 0.65)):
        if not selection.any():
            continue
        layer = canvas.copy()
        for a, b, color in zip(
            p0[selection], p1[selection], colors[order][selection], strict=True
        ):
            c = tuple(int(v) for v in color)
            cv2.line(
                layer, tuple(map(int, a)), tuple(map(int, b)), c, thick, cv2.LINE_AA, 4
            )
        canvas = cv2.addWeighted(layer, alpha, canvas, 1 - alpha, 0)
    for a, b, color in zip(p0, p1, colors[order], strict=True):
        c = tuple(int(v) for v in color)
        for point in (a, b):
            cv2.circle(
                canvas, tuple(map(int, point)), 24 * thick, c, -1, cv2.LINE_AA, 4
            )

    if isinstance(text, str):
        text = [text]
    lines = list(text)
    if not lines:
        lines = [f"{len(kpts0)} matches"]
        if inliers is not None:
            lines[0] += f", {int(inliers.sum())} inliers (green)"
        if len(order) < len(kpts0):
            lines.append(f"{len(order)} drawn")
    _put_text(canvas, lines, max(1.0, height / 600))
    ok, data = cv2.imencode(".png", canvas[:, :, ::-1])
    if not ok:
        raise RuntimeError(f"PNG encoding failed for {path}.")
    _atomic_write_bytes(path, data.tobytes())
    return path


def _track_inliers(
    reconstruction: pycolmap.Reconstruction,
    name0: str,
    name1: str,
    matches: np.ndarray,
) -> np.ndarray | None:
    """True for matches whose two keypoints belong to the same 3D point."""
    image0 = reconstruction.find_image_with_name(name0)
    image1 = reconstruction.find_image_with_name(name1)
    if image0 is None or image1 is None:
        return None
    ids = []
    for image in (image0, image1):
        ids.append(
            np.array(
                [p.point3D_id if p.has_point3D() else -1 for p in image.points2D],
                np.int64,
            )
        )
    out = np.zeros(len(matches), bool)
    ok = (matches[:, 0] < len(ids[0])) & (matches[:, 1] < len(ids[1]))
    m = matches[ok]
    a, b = ids[0][m[:, 0]], ids[1][m[:, 1]]
    out[ok] = (a >= 0) & (a == b)
    return out


def plot_pair(
    image_dir: Path,
    features: Path,
    matches: Path,
    name0: str,
    name1: str,
    path: Path,
    reconstruction: pycolmap.Reconstruction | None = None,
    **kwargs,
) -> Path:
    """Plot the matches of one pair stored in hloc's h5 files.

    With ``reconstruction``, matches whose keypoints belong to the same 3D point
    are green (inliers) and the others red (keypoints must be in the order of
    ``features``, which is how they are imported). Otherwise the colour shows the
    matching score. ``kwargs`` go to :func:`plot_matches`.
    """
    image_dir = Path(image_dir)
    kpts0 = get_keypoints(features, name0)
    kpts1 = get_keypoints(features, name1)
    pair_matches, scores = get_matches(matches, name0, name1)
    inliers = None
    if reconstruction is not None:
        inliers = _track_inliers(reconstruction, name0, name1, pair_matches)
    text = [f"{name0} - {name1}: {len(pair_matches)} matches"]
    if inliers is not None:
        text.append(f"{int(inliers.sum())} in 3D tracks (green)")
    kwargs.setdefault("text", text)
    return plot_matches(
        image_dir / name0,
        image_dir / name1,
        kpts0[pair_matches[:, 0]],
        kpts1[pair_matches[:, 1]],
        path,
        inliers=inliers,
        scores=None if inliers is not None else scores,
        **kwargs,
    )


# ---------------------------------------------------------------------- 3D view
CameraPoses = Mapping[str, GTCamera] | Mapping[str, tuple[np.ndarray, np.ndarray]]


def _frustum_lines(
    R: np.ndarray, t: np.ndarray, K: np.ndarray, width: int, height: int, size: float
) -> np.ndarray:
    """Line segments ``(16, 3)`` of a frustum (``None``-separated in plotly)
    with apex at the camera centre and its image plane ``size`` away.

    ``K`` follows our convention (pixel centres at integers): the image border is
    at ``-0.5`` and ``W - 0.5``.
    """
    center = -R.T @ t
    corners = np.array(
        [
            [-0.5, -0.5, 1],
            [width - 0.5, -0.5, 1],
            [width - 0.5, height - 0.5, 1],
            [-0.5, height - 0.5, 1],
        ]
    )
    rays = corners @ np.linalg.inv(K).T
    rays = rays / rays[:, 2:] * size
    world = rays @ R + center  # R.T @ ray for each row
    c0, c1, c2, c3 = world
    return np.array([center, c0, c1, center, c2, c3, center, c0, c3, c2, c1])


def _reconstruction_cameras(
    reconstruction: pycolmap.Reconstruction,
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, int, int]]:
    out = {}
    for image in reconstruction.images.values():
        if not image.has_pose:
            continue
        camera = reconstruction.cameras[image.camera_id]
        K = np.asarray(camera.calibration_matrix(), np.float64).copy()
        K[:2, 2] -= 0.5  # COLMAP's pixel centres are at +0.5
        m = np.asarray(image.cam_from_world().matrix())
        out[image.name] = (m[:, :3], m[:, 3], K, camera.width, camera.height)
    return out


def _as_camera_tuples(
    cameras: CameraPoses | pycolmap.Reconstruction,
    fallback_K: tuple[np.ndarray, int, int],
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, int, int]]:
    if isinstance(cameras, pycolmap.Reconstruction):
        return _reconstruction_cameras(cameras)
    out = {}
    for name, value in cameras.items():
        if isinstance(value, GTCamera):
            out[name] = (value.R_w2c, value.t_w2c, value.K, value.width, value.height)
        else:
            R, t = value
            out[name] = (np.asarray(R), np.asarray(t).reshape(3), *fallback_K)
    return out


def write_3d_html(
    reconstruction: pycolmap.Reconstruction,
    path: str | Path,
    other_cameras: CameraPoses | pycolmap.Reconstruction | None = None,
    other_label: str = "ground truth",
    title: str | None = None,
    max_points: int = 200_000,
    min_track_length: int = 2,
    camera_size: float | None = None,
) -> Path:
    """Write a self-contained HTML 3D view of a reconstruction (plotly, offline).

    Points are drawn in their colour; registered cameras as blue frustums with
    their image names on hover. ``other_cameras`` (GT cameras, ``{name: (R, t)}``
    world-to-camera poses, or a model) are drawn in orange and 1.3x larger (so
    that both show where they coincide); they must already be
    in the reconstruction's frame (e.g. align with
    :func:`xfeat_hloc.evaluation.poses.evaluate_reconstruction` and transform one
    side). Points far outside the bulk (beyond 3x the 2-98 percentile range) are
    left out so that they do not squash the view.

    Args:
        camera_size: depth of the frustums in scene units; default 6% of the
            cameras' extent (or of the points' when there is one camera).

    Returns:
        The path of the HTML file.
    """
    import plotly.graph_objects as go  # plotly is heavy: import on use

    path = Path(path)
    if path.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"The 3D view must be an .html file, got {path}.")
    cams = _reconstruction_cameras(reconstruction)
    xyz = np.zeros((0, 3))
    rgb = np.zeros((0, 3), np.uint8)
    if reconstruction.num_points3D():
        pts = [
            p
            for p in reconstruction.points3D.values()
            if p.track.length() >= min_track_length
        ]
        if pts:
            xyz = np.array([p.xyz for p in pts], np.float64)
            rgb = np.array([p.color for p in pts], np.uint8)
    if len(xyz):
        lo, hi = np.percentile(xyz, [2, 98], axis=0)
        span = hi - lo
        keep = np.all((xyz >= lo - span) & (xyz <= hi + span), axis=1)
        xyz, rgb = xyz[keep], rgb[keep]
        if len(xyz) > max_points:
            idx = np.random.default_rng(0).choice(len(xyz), max_points, replace=False)
            xyz, rgb = xyz[idx], rgb[idx]

    centers = np.array([-R.T @ t for R, t, *_ in cams.values()]).reshape(-1, 3)
    if camera_size is None:
        ref = centers if len(centers) > 1 else xyz
        extent = float(np.ptp(ref, axis=0).max()) if len(ref) > 1 else 1.0
        camera_size = 0.06 * (extent if extent > 0 else 1.0)

    traces = []
    if len(xyz):
        traces.append(
            go.Scatter3d(
                x=xyz[:, 0],
                y=xyz[:, 1],
                z=xyz[:, 2],
                mode="markers",
                name=f"3D points ({len(xyz)})",
                marker={
                    "size": 1.5,
                    "color": [f"rgb({r},{g},{b})" for r, g, b in rgb],
                },
                hoverinfo="skip",
            )
        )

    def frustum_trace(cameras: dict, color: str, label: str, size: float):
        xs, ys, zs, texts = [], [], [], []
        for name, (R, t, K, w, h) in sorted(cameras.items()):
            lines = _frustum_lines(R, t, K, w, h, size)
            xs += [*lines[:, 0], None]
            ys += [*lines[:, 1], None]
            zs += [*lines[:, 2], None]
            texts += [html.escape(name)] * len(lines) + [None]
        return go.Scatter3d(
            x=xs,
            y=ys,
            z=zs,
            mode="lines",
            name=f"{label} ({len(cameras)})",
            line={"color": color, "width": 3},
            text=texts,
            hoverinfo="text",
        )

    if cams:
        traces.append(frustum_trace(cams, "rgb(30,100,230)", "cameras", camera_size))
    if other_cameras is not None:
        fallback = next(iter(cams.values()))[2:] if cams else (np.eye(3), 2, 2)
        others = _as_camera_tuples(other_cameras, fallback)
        if others:
            # Drawn 1.3x larger, so that coinciding cameras show both colours.
            traces.append(
                frustum_trace(others, "rgb(240,130,20)", other_label, 1.3 * camera_size)
            )

    if title is None:
        title = f"{len(cams)} cameras, {reconstruction.num_points3D()} 3D points" + (
            f" ({len(xyz)} shown)" if len(xyz) != reconstruction.num_points3D() else ""
        )
    scene: dict[str, Any] = {"aspectmode": "data"}
    if cams:
        # Look from behind and above the cameras, with their mean "up" up.
        rotations = np.stack([R for R, *_ in cams.values()])
        up = -rotations[:, 1].mean(0)
        forward = rotations[:, 2].mean(0)
        up /= max(np.linalg.norm(up), 1e-9)
        forward /= max(np.linalg.norm(forward), 1e-9)
        eye = -1.6 * forward + 0.9 * up
        scene["camera"] = {
            "up": dict(zip("xyz", up.tolist(), strict=True)),
            "eye": dict(zip("xyz", eye.tolist(), strict=True)),
        }
    fig = go.Figure(data=traces)
    fig.update_layout(
        title={"text": html.escape(title)},
        scene=scene,
        margin={"l": 0, "r": 0, "t": 40, "b": 0},
        legend={"itemsizing": "constant"},
    )
    page = fig.to_html(include_plotlyjs=True, full_html=True)
    _atomic_write_bytes(path, page.encode("utf-8"))
    return path


__all__ = ["plot_matches", "plot_pair", "write_3d_html"]
