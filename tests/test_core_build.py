"""The compiled core and its pure-Python source (transforms/core_build.py): the suite runs on the
build it asks for (``./run_local.sh test`` runs it on both), an edited source is never shadowed by
a stale extension, and a core that could not be compiled says so in one line."""
import importlib.machinery
import logging
import os
import subprocess
import sys

import pytest

from transforms import core_build

PURE = os.environ.get(core_build.PURE_ENV) == "1"


def test_the_suite_runs_on_the_build_it_asks_for():
    found = core_build.builds()
    want = "pure" if PURE else "compiled"
    wrong = [name for name, build in found.items() if build != want]
    assert not wrong, (f"{', '.join(wrong)} run as {'compiled' if PURE else 'pure Python'}: "
                       + ("" if PURE else "(re)install with Cython and a C compiler present: pip install -e ."))


def test_pure_python_is_one_variable_away():
    code = "from transforms import core_build; print(sorted(set(core_build.builds().values())))"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, core_build.PURE_ENV: "1"},
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['pure']"


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A package directory holding ``merge.py`` and an extension module built from it."""
    monkeypatch.setattr(core_build, "_PACKAGE_DIR", str(tmp_path))
    source = tmp_path / "merge.py"
    source.write_text("BUILD = 'source'\n")
    extension = tmp_path / ("merge" + importlib.machinery.EXTENSION_SUFFIXES[0])
    extension.write_bytes(b"")
    yield source, extension
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, core_build._PureSource)]


def test_a_source_edited_after_its_build_is_imported_from_source(package, caplog, monkeypatch):
    source, extension = package
    os.utime(extension, (1_000_000, 1_000_000))
    os.utime(source, (1_000_010, 1_000_010))
    monkeypatch.setattr(sys, "meta_path", [f for f in sys.meta_path if not isinstance(f, core_build._PureSource)])
    with caplog.at_level(logging.WARNING):
        core_build.install(environ={})
    finder = sys.meta_path[0]
    # the whole core: the compiled modules use each other's extension types
    assert isinstance(finder, core_build._PureSource) and finder.names == set(core_build.COMPILED_MODULES)
    assert finder.find_spec("transforms.merge").origin == str(source)
    assert finder.find_spec("transforms.rules").origin == os.path.join(os.path.dirname(source), "rules.py")
    assert finder.find_spec("transforms.model") is None
    assert [r.getMessage() for r in caplog.records] == [
        f"{source} was edited after it was compiled: running the per-update core from its Python source "
        "(pip install -e . rebuilds it)"]


def test_edited_declarations_count_as_an_edit(package, monkeypatch):
    source, extension = package
    declarations = source.with_suffix(".pxd")
    declarations.write_text("cdef class MergePolicies:\n    pass\n")
    os.utime(source, (1_000_000, 1_000_000))
    os.utime(extension, (1_000_000, 1_000_000))
    os.utime(declarations, (1_000_010, 1_000_010))
    monkeypatch.setattr(sys, "meta_path", [f for f in sys.meta_path if not isinstance(f, core_build._PureSource)])
    core_build.install(environ={})
    assert sys.meta_path[0].names == set(core_build.COMPILED_MODULES)


def test_files_of_one_build_are_not_taken_for_an_edit(package, monkeypatch):
    source, extension = package
    os.utime(source, (1_000_001, 1_000_001))     # written a moment after the extension
    os.utime(extension, (1_000_000, 1_000_000))
    monkeypatch.setattr(sys, "meta_path", [f for f in sys.meta_path if not isinstance(f, core_build._PureSource)])
    core_build.install(environ={})
    assert not any(isinstance(f, core_build._PureSource) for f in sys.meta_path)


def test_a_core_that_could_not_be_compiled_warns_once(monkeypatch, caplog):
    monkeypatch.delenv(core_build.PURE_ENV, raising=False)
    monkeypatch.setattr(core_build, "builds", lambda: {"transforms.merge": "pure", "transforms.rules": "compiled"})
    monkeypatch.setattr(core_build, "_edited_after_build", lambda name: [])
    monkeypatch.setattr(core_build, "_warned", False)
    with caplog.at_level(logging.WARNING):
        core_build.warn_if_pure()
        core_build.warn_if_pure()
    assert [r.getMessage() for r in caplog.records] == [
        "the per-update core is not compiled (merge): running it as pure Python, same records, more CPU per "
        "update; install with Cython and a C compiler present to compile it"]


def test_asking_for_pure_python_is_no_warning(monkeypatch, caplog):
    monkeypatch.setenv(core_build.PURE_ENV, "1")
    monkeypatch.setattr(core_build, "_warned", False)
    with caplog.at_level(logging.WARNING):
        core_build.warn_if_pure()
    assert not caplog.records
