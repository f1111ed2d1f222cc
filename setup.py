"""Installable package for the Kinesis profile-export Beam job.

Works with ``pip install -e .[test]`` and as Beam's ``--setup_file`` (workers install the
same packages: ``pipelines``, ``transforms`` and the ``schemas`` data files).
"""
import setuptools

setuptools.setup(
    name="kinesis-profile-export",
    version="0.1.0",
    description="Apache Beam job streaming audience qualifications and profile attributes to Amazon Kinesis",
    packages=["pipelines", "transforms", "schemas"],
    package_data={"schemas": ["*.json", "*.avsc"]},
    python_requires=">=3.10",
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
