"""Make our models and confs available to an installed hloc.

hloc finds a model with ``dynamic_load(hloc.extractors, name)`` (or
``hloc.matchers``): it imports ``hloc.extractors.<name>`` and takes the single
class defined there that subclasses ``hloc.utils.base_model.BaseModel``.
:func:`register` therefore puts, for each of our models, a module object
``hloc.extractors.<name>`` / ``hloc.matchers.<name>`` into ``sys.modules`` (and
as an attribute of the parent package). The module is lazy: the first time hloc
looks inside it, it imports our model and defines a class that subclasses both
our model class and hloc's ``BaseModel``, with ``__module__`` set to the module
path. Our ``BaseModel.__init__`` calls ``nn.Module.__init__`` directly, so the
mix initialises once, and our ``forward`` (checks the inputs, calls
``_forward``) comes first in the MRO.

Our confs are added to ``hloc.extract_features.confs``,
``hloc.match_features.confs`` and ``hloc.match_dense.confs``. Nothing of
hloc's own is replaced unless ``overwrite=True``.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import sys
import types
from typing import Any

from . import logger
from .confs import dense_matchers, extractors, matchers

HLOC_INSTALL = (
    "hloc is not installed: install it with "
    "`pip install git+https://github.com/cvg/Hierarchical-Localization` "
    "(xfeat_hloc itself works without it)."
)

#: Attribute that marks the module objects made by :func:`register`.
MARKER = "__xfeat_hloc_plugin__"

# (our package, hloc's package) for each kind of model
_ROOTS = {
    "extractors": ("xfeat_hloc.extractors", "hloc.extractors"),
    "matchers": ("xfeat_hloc.matchers", "hloc.matchers"),
}
# hloc step module -> (kind of model its confs use, our confs)
_CONF_TABLES = {
    "extract_features": ("extractors", extractors),
    "match_features": ("matchers", matchers),
    "match_dense": ("matchers", dense_matchers),
}


def _import_hloc() -> types.ModuleType:
    try:
        import hloc.extractors
        import hloc.matchers
        import hloc.utils.base_model  # noqa: F401
    except ModuleNotFoundError as error:
        if error.name is not None and error.name.split(".")[0] == "hloc":
            raise ImportError(HLOC_INSTALL) from error
        raise ImportError(
            f"hloc is installed but cannot be imported ({error}): install the "
            "missing package."
        ) from error
    return hloc


def _module_exists(name: str) -> bool:
    """Whether ``name`` can be imported, without importing it."""
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def hloc_model_class(ours: type, hloc_base: type, module_path: str) -> type:
    """A class that is both ``ours`` and an hloc ``BaseModel``, defined in
    ``module_path`` for hloc's ``dynamic_load``."""

    def body(namespace: dict[str, Any]) -> None:
        namespace["__module__"] = module_path
        namespace["__qualname__"] = ours.__name__
        namespace["__doc__"] = ours.__doc__

    return types.new_class(ours.__name__, (ours, hloc_base), exec_body=body)


def _lazy_module(module_path: str, our_path: str) -> types.ModuleType:
    """Module object whose model class is built on first use (PEP 562)."""
    module = types.ModuleType(
        module_path, f"xfeat_hloc model {our_path}, registered into hloc."
    )
    setattr(module, MARKER, our_path)

    def build() -> None:
        if module.__dict__.get("_built"):
            return
        from hloc.utils.base_model import BaseModel as HlocBaseModel

        from .utils.base_model import dynamic_load

        package, name = our_path.rsplit(".", 1)
        try:
            ours = dynamic_load(package, name)
        except ImportError as error:
            raise ImportError(
                f"xfeat_hloc model {our_path} cannot be imported: {error}"
            ) from error
        cls = hloc_model_class(ours, HlocBaseModel, module_path)
        module.__dict__[cls.__name__] = cls
        module.__dict__["_built"] = True

    def module_getattr(attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        build()
        if attr in module.__dict__:
            return module.__dict__[attr]
        raise AttributeError(f"module {module_path!r} has no attribute {attr!r}")

    def module_dir() -> list[str]:
        build()
        return sorted(module.__dict__)

    module.__getattr__ = module_getattr  # type: ignore[method-assign]
    module.__dir__ = module_dir  # type: ignore[method-assign]
    return module


def _register_models(
    kind: str, names: tuple[str, ...], overwrite: bool, report: dict[str, Any]
) -> set[str]:
    """Register the model modules of one kind; return the usable model names."""
    our_root, hloc_root = _ROOTS[kind]
    parent = importlib.import_module(hloc_root)
    usable = set()
    for name in names:
        module_path, our_path = f"{hloc_root}.{name}", f"{our_root}.{name}"
        existing = sys.modules.get(module_path)
        if existing is not None and getattr(existing, MARKER, None) == our_path:
            report["already"].append(module_path)
            usable.add(name)
            continue
        if _module_exists(module_path) and not overwrite:
            report["skipped"][module_path] = "hloc has its own module of this name"
            continue
        if not _module_exists(our_path):
            report["skipped"][module_path] = f"{our_path} is not available"
            continue
        module = _lazy_module(module_path, our_path)
        sys.modules[module_path] = module
        setattr(parent, name, module)
        report["registered"].append(module_path)
        usable.add(name)
    return usable


def _register_confs(
    step: str, ours: dict[str, dict], usable: set[str], overwrite: bool, report: dict
) -> None:
    try:
        module = importlib.import_module(f"hloc.{step}")
    except ImportError as error:
        reason = f"hloc.{step} cannot be imported ({error})"
        logger.warning("Not registering our confs into hloc.%s: %s.", step, reason)
        report["skipped"][f"{step}.confs"] = reason
        return
    table = module.confs
    for name, conf in ours.items():
        key = f"{step}.confs[{name!r}]"
        model_name = conf["model"]["name"]
        if model_name not in usable:
            report["skipped"][key] = f"model {model_name!r} is not registered"
            continue
        if name in table and table[name] == conf:
            report["already"].append(key)
            continue
        if name in table and not overwrite:
            report["skipped"][key] = "hloc has its own conf of this name"
            continue
        table[name] = copy.deepcopy(conf)
        report["registered"].append(key)


def register(overwrite: bool = False) -> dict[str, Any]:
    """Make our models and confs available to an installed hloc.

    Idempotent. Models whose module is missing from this installation (or whose
    name hloc already uses) are skipped with a reason, and so are the confs that
    use them; confs of an hloc step that cannot be imported (hloc's
    ``match_dense`` needs torchvision) are skipped with a warning.

    Args:
        overwrite: replace hloc's own models and confs of the same names.

    Returns:
        ``{"registered": [...], "already": [...], "skipped": {item: reason}}``
        where items are module paths (``hloc.extractors.xfeat``) and conf keys
        (``extract_features.confs['xfeat']``); ``already`` lists what an earlier
        call registered.

    Raises:
        ImportError: hloc is not installed (the message says how to install it).
    """
    from . import extractors as our_extractors
    from . import matchers as our_matchers

    _import_hloc()
    report: dict[str, Any] = {"registered": [], "already": [], "skipped": {}}
    usable = {
        "extractors": _register_models(
            "extractors", our_extractors.MODELS, overwrite, report
        ),
        "matchers": _register_models(
            "matchers", our_matchers.MODELS, overwrite, report
        ),
    }
    for step, (kind, ours) in _CONF_TABLES.items():
        _register_confs(step, ours, usable[kind], overwrite, report)
    logger.info(
        "Registered into hloc: %d new, %d already there, %d skipped.",
        len(report["registered"]),
        len(report["already"]),
        len(report["skipped"]),
    )
    return report
