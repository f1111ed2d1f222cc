"""The compiled core: the per-update modules compiled by Cython at install time, and the way
back to their pure-Python source.

The modules of ``COMPILED_MODULES`` are plain Python and stay the source of truth: ``setup.py``
compiles them unchanged (when Cython and a C compiler are there at install time: ``pip install``
fetches Cython itself) into extension modules beside them, which Python's import prefers. Both
builds give the same records (the tests run the property tests on both); the compiled one spends
less CPU per update (BENCHMARKS.md). Modules holding Beam DoFns are not compiled: Beam pickles
their functions, which a compiled function cannot be.

Beside a module, a ``.pxd`` file of the same name declares its per-update classes for Cython
alone: they compile to extension types whose attributes are slots read without a dictionary
lookup, and whose methods declared ``cpdef`` the other compiled modules call directly (15% less
CPU per update than the same modules compiled as plain Python classes). The ``.py`` keeps every
line of the logic; the declarations only name what exists. So every attribute an instance is
given is listed there (the compiled build refuses any other, which the test suite run on it
shows), and a method declared ``cpdef`` holds no lambda or generator expression (Cython cannot
compile a closure inside one).

The pure-Python sources of the compiled modules are imported instead, all of them, when
- ``KINESIS_EXPORT_PURE_PYTHON=1`` is set (to debug, profile or compare the builds), or
- a module's source or declarations were edited after it was compiled (an editable install does
  not rebuild on edit: ``pip install -e .`` again does), with a one-line warning naming the file.
  All of them, because the compiled modules use each other's extension types: an edited module
  run from its source beside the others compiled would not fit them.

``warn_if_pure`` is called where a job starts and where a worker sets the exporter up: a core
that could not be compiled runs as pure Python, with a one-line warning saying so.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import sys
from typing import Dict, List, Optional

# the per-update path: rules, merge policies, state, audiences, the export decision, formatting
COMPILED_MODULES = ("transforms.timeutil", "transforms.rules", "transforms.merge", "transforms.profile_state",
                    "transforms.audiences", "transforms.export_decision", "transforms.record_format",
                    "transforms.exporter")
PURE_ENV = "KINESIS_EXPORT_PURE_PYTHON"
# a source newer than its extension by more than this was edited after the build (files of one
# wheel or one build are written within moments of each other)
_EDITED_AFTER_S = 2.0

_LOG = logging.getLogger(__name__)
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_warned = False


def _source(name: str) -> str:
    return os.path.join(_PACKAGE_DIR, name.rpartition(".")[2] + ".py")


def _extension(name: str) -> Optional[str]:
    stem = os.path.join(_PACKAGE_DIR, name.rpartition(".")[2])
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if os.path.exists(stem + suffix):
            return stem + suffix
    return None


def _edited_after_build(name: str) -> List[str]:
    """The module's source and declarations (``.pxd``) written after its extension was built."""
    extension = _extension(name)
    if extension is None:
        return []
    built = os.path.getmtime(extension) + _EDITED_AFTER_S
    files = (_source(name), _source(name)[:-3] + ".pxd")
    return [f for f in files if os.path.exists(f) and os.path.getmtime(f) > built]


class _PureSource(importlib.abc.MetaPathFinder):
    """Imports the listed modules from their ``.py`` source even where an extension module exists."""

    def __init__(self, names: frozenset):
        self.names = names

    def find_spec(self, fullname, path=None, target=None):
        if fullname in self.names:
            return importlib.util.spec_from_file_location(fullname, _source(fullname))
        return None


def install(environ=os.environ) -> None:
    """Called by ``transforms/__init__.py``, before any compiled module is imported."""
    if any(isinstance(finder, _PureSource) for finder in sys.meta_path):
        return
    asked = environ.get(PURE_ENV) == "1"
    edited = [] if asked else _edited()
    for path in edited:
        _LOG.warning("%s was edited after it was compiled: running the per-update core from its Python "
                     "source (pip install -e . rebuilds it)", path)
    if asked or edited:
        sys.meta_path.insert(0, _PureSource(frozenset(COMPILED_MODULES)))


def _edited() -> List[str]:
    return [path for name in COMPILED_MODULES for path in _edited_after_build(name)]


def builds() -> Dict[str, str]:
    """``{module: "compiled" | "pure"}`` as imported in this process."""
    found = {}
    for name in COMPILED_MODULES:
        origin = importlib.import_module(name).__spec__.origin or ""
        found[name] = "compiled" if origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)) else "pure"
    return found


def not_compiled() -> List[str]:
    """The core modules running as pure Python although nobody asked for it."""
    if os.environ.get(PURE_ENV) == "1" or _edited():
        return []
    return [name for name, build in builds().items() if build == "pure"]


def warn_if_pure() -> None:
    """One warning line per process when the core could not be compiled at install time."""
    global _warned
    missing = [] if _warned else not_compiled()
    if missing:
        _warned = True
        which = "" if len(missing) == len(COMPILED_MODULES) else f" ({', '.join(m.rpartition('.')[2] for m in missing)})"
        _LOG.warning("the per-update core is not compiled%s: running it as pure Python, same records, more CPU "
                     "per update; install with Cython and a C compiler present to compile it", which)
