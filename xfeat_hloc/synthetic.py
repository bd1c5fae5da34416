"""A procedurally rendered room with known cameras: the demo's ground truth.

Nothing is downloaded: a seed determines everything. The scene is the inside of
a box-shaped room (walls, floor, ceiling) with a few boxes standing on the
floor. Every face is a textured rectangle whose texture is generated here
(multi-scale colour noise, blobs, lines, polygons and text-like strokes), so
that a local feature finds many distinctive keypoints. Images are rendered by
exact ray casting: per (sub-)pixel, the nearest positive hit among all
rectangles, a bilinear texture lookup, a view-independent Lambertian shading
from a point light (so a surface point looks the same from every camera), 2x2
supersampling, a little sensor noise, then JPEG.

Conventions:

- World frame: metres, ``z`` up; the room spans ``[-4, 4] x [-3, 3] x [0, 3]``.
- Cameras: pinhole, no distortion, ``x_cam = R_w2c @ x_world + t_w2c`` with the
  camera's ``x`` right, ``y`` down, ``z`` forward (COLMAP/OpenCV).
- Pixels: centres at integer coordinates, so the principal point of a
  ``W x H`` image is ``((W - 1) / 2, (H - 1) / 2)``; COLMAP files written here
  add 0.5 (``(W / 2, H / 2)``), which is exactly COLMAP's default principal
  point.
- Textures: texel ``(j, i)`` (column, row) of a rectangle covers the face
  coordinates ``[j, j + 1) * texel`` along the face's ``u`` axis and
  ``[i, i + 1) * texel`` along its ``v`` axis.

Layout written by :func:`render_scene`::

    OUTPUT/images/image_00.jpg ...   the rendered views
    OUTPUT/gt_model/                 COLMAP model (cameras, images; no points)
    OUTPUT/scene.json                the parameters and the cameras (K, R, t)
"""

from __future__ import annotations

import json
import math
import string
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pycolmap
from tqdm import tqdm

from . import logger
from .evaluation.strecha import GTCamera

ROOM_MIN = np.array([-4.0, -3.0, 0.0])
ROOM_MAX = np.array([4.0, 3.0, 3.0])
LIGHT_POSITION = np.array([0.5, 0.0, 2.8])
TEXEL = 0.005  # metres per texel
FORMAT_VERSION = 1  # bump when the rendering changes, so old outputs re-render


@dataclass(frozen=True)
class TexturedRectangle:
    """A planar rectangle ``origin + a * u + b * v``, ``a in [0, size_u]``,
    ``b in [0, size_v]``, textured with ``texture`` (``(H, W, 3)`` float32 RGB in
    [0, 255], ``TEXEL`` metres per texel; columns along ``u``, rows along
    ``v``). Only its front side is visible: seen from the front, ``u`` points
    right and ``v`` down (text reads normally), so the normal is ``v x u``."""

    origin: np.ndarray
    u: np.ndarray
    v: np.ndarray
    size_u: float
    size_v: float
    texture: np.ndarray

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.v, self.u)


@dataclass(frozen=True)
class RayHits:
    """Nearest hits of rays: ``index`` of the rectangle (-1: none), distance
    ``t`` along the (not necessarily unit) direction, face coordinates ``a``,
    ``b`` in metres."""

    index: np.ndarray
    t: np.ndarray
    a: np.ndarray
    b: np.ndarray


# --------------------------------------------------------------------- textures
def _noise(
    rng: np.random.Generator, height: int, width: int, cell: float
) -> np.ndarray:
    """Smooth value noise in [-1, 1] with features about ``cell`` texels wide."""
    gh = max(2, int(math.ceil(height / cell)) + 2)
    gw = max(2, int(math.ceil(width / cell)) + 2)
    grid = rng.uniform(-1.0, 1.0, (gh, gw)).astype(np.float32)
    big = cv2.resize(
        grid,
        (int(gw * cell), int(gh * cell)),
        interpolation=cv2.INTER_CUBIC,
    )
    return big[:height, :width]


def _random_color(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, 3))


def make_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A rich, non-repetitive texture, ``(height, width, 3)`` float32 in [0, 255].

    Layers: a base colour modulated by multi-scale colour noise; translucent
    blobs (ellipses); polygons and rectangles; straight and curved lines; text
    strings of random letters and digits; small dots; a fine grain. Sizes span a few
    millimetres to tens of centimetres (``TEXEL`` = 5 mm per texel).
    """
    area = height * width * TEXEL**2  # square metres
    base = rng.uniform(60, 200, 3).astype(np.float32)
    image = np.empty((height, width, 3), np.float32)
    for c in range(3):
        layer = np.zeros((height, width), np.float32)
        for cell, amp in ((160, 45), (40, 30), (10, 18), (3, 10)):
            layer += amp * _noise(rng, height, width, cell)
        image[:, :, c] = base[c] + layer
    canvas = np.clip(image, 0, 255).astype(np.uint8)

    def count(per_m2: float) -> int:
        return int(rng.poisson(per_m2 * area))

    # Translucent blobs.
    overlay = canvas.copy()
    for _ in range(count(6)):
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(8, 70)), int(rng.integers(8, 70)))
        cv2.ellipse(
            overlay,
            center,
            axes,
            float(rng.uniform(0, 180)),
            0,
            360,
            _random_color(rng),
            -1,
            cv2.LINE_AA,
        )
    canvas = cv2.addWeighted(canvas, 0.45, overlay, 0.55, 0)
    # Polygons and rectangles.
    for _ in range(count(8)):
        center = rng.uniform([0, 0], [width, height])
        radius = rng.uniform(5, 45)
        n = int(rng.integers(3, 7))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = radius * rng.uniform(0.5, 1.0, n)
        points = center + np.stack([np.cos(angles), np.sin(angles)], 1) * radii[:, None]
        points = points.round().astype(np.int32)
        if rng.random() < 0.6:
            cv2.fillPoly(canvas, [points], _random_color(rng), cv2.LINE_AA)
        else:
            cv2.polylines(
                canvas,
                [points],
                True,
                _random_color(rng),
                int(rng.integers(1, 4)),
                cv2.LINE_AA,
            )
    # Lines and curves.
    for _ in range(count(5)):
        start = rng.uniform([0, 0], [width, height])
        steps = int(rng.integers(2, 8))
        heading = rng.uniform(0, 2 * np.pi)
        points = [start]
        for _ in range(steps):
            heading += rng.normal(0, 0.6)
            length = rng.uniform(10, 60)
            points.append(
                points[-1] + length * np.array([np.cos(heading), np.sin(heading)])
            )
        cv2.polylines(
            canvas,
            [np.array(points).round().astype(np.int32)],
            False,
            _random_color(rng),
            int(rng.integers(1, 5)),
            cv2.LINE_AA,
        )
    # Text-like strokes.
    fonts = (
        cv2.FONT_HERSHEY_SIMPLEX,
        cv2.FONT_HERSHEY_DUPLEX,
        cv2.FONT_HERSHEY_COMPLEX,
        cv2.FONT_HERSHEY_TRIPLEX,
        cv2.FONT_HERSHEY_SCRIPT_SIMPLEX,
    )
    alphabet = string.ascii_letters + string.digits
    for _ in range(count(5)):
        text = "".join(rng.choice(list(alphabet), int(rng.integers(2, 8))))
        origin = (int(rng.integers(-20, width)), int(rng.integers(0, height + 20)))
        cv2.putText(
            canvas,
            text,
            origin,
            fonts[int(rng.integers(len(fonts)))],
            float(rng.uniform(0.5, 2.5)),
            _random_color(rng),
            int(rng.integers(1, 4)),
            cv2.LINE_AA,
        )
    # Small dots.
    for _ in range(count(20)):
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.circle(
            canvas,
            center,
            int(rng.integers(1, 5)),
            _random_color(rng),
            -1,
            cv2.LINE_AA,
        )
    # Fine grain over everything, so that no area (not even a filled shape) is
    # flat at the scale of a few texels.
    out = canvas.astype(np.float32)
    for c in range(3):
        out[:, :, c] += 7 * _noise(rng, height, width, 4) + 5 * _noise(
            rng, height, width, 2
        )
    return np.clip(out, 0, 255)


def _sample_bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Bilinear samples ``(N, C)`` of ``image`` at pixel coordinates ``(x, y)``
    (pixel centres at integers, reflected borders), with ``cv2.remap``."""
    n = len(x)
    cols = 4096
    rows = max(1, -(-n // cols))
    map_x = np.zeros(rows * cols, np.float32)
    map_y = np.zeros(rows * cols, np.float32)
    map_x[:n], map_y[:n] = x, y
    out = cv2.remap(
        image,
        map_x.reshape(rows, cols),
        map_y.reshape(rows, cols),
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT,
    )
    return out.reshape(rows * cols, -1)[:n]


# ------------------------------------------------------------------------ scene
def _rectangle(
    rng: np.random.Generator,
    origin: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    size_u: float,
    size_v: float,
) -> TexturedRectangle:
    width = int(math.ceil(size_u / TEXEL))
    height = int(math.ceil(size_v / TEXEL))
    return TexturedRectangle(
        np.asarray(origin, np.float64),
        np.asarray(u, np.float64),
        np.asarray(v, np.float64),
        float(size_u),
        float(size_v),
        make_texture(rng, height, width),
    )


def _room(rng: np.random.Generator) -> list[TexturedRectangle]:
    """The 6 faces of the room, normals pointing inwards."""
    x0, y0, z0 = ROOM_MIN
    x1, y1, z1 = ROOM_MAX
    ex, ey, ez = np.eye(3)
    sx, sy, sz = ROOM_MAX - ROOM_MIN
    return [
        _rectangle(rng, [x0, y1, z0], ex, -ey, sx, sy),  # floor, normal +z
        _rectangle(rng, [x0, y0, z1], ex, ey, sx, sy),  # ceiling, normal -z
        _rectangle(rng, [x1, y0, z1], -ex, -ez, sx, sz),  # wall y = y0, normal +y
        _rectangle(rng, [x0, y1, z1], ex, -ez, sx, sz),  # wall y = y1, normal -y
        _rectangle(rng, [x1, y1, z1], -ey, -ez, sy, sz),  # wall x = x1, normal -x
        _rectangle(rng, [x0, y0, z1], ey, -ez, sy, sz),  # wall x = x0, normal +x
    ]


@dataclass(frozen=True)
class _Box:
    """An oriented box: ``centre``, ``axes`` (columns: local x, y, z in world),
    ``half`` extents, and the index of its first face in the rectangle list
    (faces in the order top, -y, +y, +x, -x)."""

    centre: np.ndarray
    axes: np.ndarray
    half: np.ndarray
    first_face: int


def _box(
    rng: np.random.Generator,
    center_xy: np.ndarray,
    size: np.ndarray,
    yaw: float,
    first_face: int,
) -> tuple[_Box, list[TexturedRectangle]]:
    """A box standing on the floor: its top and 4 sides, normals outwards."""
    c, s = math.cos(yaw), math.sin(yaw)
    ax = np.array([c, s, 0.0])
    ay = np.array([-s, c, 0.0])
    ez = np.array([0.0, 0.0, 1.0])
    hx, hy, h = size[0] / 2, size[1] / 2, size[2]
    base = np.array([center_xy[0], center_xy[1], 0.0])
    top = base + h * ez
    faces = [
        _rectangle(rng, top - hx * ax + hy * ay, ax, -ay, 2 * hx, 2 * hy),  # top
        _rectangle(rng, top - hx * ax - hy * ay, ax, -ez, 2 * hx, h),  # -y side
        _rectangle(rng, top + hx * ax + hy * ay, -ax, -ez, 2 * hx, h),  # +y side
        _rectangle(rng, top + hx * ax - hy * ay, ay, -ez, 2 * hy, h),  # +x side
        _rectangle(rng, top - hx * ax + hy * ay, -ay, -ez, 2 * hy, h),  # -x side
    ]
    box = _Box(
        base + h / 2 * ez,
        np.stack([ax, ay, ez], 1),
        np.array([hx, hy, h / 2]),
        first_face,
    )
    return box, faces


def _face_coordinates(
    rectangles: list[TexturedRectangle],
    index: np.ndarray,
    origin: np.ndarray,
    directions: np.ndarray,
    t: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Face coordinates ``(a, b)`` of the hits ``origin + t * directions``."""
    a = np.zeros(len(index))
    b = np.zeros(len(index))
    for i, rect in enumerate(rectangles):
        mask = index == i
        if mask.any():
            rel = origin - rect.origin + t[mask, None] * directions[mask]
            a[mask], b[mask] = rel @ rect.u, rel @ rect.v
    return a, b


def ray_cast_rectangles(
    rectangles: list[TexturedRectangle], origin: np.ndarray, directions: np.ndarray
) -> RayHits:
    """Nearest front-face hits of rays ``origin + t * directions`` among any
    rectangles, testing every rectangle (slow, exact reference)."""
    directions = np.asarray(directions, np.float64)
    n = len(directions)
    best_t = np.full(n, np.inf)
    best_i = np.full(n, -1, np.int32)
    for i, rect in enumerate(rectangles):
        axes = np.stack([rect.normal, rect.u, rect.v], 1)  # (3, 3)
        dn, du, dv = (directions @ axes).T
        on, ou, ov = (origin - rect.origin) @ axes
        with np.errstate(divide="ignore", invalid="ignore"):
            t = -on / dn
        ok = (dn < 0) & (t > 1e-9) & (t < best_t)  # front faces only
        a = ou + t * du
        b = ov + t * dv
        ok &= (a >= 0) & (a <= rect.size_u) & (b >= 0) & (b <= rect.size_v)
        best_t = np.where(ok, t, best_t)
        best_i = np.where(ok, i, best_i)
    a, b = _face_coordinates(rectangles, best_i, origin, directions, best_t)
    return RayHits(best_i, best_t, a, b)


class SyntheticRoom:
    """The textured room and its boxes; ray casting, shading and rendering.

    ``rectangles`` lists the room's 6 faces (floor, ceiling, walls y = -3,
    y = 3, x = 4, x = -4) then each box's 5 faces.

    Args:
        seed: determines the textures and the boxes' placement.
    """

    #: centre of the region the cameras look at (metres)
    target = np.array([1.0, 0.0, 0.8])

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng([seed, 1])
        rects = _room(rng)
        boxes = [  # (x, y, size x, size y, height, yaw in degrees)
            (1.3, -0.9, 0.8, 0.6, 0.9, 20.0),
            (1.9, 0.8, 0.6, 0.6, 1.3, -15.0),
            (0.4, 0.6, 0.5, 0.7, 0.5, 40.0),
            (2.8, -0.2, 1.0, 0.5, 0.7, 5.0),
        ]
        self._boxes: list[_Box] = []
        for x, y, sx, sy, h, yaw in boxes:
            jitter = rng.uniform(-0.15, 0.15, 2)
            box, faces = _box(
                rng,
                np.array([x, y]) + jitter,
                np.array([sx, sy, h]),
                math.radians(yaw),
                len(rects),
            )
            self._boxes.append(box)
            rects += faces
        self.rectangles: list[TexturedRectangle] = rects

    def ray_cast(self, origin: np.ndarray, directions: np.ndarray) -> RayHits:
        """Nearest hits of rays ``origin + t * directions`` (``(N, 3)``) from a
        point inside the room: the room's exit face (it is convex), then each
        box by the slab method. Equal to :func:`ray_cast_rectangles`, faster."""
        origin = np.asarray(origin, np.float64)
        d = np.asarray(directions, np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            # Room: exit distance along each axis, nearest axis wins.
            bound = np.where(d > 0, ROOM_MAX, ROOM_MIN)
            t_axes = np.where(d != 0, (bound - origin) / d, np.inf)
            axis = np.argmin(t_axes, 1)
            best_t = np.take_along_axis(t_axes, axis[:, None], 1)[:, 0]
            positive = np.take_along_axis(d, axis[:, None], 1)[:, 0] > 0
            # (axis, towards +) -> face: z-: floor 0, z+: ceiling 1, y-: 2, y+: 3,
            # x+: 4, x-: 5
            faces = np.array([[5, 4], [2, 3], [0, 1]])
            best_i = faces[axis, positive.astype(int)].astype(np.int32)
            for box in self._boxes:
                # Only rays passing within the bounding sphere can hit the box.
                to_centre = box.centre - origin
                along = d @ to_centre
                d2 = np.einsum("ij,ij->i", d, d)
                miss2 = to_centre @ to_centre - along**2 / d2
                candidates = np.flatnonzero((along > 0) & (miss2 < box.half @ box.half))
                if len(candidates) == 0:
                    continue
                o = (origin - box.centre) @ box.axes
                dl = d[candidates] @ box.axes
                t1 = (-box.half - o) / dl
                t2 = (box.half - o) / dl
                t_near_axes = np.minimum(t1, t2)
                near_axis = np.argmax(t_near_axes, 1)
                t_near = np.take_along_axis(t_near_axes, near_axis[:, None], 1)[:, 0]
                t_far = np.min(np.maximum(t1, t2), 1)
                hit = (t_near <= t_far) & (t_near > 1e-9)
                hit &= t_near < best_t[candidates]
                if not hit.any():
                    continue
                candidates, t_near, dl = candidates[hit], t_near[hit], dl[hit]
                near_axis = near_axis[hit]
                toward = np.take_along_axis(dl, near_axis[:, None], 1)[:, 0] > 0
                # (axis, towards +) -> face offset: entering -x side 4, +x side 3,
                # -y side 1, +y side 2, top 0 (from above).
                offsets = np.array([[3, 4], [2, 1], [0, 0]])
                face = box.first_face + offsets[near_axis, toward.astype(int)]
                best_t[candidates] = t_near
                best_i[candidates] = face
        a, b = _face_coordinates(self.rectangles, best_i, origin, d, best_t)
        return RayHits(best_i, best_t, a, b)

    def shading(self, index: np.ndarray, points: np.ndarray) -> np.ndarray:
        """View-independent brightness factor of surface points ``(N, 3)``."""
        normals = np.stack([r.normal for r in self.rectangles])[index]
        to_light = LIGHT_POSITION - points
        dist = np.linalg.norm(to_light, axis=1)
        cos = np.clip(np.sum(normals * to_light, 1) / np.maximum(dist, 1e-9), 0, 1)
        return 0.45 + 0.75 * cos / (1.0 + (dist / 4.0) ** 2)

    def surface_color(
        self, index: np.ndarray, a: np.ndarray, b: np.ndarray
    ) -> np.ndarray:
        """Shaded RGB colour ``(N, 3)`` float32 of face points (bilinear texture)."""
        index = np.asarray(index)
        colors = np.zeros((len(index), 3), np.float32)
        points = np.zeros((len(index), 3))
        for i, rect in enumerate(self.rectangles):
            mask = index == i
            if not mask.any():
                continue
            colors[mask] = _sample_bilinear(
                rect.texture, a[mask] / TEXEL - 0.5, b[mask] / TEXEL - 0.5
            )
            points[mask] = rect.origin + a[mask, None] * rect.u + b[mask, None] * rect.v
        return colors * self.shading(index, points)[:, None].astype(np.float32)

    def locate(self, points: np.ndarray, tol: float = 1e-6) -> tuple[np.ndarray, ...]:
        """Rectangle index and face coordinates ``(a, b)`` of surface points
        ``(N, 3)`` (index -1 for points on no face)."""
        points = np.asarray(points, np.float64)
        index = np.full(len(points), -1, np.int32)
        a = np.zeros(len(points))
        b = np.zeros(len(points))
        for i, rect in enumerate(self.rectangles):
            rel = points - rect.origin
            ai, bi, di = rel @ rect.u, rel @ rect.v, rel @ rect.normal
            ok = (np.abs(di) < tol) & (ai >= 0) & (ai <= rect.size_u)
            ok &= (bi >= 0) & (bi <= rect.size_v) & (index < 0)
            index[ok], a[ok], b[ok] = i, ai[ok], bi[ok]
        return index, a, b

    def render(
        self,
        camera: GTCamera,
        supersample: int = 2,
        noise_sigma: float = 1.5,
        rng: np.random.Generator | None = None,
    ) -> np.ndarray:
        """Render the view of ``camera``: ``(H, W, 3)`` uint8 RGB.

        Each pixel averages ``supersample**2`` rays through the sub-pixel
        positions ``x + (k + 0.5) / s - 0.5`` (pixel centres at integers).
        """
        s = int(supersample)
        w, h = camera.width, camera.height
        offsets = (np.arange(s) + 0.5) / s - 0.5
        xs = (np.arange(w)[:, None] + offsets[None]).reshape(-1)
        ys = (np.arange(h)[:, None] + offsets[None]).reshape(-1)
        rays_from_pixels = np.linalg.inv(camera.K).T @ camera.R_w2c
        colors = np.zeros((len(ys), len(xs), 3), np.float32)
        rows = max(1, 65536 // len(xs))  # chunks of ~64k rays stay in cache
        for r in range(0, len(ys), rows):
            # direction = rays_from_pixels.T @ (x, y, 1) for every pixel
            y = ys[r : r + rows, None, None]
            directions = (
                xs[None, :, None] * rays_from_pixels[0]
                + y * rays_from_pixels[1]
                + rays_from_pixels[2]
            ).reshape(-1, 3)
            hits = self.ray_cast(camera.center, directions)
            chunk = self.surface_color(hits.index, hits.a, hits.b)
            chunk[hits.index < 0] = 0
            colors[r : r + rows] = chunk.reshape(len(y), len(xs), 3)
        image = colors
        if s > 1:
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        if noise_sigma > 0:
            rng = rng or np.random.default_rng(0)
            image = image + rng.normal(0, noise_sigma, image.shape).astype(np.float32)
        return np.clip(image + 0.5, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------- cameras
def look_at(
    center: np.ndarray, target: np.ndarray, roll: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera ``(R, t)`` of a camera at ``center`` looking at ``target``
    with world ``z`` up (camera ``y`` down), rolled by ``roll`` radians."""
    forward = target - center
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, np.array([0.0, 0.0, 1.0]))
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    R = np.stack([right, down, forward])
    c, s = math.cos(roll), math.sin(roll)
    R = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ R
    return R, -R @ center


def make_cameras(
    num_images: int = 12,
    seed: int = 0,
    width: int = 800,
    height: int = 600,
    focal: float | None = None,
) -> dict[str, GTCamera]:
    """Cameras on an arc around :attr:`SyntheticRoom.target`, all looking at it.

    The arc spans 120 degrees at 2.6-3.0 m from the target, heights 1.2-2.0 m,
    look-at points jittered by up to 0.35 m and rolls up to 6 degrees, so
    neighbours overlap strongly and the ends see the scene 120 degrees apart.
    The focal length defaults to ``0.85 * width`` (about 61 degrees of
    horizontal field of view).
    """
    if num_images < 2:
        raise ValueError(f"num_images must be >= 2, got {num_images}.")
    rng = np.random.default_rng([seed, 2])
    f = 0.85 * width if focal is None else float(focal)
    K = np.array([[f, 0, (width - 1) / 2], [0, f, (height - 1) / 2], [0, 0, 1]])
    target = SyntheticRoom.target
    cameras: dict[str, GTCamera] = {}
    azimuths = np.linspace(np.radians(120), np.radians(240), num_images)
    for i, azimuth in enumerate(azimuths):
        azimuth += rng.uniform(-0.04, 0.04)
        radius = rng.uniform(2.6, 3.0)
        center = np.array(
            [
                target[0] + radius * math.cos(azimuth),
                target[1] + radius * math.sin(azimuth),
                rng.uniform(1.2, 2.0),
            ]
        )
        look = target + rng.uniform(-0.35, 0.35, 3) * np.array([1.0, 1.0, 0.6])
        R, t = look_at(center, look, math.radians(rng.uniform(-6, 6)))
        cameras[f"image_{i:02d}.jpg"] = GTCamera(K.copy(), R, t, width, height)
    return cameras


# ----------------------------------------------------------------------- output
@dataclass(frozen=True)
class SyntheticScene:
    """What :func:`render_scene` wrote.

    Attributes:
        image_dir: the rendered JPEG images.
        cameras: ``{image name: GTCamera}`` ground truth (metres, pixel centres at
            integer coordinates).
        gt_model_dir: the ground truth as a COLMAP model (no 3D points).
        extent: largest distance between two camera centres (metres), the scale
            that position errors are compared with.
    """

    image_dir: Path
    cameras: dict[str, GTCamera]
    gt_model_dir: Path
    extent: float


def write_gt_model(cameras: dict[str, GTCamera], path: Path) -> pycolmap.Reconstruction:
    """Write GT cameras as a COLMAP model (PINHOLE, shared when intrinsics agree)."""
    reconstruction = pycolmap.Reconstruction()
    camera_ids: dict[tuple, int] = {}
    for image_id, (name, cam) in enumerate(sorted(cameras.items()), start=1):
        key = (cam.width, cam.height, *np.round(cam.K[:2].ravel(), 9))
        if key not in camera_ids:
            camera_ids[key] = len(camera_ids) + 1
            reconstruction.add_camera_with_trivial_rig(
                cam.pycolmap_camera(camera_ids[key])
            )
        image = pycolmap.Image(name=name, camera_id=camera_ids[key], image_id=image_id)
        reconstruction.add_image_with_trivial_frame(image, cam.cam_from_world())
    path.mkdir(parents=True, exist_ok=True)
    reconstruction.write(path)
    return reconstruction


def _camera_extent(cameras: dict[str, GTCamera]) -> float:
    centers = np.stack([c.center for c in cameras.values()])
    return float(np.max(np.linalg.norm(centers[:, None] - centers[None], axis=-1)))


def _scene_params(
    num_images: int, seed: int, width: int, height: int, supersample: int
) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "num_images": num_images,
        "seed": seed,
        "width": width,
        "height": height,
        "supersample": supersample,
    }


def _load_cameras(data: dict) -> dict[str, GTCamera]:
    return {
        name: GTCamera(
            np.array(c["K"]),
            np.array(c["R_w2c"]),
            np.array(c["t_w2c"]),
            int(c["width"]),
            int(c["height"]),
        )
        for name, c in data["cameras"].items()
    }


def render_scene(
    output_dir: Path,
    num_images: int = 12,
    seed: int = 0,
    width: int = 800,
    height: int = 600,
    supersample: int = 2,
    overwrite: bool = False,
) -> SyntheticScene:
    """Render the room into ``output_dir`` (see the module docstring's layout).

    Idempotent: when ``scene.json`` records the same parameters and every image
    exists, nothing is rendered again. Deterministic for a given seed.
    """
    output_dir = Path(output_dir)
    image_dir = output_dir / "images"
    gt_dir = output_dir / "gt_model"
    manifest = output_dir / "scene.json"
    params = _scene_params(num_images, seed, width, height, supersample)
    if manifest.exists() and not overwrite:
        try:
            data = json.loads(manifest.read_text())
        except (OSError, ValueError):
            data = {}
        if data.get("params") == params:
            cameras = _load_cameras(data)
            if (
                all((image_dir / n).exists() for n in cameras)
                and (gt_dir / "images.bin").exists()
            ):
                logger.info("Synthetic scene already rendered in %s.", output_dir)
                return SyntheticScene(
                    image_dir, cameras, gt_dir, _camera_extent(cameras)
                )
    cameras = make_cameras(num_images, seed, width, height)
    logger.info("Generating the textures of the synthetic room (seed %d).", seed)
    room = SyntheticRoom(seed)
    image_dir.mkdir(parents=True, exist_ok=True)
    for i, (name, camera) in enumerate(
        tqdm(cameras.items(), desc="render", unit="image")
    ):
        image = room.render(
            camera, supersample, rng=np.random.default_rng([seed, 3, i])
        )
        ok, data = cv2.imencode(
            ".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95]
        )
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for {name}.")
        tmp = image_dir / f".{name}.tmp"
        data.tofile(str(tmp))
        tmp.replace(image_dir / name)
    for stale in image_dir.glob("image_*.jpg"):
        if stale.name not in cameras:
            stale.unlink()
    write_gt_model(cameras, gt_dir)
    manifest.write_text(
        json.dumps(
            {
                "params": params,
                "conventions": (
                    "metres, z up; x_cam = R_w2c @ x_world + t_w2c (x right, y down, "
                    "z forward); K with pixel centres at integer coordinates"
                ),
                "cameras": {
                    name: {
                        "K": c.K.tolist(),
                        "R_w2c": c.R_w2c.tolist(),
                        "t_w2c": c.t_w2c.tolist(),
                        "width": c.width,
                        "height": c.height,
                    }
                    for name, c in cameras.items()
                },
            },
            indent=1,
        )
    )
    return SyntheticScene(image_dir, cameras, gt_dir, _camera_extent(cameras))


__all__ = [
    "RayHits",
    "SyntheticRoom",
    "SyntheticScene",
    "TexturedRectangle",
    "look_at",
    "ray_cast_rectangles",
    "make_cameras",
    "make_texture",
    "render_scene",
    "write_gt_model",
]
