"""The backfill on a real distributed engine: Beam's DaskRunner against a ``dask.distributed``
cluster of two worker processes (a scheduler, pickled work, workers that share nothing with this
process), through the same command line as on the DirectRunner, giving the same records."""
import os
import time

import pytest

pytest.importorskip("distributed")

from pipelines import backfill  # noqa: E402
from tests.test_object_storage import AS_OF, S3, Local, run_cli, s3_client, s3_options, tree  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as c:
        yield c


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    store = Local(tmp_path_factory.mktemp("dask"))
    store.put(tree("http://127.0.0.1:9", "unused"))
    return store


def run_backfill(store, output, *extra):
    code, err = run_cli(backfill, ["--config", store.path("cfg/config.yaml"),
                                   "--snapshot", store.path("snap/*.parquet"),
                                   "--events", store.path("events/*.jsonl"), "--as_of", AS_OF,
                                   "--output", output, *extra])
    assert code == 0 and "Traceback" not in err, err
    if "DaskRunner" in extra:   # Beam's DaskRunner keeps no metrics: no false zeros in the summary
        assert f"backfill as of {AS_OF}: finished on DaskRunner, which reports no counts; the records were written to {output}" in err
        assert "profiles read" not in err
    return sorted(line for name in os.listdir(output) if name.startswith("records-")
                  for line in open(os.path.join(output, name)))


def on_dask(cluster):
    return ["--runner", "DaskRunner", "--dask_client_address", cluster.scheduler_address]


@pytest.fixture(scope="module")
def direct_records(inputs, tmp_path_factory):
    return run_backfill(inputs, str(tmp_path_factory.mktemp("direct")))


def test_backfill_on_dask_gives_the_direct_runner_records(cluster, inputs, direct_records, tmp_path):
    records = run_backfill(inputs, str(tmp_path / "out"), *on_dask(cluster))
    assert len(direct_records) > 100
    assert records == direct_records
    # the DoFns ran as tasks of the cluster's scheduler, on its two worker processes; the job's
    # client is closed at its end, the cluster stays up
    assert len(cluster.workers) == 2 and all(w.process.is_alive() for w in cluster.workers.values())
    assert any(prefix.startswith("apply_dofn_to_bundle") for prefix in cluster.scheduler.task_prefixes)
    deadline = time.time() + 10
    while cluster.scheduler.clients.keys() - {"fire-and-forget"} and time.time() < deadline:
        time.sleep(0.1)
    assert not cluster.scheduler.clients.keys() - {"fire-and-forget"}


def test_dask_workers_read_s3_with_the_job_options(cluster, moto_server, direct_records, tmp_path):
    """Workers get the job's ``--s3_*`` options (Beam's DaskRunner alone leaves them without)."""
    client = s3_client(moto_server)
    bucket = "dask-inputs"
    client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "us-east-2"})
    store = S3(client, bucket)
    store.put(tree("http://127.0.0.1:9", "unused"))
    records = run_backfill(store, str(tmp_path / "out"), *on_dask(cluster), *s3_options(moto_server))
    assert records == direct_records
