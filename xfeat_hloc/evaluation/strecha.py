"""Ground-truth cameras of the Strecha et al. (CVPR 2008) multi-view scenes.

A scene folder holds ``images/NNNN.jpg`` and ``gt_dense_cameras/NNNN.jpg.camera``.
A camera file is plain text: rows 1-3 the intrinsics K (pixels), row 4 the
distortion (all zero), rows 5-7 the camera-to-world rotation R, row 8 the camera
centre c in world coordinates (metres), row 9 the image size ``W H``. The
world-to-camera pose is therefore ``R_w2c = R.T``, ``t_w2c = -R.T @ c``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycolmap

from ..errors import DatasetLayoutError


@dataclass(frozen=True)
class GTCamera:
    """A ground-truth pinhole camera.

    Attributes:
        K: 3x3 intrinsics in pixels of a ``width`` x ``height`` image.
        R_w2c: 3x3 world-to-camera rotation.
        t_w2c: world-to-camera translation (metres), ``x_cam = R_w2c x + t_w2c``.
        width, height: image size in pixels.
    """

    K: np.ndarray
    R_w2c: np.ndarray
    t_w2c: np.ndarray
    width: int
    height: int

    @property
    def center(self) -> np.ndarray:
        """Camera centre in world coordinates."""
        return -self.R_w2c.T @ self.t_w2c

    def cam_from_world(self) -> pycolmap.Rigid3d:
        return pycolmap.Rigid3d(pycolmap.Rotation3d(self.R_w2c), self.t_w2c)

    def scaled(self, scale: float) -> GTCamera:
        """The same camera for an image resized by ``scale`` (pixel centres kept).

        With pixel centres at integer coordinates, a resize maps ``x`` to
        ``(x + 0.5) * scale - 0.5``, hence the principal point shift.
        """
        K = self.K.copy()
        K[:2, :2] *= scale
        K[:2, 2] = (K[:2, 2] + 0.5) * scale - 0.5
        return GTCamera(
            K,
            self.R_w2c,
            self.t_w2c,
            int(round(self.width * scale)),
            int(round(self.height * scale)),
        )

    def pycolmap_camera(self, camera_id: int = 1) -> pycolmap.Camera:
        """A PINHOLE camera in COLMAP's convention (pixel centres at +0.5)."""
        fx, fy = self.K[0, 0], self.K[1, 1]
        cx, cy = self.K[0, 2] + 0.5, self.K[1, 2] + 0.5
        return pycolmap.Camera(
            camera_id=camera_id,
            model="PINHOLE",
            width=self.width,
            height=self.height,
            params=[fx, fy, cx, cy],
        )


def read_strecha_camera(path: Path) -> GTCamera:
    """Parse one ``*.camera`` file."""
    path = Path(path)
    try:
        rows = [
            [float(v) for v in line.split()]
            for line in path.read_text().splitlines()
            if line.strip()
        ]
        K = np.array(rows[0:3])
        R_c2w = np.array(rows[4:7])
        center = np.array(rows[7])
        width, height = (int(v) for v in rows[8])
    except (OSError, ValueError, IndexError) as error:
        raise DatasetLayoutError(
            f"Cannot parse Strecha camera file {path} ({error}): expected 9 rows "
            "(K, distortion, R, centre, image size)."
        ) from None
    R_w2c = R_c2w.T
    return GTCamera(K, R_w2c, -R_w2c @ center, width, height)


def load_strecha_scene(scene_dir: Path) -> tuple[Path, dict[str, GTCamera]]:
    """The image folder and ``{image name: GTCamera}`` of a Strecha scene."""
    scene_dir = Path(scene_dir)
    image_dir = scene_dir / "images"
    camera_dir = scene_dir / "gt_dense_cameras"
    if not image_dir.is_dir() or not camera_dir.is_dir():
        raise DatasetLayoutError(
            f"{scene_dir} is not a Strecha scene: expected folders images/ and "
            "gt_dense_cameras/ (with NNNN.jpg and NNNN.jpg.camera)."
        )
    cameras = {
        p.name[: -len(".camera")]: read_strecha_camera(p)
        for p in sorted(camera_dir.glob("*.camera"))
    }
    if not cameras:
        raise DatasetLayoutError(f"No *.camera files in {camera_dir}.")
    return image_dir, cameras
