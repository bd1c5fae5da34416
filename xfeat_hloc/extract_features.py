"""Extract local features of a folder of images into hloc's features.h5.

Drop-in for ``hloc.extract_features``: same ``main`` signature (plus ``device``),
same preprocessing keys and the same file format. Each image is one h5 group,
named by its path relative to ``image_dir`` (posix separators), holding:

- ``keypoints`` (N, 2) float32, (x, y) in pixels of the ORIGINAL image, pixel
  centres at integer coordinates; attribute ``uncertainty`` = the model's
  ``detection_noise`` (1 if absent) x the mean resize factor. Keypoints stay
  float32 even with ``as_half`` (hloc's float16 keypoints lose 2 px at x > 2048);
- ``descriptors`` (D, N), ``scores`` (N,) and any other model output,
  float16 with ``as_half``;
- ``image_size`` (2,) int64, ``[W, H]`` of the original image.

Images are decoded and resized in a background thread while the model runs,
and results are written by :class:`~xfeat_hloc.utils.h5_writer.H5Writer`, so
the loop never waits on the disk and a killed run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import collections.abc
import glob
import pprint
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from . import extractors, logger
from .cli import add_device_and_weights
from .confs import extractors as confs
from .errors import EmptyResultError, ImageReadError, UserError
from .utils.base_model import BaseModel, dynamic_load
from .utils.h5_writer import H5Writer
from .utils.io import read_image
from .utils.parsers import parse_image_lists

DEFAULT_PREPROCESSING: dict[str, Any] = {
    "globs": ["*.jpg", "*.png", "*.jpeg", "*.JPG", "*.PNG"],
    "grayscale": False,
    "resize_max": None,
    "resize_force": False,
    "interpolation": "cv2_area",  # pil_linear is more accurate but slower
}

_CV2_INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos4": cv2.INTER_LANCZOS4,
}
_PIL_INTERPOLATIONS = {
    "nearest": "NEAREST",
    "box": "BOX",
    "linear": "BILINEAR",
    "bilinear": "BILINEAR",
    "hamming": "HAMMING",
    "cubic": "BICUBIC",
    "bicubic": "BICUBIC",
    "lanczos": "LANCZOS",
}


def _check_interpolation(interp: str) -> None:
    kind, _, method = interp.partition("_")
    table = {"cv2": _CV2_INTERPOLATIONS, "pil": _PIL_INTERPOLATIONS}.get(kind)
    if table is None or method not in table:
        known = [f"cv2_{k}" for k in _CV2_INTERPOLATIONS]
        known += [f"pil_{k}" for k in _PIL_INTERPOLATIONS]
        raise UserError(
            f"Unknown interpolation {interp!r} in the conf's preprocessing. "
            f"Known: {', '.join(known)}."
        )
    if kind == "pil":
        try:
            import PIL.Image  # noqa: F401
        except ImportError:
            raise UserError(
                f"Interpolation {interp!r} needs Pillow: pip install pillow, "
                "or use a cv2_* interpolation."
            ) from None


def resize_image(image: np.ndarray, size: tuple[int, int], interp: str) -> np.ndarray:
    """Resize an ``(H, W[, C])`` image to ``size`` = ``(W, H)``.

    ``interp`` is ``cv2_<method>`` or ``pil_<method>`` as in hloc; ``cv2_area``
    falls back to linear when upsampling (area is meant for shrinking). PIL
    works on 8-bit data, so its output is rounded to whole grey levels.
    """
    kind, _, method = interp.partition("_")
    if kind == "cv2" and method in _CV2_INTERPOLATIONS:
        flag = _CV2_INTERPOLATIONS[method]
        height, width = image.shape[:2]
        if flag == cv2.INTER_AREA and (width < size[0] or height < size[1]):
            flag = cv2.INTER_LINEAR
        return cv2.resize(image, size, interpolation=flag)
    if kind == "pil" and method in _PIL_INTERPOLATIONS:
        import PIL.Image

        resample = getattr(PIL.Image.Resampling, _PIL_INTERPOLATIONS[method])
        pil_image = PIL.Image.fromarray(image.astype(np.uint8))
        resized = pil_image.resize(size, resample=resample)
        return np.asarray(resized, dtype=image.dtype)
    _check_interpolation(interp)  # raises with the list of known names
    raise AssertionError(interp)


def list_images(image_dir: Path, globs: Sequence[str]) -> list[str]:
    """Sorted names (relative posix paths) of the images under ``image_dir``
    matching any of ``globs``, in any sub-folder."""
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise UserError(f"Image folder not found: {image_dir}. Check the path.")
    paths: set[str] = set()
    for pattern in globs:
        query = glob.escape(image_dir.as_posix()) + "/**/" + pattern
        paths.update(glob.glob(query, recursive=True))
    names = sorted(Path(p).relative_to(image_dir).as_posix() for p in paths)
    if not names:
        raise EmptyResultError(
            f"No image found in {image_dir} (or its sub-folders) matching "
            f"{', '.join(globs)}. Check the folder, or set the conf's "
            "preprocessing 'globs'."
        )
    return names


def _names_from_list(
    image_dir: Path, image_list: Path | str | Sequence[str | Path]
) -> list[str]:
    if isinstance(image_list, (str, Path)):
        names = parse_image_lists(Path(image_list))
    elif isinstance(image_list, collections.abc.Iterable):
        names = [p.as_posix() if isinstance(p, Path) else str(p) for p in image_list]
    else:
        raise UserError(f"Unknown type for the image list: {type(image_list)}.")
    names = list(dict.fromkeys(names))  # drop duplicates, keep the order
    if not names:
        raise EmptyResultError("The image list is empty.")
    missing = [n for n in names if not (Path(image_dir) / n).is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise UserError(
            f"{len(missing)} image(s) of the image list are not in {image_dir}: "
            f"{shown}. Fix the list or the image folder."
        )
    return names


class ImageDataset(torch.utils.data.Dataset):
    """Images of a folder, decoded and resized as the conf's preprocessing says.

    Item: ``name``; ``image`` C x H x W float32 in [0, 1] (C = 1 if grayscale
    else 3, RGB); ``original_size`` int64 ``[W, H]`` before resizing. An image
    that cannot be read gives ``error`` (a message) and no ``image``.
    """

    def __init__(
        self,
        root: Path,
        conf: dict[str, Any],
        paths: Path | str | Sequence[str | Path] | None = None,
    ) -> None:
        self.conf = {**DEFAULT_PREPROCESSING, **(conf or {})}
        self.root = Path(root)
        _check_interpolation(self.conf["interpolation"])
        if not self.root.is_dir():
            raise UserError(f"Image folder not found: {self.root}. Check the path.")
        if paths is None:
            self.names = list_images(self.root, self.conf["globs"])
            logger.info("Found %d images in %s.", len(self.names), self.root)
        else:
            self.names = _names_from_list(self.root, paths)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        name = self.names[idx]
        conf = self.conf
        try:
            image = read_image(self.root / name, conf["grayscale"])
        except ImageReadError as error:
            return {"name": name, "error": str(error)}
        # Resize in float32 like hloc, so that both give the same pixels.
        image = image.astype(np.float32)
        size = image.shape[:2][::-1]
        resize_max = conf["resize_max"]
        if resize_max and (conf["resize_force"] or max(size) > resize_max):
            scale = resize_max / max(size)
            new_size = tuple(int(round(x * scale)) for x in size)
            image = resize_image(image, new_size, conf["interpolation"])
        image = image[None] if conf["grayscale"] else image.transpose(2, 0, 1)
        image = torch.from_numpy(np.ascontiguousarray(image) / np.float32(255.0))
        return {
            "name": name,
            "image": image,
            "original_size": np.array(size, dtype=np.int64),
        }


def _iterate(
    dataset: ImageDataset, prefetch: str, pin_memory: bool, depth: int = 3
) -> Iterator[dict[str, Any]]:
    """Items of ``dataset`` in order, prepared ahead of the consumer.

    ``prefetch``: ``"thread"`` (a background thread, the default: OpenCV
    decodes and resizes without holding the GIL), ``"process"`` (a DataLoader
    worker process, like hloc) or ``"none"``.
    """
    if prefetch == "none":
        yield from (dataset[i] for i in range(len(dataset)))
    elif prefetch == "process":
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=None, num_workers=1, pin_memory=pin_memory
        )
        yield from loader
    elif prefetch == "thread":

        def load(i: int) -> dict[str, Any]:
            item = dataset[i]
            if pin_memory and "image" in item:
                item["image"] = item["image"].pin_memory()
            return item

        pool = ThreadPoolExecutor(1, thread_name_prefix="xfeat_hloc-decode")
        try:
            futures: deque = deque()
            for i in range(len(dataset)):
                futures.append(pool.submit(load, i))
                if len(futures) > depth:
                    yield futures.popleft().result()
            while futures:
                yield futures.popleft().result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    else:
        raise ValueError(f"Unknown prefetch mode {prefetch!r}.")


def _pick_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _to_numpy(pred: dict[str, Any]) -> dict[str, np.ndarray]:
    """First batch element of every output, as numpy on the CPU."""
    return {k: v[0].detach().cpu().numpy() for k, v in pred.items()}


def postprocess(
    pred: dict[str, np.ndarray],
    input_size: Sequence[int],
    original_size: np.ndarray,
    detection_noise: float,
    as_half: bool,
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, Any]]]:
    """Bring one image's outputs to the original image and to the file format.

    Keypoints move from the network input (``input_size`` = [W, H]) to the
    original image with ``(kp + 0.5) * scale - 0.5``. Returns the datasets and
    their attributes.
    """
    pred = dict(pred)
    attrs: dict[str, dict[str, Any]] = {}
    pred["image_size"] = np.asarray(original_size, dtype=np.int64)
    if "keypoints" in pred:
        scales = (np.asarray(original_size) / np.asarray(input_size)).astype(np.float32)
        keypoints = pred["keypoints"].astype(np.float32)
        pred["keypoints"] = (keypoints + 0.5) * scales[None] - 0.5
        if "scales" in pred:
            pred["scales"] = pred["scales"] * scales.mean()
        uncertainty = float(detection_noise) * float(scales.mean())
        attrs["keypoints"] = {"uncertainty": uncertainty}
    if as_half:
        for key, value in pred.items():
            if key != "keypoints" and value.dtype in (np.float32, np.float64):
                pred[key] = value.astype(np.float16)
    return pred, attrs


@dataclass
class ExtractionSummary:
    """What one extraction did (the CLI prints it)."""

    path: Path
    extracted: int = 0
    already_done: int = 0
    unreadable: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        bad = f", {len(self.unreadable)} unreadable" if self.unreadable else ""
        return (
            f"extracted {self.extracted} images ({self.already_done} already "
            f"done{bad}) -> {self.path}, {self.seconds:.1f} s"
        )


def extract(
    conf: dict[str, Any],
    image_dir: Path,
    export_dir: Path | None = None,
    as_half: bool = True,
    image_list: Path | str | Sequence[str | Path] | None = None,
    feature_path: Path | None = None,
    overwrite: bool = False,
    device: str | torch.device | None = None,
    model: BaseModel | None = None,
    prefetch: str = "thread",
) -> ExtractionSummary:
    """:func:`main`, returning an :class:`ExtractionSummary`.

    ``model``: an already built extractor to use instead of loading the conf's
    (the benchmark reuses one); ``prefetch``: see :func:`_iterate`.
    """
    start = time.perf_counter()
    logger.info(
        "Extracting local features with configuration:\n%s", pprint.pformat(conf)
    )
    dataset = ImageDataset(image_dir, conf.get("preprocessing", {}), image_list)
    if feature_path is None:
        if export_dir is None:
            raise UserError("Give an export_dir or a feature_path for the features.")
        feature_path = Path(export_dir, conf["output"] + ".h5")
    feature_path = Path(feature_path)
    summary = ExtractionSummary(path=feature_path)

    with H5Writer(feature_path, overwrite, flush_every=32, flush_seconds=3) as writer:
        todo = [n for n in dataset.names if n not in writer.done]
        summary.already_done = len(dataset.names) - len(todo)
        dataset.names = todo
        if not todo:
            logger.info("Skipping the extraction: all images are in %s.", feature_path)
            summary.seconds = time.perf_counter() - start
            return summary

        device = _pick_device(device)
        if model is None:  # before reading images: a wrong conf fails at once
            Model = dynamic_load(extractors, conf["model"]["name"])
        ready: BaseModel | None = None  # built at the first readable image

        items = _iterate(dataset, prefetch, pin_memory=device.type == "cuda")
        with torch.inference_mode():
            for item in tqdm(items, total=len(todo), desc="extract", unit="img"):
                name = item["name"]
                if "error" in item:
                    logger.warning("Skipping image %s: %s", name, item["error"])
                    summary.unreadable.append(name)
                    continue
                if ready is None:
                    ready = model if model is not None else Model(conf["model"])
                    ready = ready.eval().to(device)
                    detection_noise = getattr(ready, "detection_noise", 1.0)
                image = item["image"].to(device, non_blocking=True)[None]
                pred = _to_numpy(ready({"image": image}))
                datasets, attrs = postprocess(
                    pred,
                    image.shape[-2:][::-1],
                    item["original_size"],
                    detection_noise,
                    as_half,
                )
                writer.write(name, datasets, attrs)
                summary.extracted += 1

    if summary.unreadable:
        shown = ", ".join(summary.unreadable[:10])
        more = ", ..." if len(summary.unreadable) > 10 else ""
        logger.warning(
            "%d image(s) could not be read and have no features: %s%s",
            len(summary.unreadable),
            shown,
            more,
        )
        if summary.extracted == 0 and summary.already_done == 0:
            raise EmptyResultError(
                f"None of the {len(summary.unreadable)} images in {image_dir} could "
                "be read (see the warnings above); nothing was written."
            )
    summary.seconds = time.perf_counter() - start
    logger.info("Finished exporting features: %s", summary.line())
    return summary


def main(
    conf: dict[str, Any],
    image_dir: Path,
    export_dir: Path | None = None,
    as_half: bool = True,
    image_list: Path | str | Sequence[str | Path] | None = None,
    feature_path: Path | None = None,
    overwrite: bool = False,
    device: str | torch.device | None = None,
) -> Path:
    """Extract features of the images of ``image_dir`` into an h5 file.

    Args:
        conf: an extractor conf (``output``, ``model``, ``preprocessing``), e.g.
            ``confs["xfeat"]``.
        image_dir: the image folder; group names are paths relative to it.
        export_dir: where ``<conf["output"]>.h5`` goes (unless ``feature_path``).
        as_half: store descriptors and scores as float16 (keypoints stay float32).
        image_list: names relative to ``image_dir``, or a text file (or glob of
            text files) listing them; default: every image matching the globs.
        feature_path: explicit output file.
        overwrite: recompute images already in the file.
        device: torch device; None: CUDA if available, else CPU.

    Returns:
        The path of the features file. Images already in it are skipped;
        unreadable images are skipped with a warning.
    """
    return extract(
        conf,
        image_dir,
        export_dir,
        as_half,
        image_list,
        feature_path,
        overwrite,
        device,
    ).path


# ---------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``xfeat-hloc extract``."""
    parser.add_argument(
        "--image_dir",
        type=Path,
        required=True,
        help="image folder; h5 names are paths relative to it",
    )
    parser.add_argument(
        "--export_dir", type=Path, help="folder of <conf output>.h5 (or --feature_path)"
    )
    parser.add_argument("--conf", default="xfeat", choices=list(confs))
    parser.add_argument(
        "--as_half",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="store descriptors and scores as float16 (keypoints stay float32)",
    )
    parser.add_argument(
        "--image_list", type=Path, help="text file of image names (globs allowed)"
    )
    parser.add_argument("--feature_path", type=Path, help="explicit output h5 file")
    parser.add_argument("--overwrite", action="store_true")
    add_device_and_weights(parser)


def run_cli(args: argparse.Namespace) -> int:
    """Run ``xfeat-hloc extract`` and print a one-line summary."""
    from .confs import get_conf

    conf = get_conf(args.conf, "extractor", args.weights)
    if args.export_dir is None and args.feature_path is None:
        raise UserError("Give --export_dir or --feature_path.")
    summary = extract(
        conf,
        args.image_dir,
        args.export_dir,
        args.as_half,
        args.image_list,
        args.feature_path,
        args.overwrite,
        args.device,
    )
    print(summary.line())
    return 0
