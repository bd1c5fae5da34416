"""hloc's model contract, so that our models run with or without hloc.

A model declares ``default_conf`` (shallow-merged with the conf's ``model`` dict,
which still holds ``name``), ``required_inputs``, and implements ``_init(conf)``
and ``_forward(data)``. ``xfeat_hloc.register()`` turns our model classes into
subclasses of hloc's own ``BaseModel`` so that hloc's ``dynamic_load`` accepts them.
"""

from __future__ import annotations

import importlib
import inspect
from abc import ABCMeta, abstractmethod
from types import ModuleType
from typing import Any, ClassVar

from torch import nn

from ..errors import UnknownConfError


class BaseModel(nn.Module, metaclass=ABCMeta):
    """Base class of extractors and matchers, with hloc's contract.

    Attributes:
        default_conf: defaults, shallow-merged with the conf passed in.
        required_inputs: keys that ``forward`` checks for in its input dict.
        detection_noise: optional, for extractors: the keypoint localisation noise
            in pixels of the network input, stored by ``extract_features`` as
            ``keypoints.attrs["uncertainty"]`` (scaled to the original image).
    """

    default_conf: ClassVar[dict[str, Any]] = {}
    required_inputs: ClassVar[list[str]] = []

    def __init__(self, conf: dict[str, Any]) -> None:
        # Call nn.Module directly (not super()) so that a class mixing this base
        # with hloc's BaseModel (see hloc_plugin) initialises exactly once.
        nn.Module.__init__(self)
        self.conf = conf = {**self.default_conf, **conf}
        self.required_inputs = list(type(self).required_inputs)
        self._init(conf)

    def forward(self, data: dict[str, Any]) -> dict[str, Any]:
        missing = [k for k in self.required_inputs if k not in data]
        if missing:
            raise KeyError(f"{type(self).__name__}: missing inputs {missing}.")
        return self._forward(data)

    @abstractmethod
    def _init(self, conf: dict[str, Any]) -> None:
        """Build the model from the merged conf."""

    @abstractmethod
    def _forward(self, data: dict[str, Any]) -> dict[str, Any]:
        """Run the model on a batch (batch size 1 in hloc's steps)."""


def dynamic_load(root: ModuleType | str, name: str) -> type[BaseModel]:
    """Return the single :class:`BaseModel` subclass defined in ``root.<name>``.

    Args:
        root: a package (``xfeat_hloc.extractors`` or ``xfeat_hloc.matchers``) or
            its dotted name.
        name: the conf's ``model.name``, i.e. the module file name.
    """
    root_name = root if isinstance(root, str) else root.__name__
    module_path = f"{root_name}.{name}"
    try:
        module = importlib.import_module(module_path)
    except ModuleNotFoundError as error:
        if error.name != module_path:
            raise
        package = importlib.import_module(root_name)
        known = sorted(getattr(package, "MODELS", ()))
        raise UnknownConfError(
            f"Unknown model name {name!r}: there is no module {module_path}. "
            f"Known models: {', '.join(known) or '(none)'}."
        ) from None
    classes = [
        c
        for _, c in inspect.getmembers(module, inspect.isclass)
        if c.__module__ == module_path and issubclass(c, BaseModel)
    ]
    if len(classes) != 1:
        raise RuntimeError(f"{module_path} must define exactly one model: {classes}")
    return classes[0]
