"""timm's ``Lars`` optimizer, loaded without importing the ``timm`` package.

``timm/__init__.py`` imports torchvision, which is not installed with the test
extra; ``timm`` itself is installed with ``pip install --no-deps timm==1.0.31``.
Only ``timm/optim/lars.py`` (and the ``timm/optim/_helpers.py`` it imports
relatively, which needs only torch) are loaded, from the installed package's
directory, under a private package name.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from typing import Any

_PACKAGE = "_lars_multi_timm_optim"


def load_timm_lars() -> Any | None:
    """timm's ``lars`` module (``.Lars``), or None where timm is not installed."""
    if f"{_PACKAGE}.lars" in sys.modules:
        return sys.modules[f"{_PACKAGE}.lars"]
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        return None
    optim_dir = os.path.join(next(iter(spec.submodule_search_locations)), "optim")
    if not os.path.isfile(os.path.join(optim_dir, "lars.py")):
        return None
    package = types.ModuleType(_PACKAGE)
    package.__path__ = [optim_dir]  # so that "from ._helpers import ..." finds the sibling file
    sys.modules[_PACKAGE] = package
    module = None
    for name in ("_helpers", "lars"):
        full = f"{_PACKAGE}.{name}"
        file_spec = importlib.util.spec_from_file_location(full, os.path.join(optim_dir, f"{name}.py"))
        assert file_spec is not None and file_spec.loader is not None
        module = importlib.util.module_from_spec(file_spec)
        sys.modules[full] = module
        file_spec.loader.exec_module(module)
    return module
