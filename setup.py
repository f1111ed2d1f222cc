"""Installable package for the Kinesis profile-export Beam job.

Works with ``pip install -e .[test]`` and as Beam's ``--setup_file`` (workers install the
same packages: ``pipelines``, ``transforms`` and the ``schemas`` data files).

The per-update core (``COMPILED_MODULES`` of ``transforms/core_build.py``) is compiled by Cython
when it is importable (``pyproject.toml`` makes ``pip`` fetch it) and a C compiler is there (Beam's
SDK images have one); each extension is optional, so without them the same modules install as
pure Python. ``KINESIS_EXPORT_PURE_PYTHON=1`` at install time skips the compilation.
Cython (a build-time dependency only, in ``pyproject.toml``) rather than mypyc: it compiles the
modules as they are, with Python's semantics, where mypyc needs the whole core to type-check
strictly and then enforces the annotations at run time.
"""
import ast
import os

import setuptools


def compiled_modules():
    """``COMPILED_MODULES`` read from its one definition without importing the package."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "transforms", "core_build.py")) as f:
        for node in ast.parse(f.read()).body:
            if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "COMPILED_MODULES":
                return ast.literal_eval(node.value)
    raise RuntimeError("COMPILED_MODULES not found in transforms/core_build.py")


def extensions():
    if os.environ.get("KINESIS_EXPORT_PURE_PYTHON") == "1":
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("Cython is not importable here: this build of the per-update core is pure Python")
        return []
    modules = [setuptools.Extension(name, [name.replace(".", "/") + ".py"], optional=True)
               for name in compiled_modules()]
    try:
        # the modules compile unchanged: their annotations document, they do not retype (a
        # ``Dict[str, bool]`` value may still be None, as in Python)
        return cythonize(modules, build_dir="build/cython", quiet=True, nthreads=os.cpu_count() or 1,
                         compiler_directives={"language_level": 3, "annotation_typing": False})
    except Exception as e:   # a Cython that cannot translate them: the same modules as Python
        print(f"Cython could not translate the per-update core ({e}): it installs as pure Python")
        return []


setuptools.setup(
    name="kinesis-profile-export",
    version="0.1.0",
    description="Apache Beam job streaming audience qualifications and profile attributes to Amazon Kinesis",
    packages=["pipelines", "transforms", "schemas"],
    # the .pxd declarations travel with the sources that a worker's install (--setup_file) compiles
    package_data={"schemas": ["*.json", "*.avsc"], "transforms": ["*.pxd"]},
    python_requires=">=3.10",
    ext_modules=extensions(),
    options={"build_ext": {"parallel": os.cpu_count() or 1}},
    install_requires=[
        "apache-beam>=2.60",
        "boto3>=1.34",
        "fastavro>=1.9",
        "pyarrow>=15",
        "PyYAML>=6",
        # jsonschema: the config is checked at load time against schemas/config.schema.json,
        # the one description of its structure (types, required and unknown keys, ranges)
        "jsonschema>=4.18",
    ],
    extras_require={
        # moto[server]: a real Kinesis endpoint (server mode) for tests and the local demo.
        # dask, distributed: tests run the backfill on Beam's DaskRunner against a real
        # dask.distributed cluster (see the "dask" extra).
        "test": ["pytest>=8", "moto[server]>=5", "dask>=2024.4.2", "distributed>=2024.4.2"],
        # dask, distributed: the backfill on a Dask cluster (--runner DaskRunner), a distributed
        # batch engine that needs no JVM; the versions Beam's DaskRunner supports.
        "dask": ["dask>=2024.4.2", "distributed>=2024.4.2"],
        # duckdb: the reference the backfill benchmark is measured against (BENCHMARKS.md); never
        # needed at run time.
        "bench": ["duckdb>=1.0"],
    },
)
