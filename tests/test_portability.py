"""Production readiness (issue 9): both jobs build for Flink and Dataflow, every transform's
payload survives Beam's pickler, multi-process runs give the same records, and the deployment
files and the guide's commands match the code."""
import argparse
import json
import os
import re
import shlex

import apache_beam as beam
import pytest
from apache_beam.internal import pickler
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.sample_data import SampleDataOptions, write_snapshot
from pipelines import backfill, replay, streaming  # noqa: F401 (replay: its options count as known)
from tests.test_cli_e2e import records_in, run, updates_file, write_config
from transforms.config import load_config

RUNNER_OPTIONS = {
    "flink": ["--runner=FlinkRunner", "--flink_master=localhost:8081", "--parallelism=4", "--streaming"],
    "dataflow": ["--runner=DataflowRunner", "--project=p", "--region=us-east1", "--temp_location=gs://b/tmp",
                 "--enable_streaming_engine", "--setup_file=./setup.py"],
}


@pytest.fixture(scope="module")
def job_inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("portable")
    snapshot = write_snapshot(str(tmp / "snap.parquet"), 2000, with_membership=True, row_group_size=500)
    return tmp, snapshot, updates_file(tmp), write_config(tmp)


def built(job, argv):
    options = PipelineOptions(argv)
    pipeline = beam.Pipeline(runner="DirectRunner", options=options)  # built, never run remotely
    job.build(pipeline, load_config(options.view_as(streaming.ConfigOptions).config), options)
    return pipeline


@pytest.mark.parametrize("runner", sorted(RUNNER_OPTIONS))
@pytest.mark.parametrize("job", ["backfill", "streaming"])
def test_pipeline_proto_and_pickled_payloads(job_inputs, job, runner):
    tmp, snapshot, updates, config = job_inputs
    argv = ["--config", config, "--output", str(tmp / "out")] + RUNNER_OPTIONS[runner]
    argv += ["--snapshot", snapshot] if job == "backfill" else ["--input", updates, "--seed_snapshot", snapshot]
    pipeline = built(backfill if job == "backfill" else streaming, argv)
    proto = pipeline.to_runner_api()
    assert len(proto.components.transforms) > 5
    round_tripped = beam.Pipeline.from_runner_api(proto, pipeline.runner, pipeline._options)
    assert round_tripped is not None
    fns = []

    class Visitor(beam.pipeline.PipelineVisitor):
        def visit_transform(self, node):
            if isinstance(node.transform, beam.ParDo):
                fns.append(node.transform.fn)
    pipeline.visit(Visitor())
    assert fns
    for fn in fns:
        assert type(pickler.loads(pickler.dumps(fn))) is type(fn)


def lines(directory):
    return sorted(json.dumps(r, sort_keys=True) for r in records_in(directory))


def test_multi_process_backfill_and_replay_match_single_process(job_inputs):
    tmp, snapshot, updates, config = job_inputs
    multi = ["--runner=DirectRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"]
    for name, args in (("backfill", ["--snapshot", snapshot, "--as_of", "2024-05-01T00:00:00Z"]),
                       ("streaming", ["--input", updates, "--until", "2024-06-01T00:00:00Z"])):
        single = run(f"pipelines.{name}", "--config", config, *args, "--output", str(tmp / f"{name}-1"))
        assert single.returncode == 0, single.stderr
        many = run(f"pipelines.{name}", "--config", config, *args, *multi, "--output", str(tmp / f"{name}-2"))
        assert many.returncode == 0, many.stderr
        assert lines(tmp / f"{name}-1") and lines(tmp / f"{name}-1") == lines(tmp / f"{name}-2")


def test_dockerfile_and_flex_template_metadata():
    docker = open("deploy/Dockerfile").read()
    assert re.search(r"^FROM apache/beam_python3\.11_sdk:\$\{BEAM_VERSION\}$", docker, re.M)
    assert "COPY setup.py" in docker and "pip install" in docker
    assert "/opt/google/dataflow/python_template_launcher" in docker  # a Flex Template image needs the launcher
    entry = re.search(r"FLEX_TEMPLATE_PYTHON_PY_FILE=/opt/kinesis-export/(\S+)", docker).group(1)
    assert entry == "pipelines/${JOB}.py" and re.search(r"^ARG JOB=streaming$", docker, re.M)
    import importlib
    flags = set(PipelineOptions([]).get_all_options(retain_unknown_options=False))
    for job, metadata, required in (("streaming", "deploy/flex_template_metadata.json", {"config", "input"}),
                                    ("backfill", "deploy/backfill_flex_template_metadata.json", {"config", "snapshot"})):
        assert os.path.exists(f"pipelines/{job}.py")
        importlib.import_module(f"pipelines.{job}")
        meta = json.load(open(metadata))
        assert meta["name"] and meta["description"]
        names = {p["name"] for p in meta["parameters"]}
        assert all({"name", "label", "helpText"} <= set(p) for p in meta["parameters"])
        assert names <= flags and required == {p["name"] for p in meta["parameters"] if not p["isOptional"]}


FLINK_JOB_SERVER_OPTIONS = {"checkpointing_interval"}  # forwarded to Flink's job server


def dask_flags():
    """Beam's DaskOptions flags, whose names differ from their option names."""
    pytest.importorskip("distributed")
    from apache_beam.runners.dask.dask_runner import DaskOptions
    assert PipelineOptions(["--dask_client_address", "tcp://h:8786"]).view_as(DaskOptions).address == "tcp://h:8786"
    return {"dask_client_address"}


def test_guide_commands_match_the_clis():
    guide = open("docs/production.md").read() + open("README.md").read()
    commands = [c for block in re.findall(r"^ *```\w*\n(.*?)^ *```", guide, re.S | re.M)
                for c in block.replace("\\\n", " ").splitlines() if c.strip().startswith("python -m pipelines.")]
    assert len(commands) >= 8
    known = set(PipelineOptions([]).get_all_options(retain_unknown_options=False))
    sample_parser = argparse.ArgumentParser()
    SampleDataOptions._add_argparse_args(sample_parser)  # not a Beam job: its own options only
    sample_known = set(vars(sample_parser.parse_args([])))
    for command in commands:
        words = shlex.split(re.sub(r"\[.*?\]", "", command))
        flags = {w[2:].split("=")[0] for w in words if w.startswith("--")}
        allowed = sample_known if words[2] == "pipelines.sample_data" else known | FLINK_JOB_SERVER_OPTIONS | dask_flags()
        assert flags - allowed == set(), command
        module = words[2].split(".")[1]
        assert os.path.exists(f"pipelines/{module}.py"), command
