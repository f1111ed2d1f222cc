"""``--runner DaskRunner``: Beam's DaskRunner, plus the job's filesystem options on every worker.

On Flink and Dataflow, Beam's SDK harness hands each worker the pipeline options and applies
them to ``FileSystems`` (``--s3_endpoint_url``, S3 credentials, the GCS project), so a DoFn
that opens ``s3://...`` on a worker reads with the job's settings. Beam's DaskRunner does not:
a Dask worker process has no options, and S3 fails there with "Must provide one of client or
options". This runner registers a Dask worker plugin that applies them before any task runs,
then lets Beam's runner do the rest. The options reach the scheduler and the workers like any
pipeline option does on other runners; prefer credentials from the workers' environment or
instance role over ``--s3_secret_access_key`` on shared clusters. One cluster runs one job at
a time with these settings (a later job's registration replaces them).

Without ``--dask_client_address`` (or ``--dask_scheduler_file``) a ``LocalCluster`` is started
in this process, as Beam's runner would, and lives as long as the process.
"""
from __future__ import annotations

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.dask.dask_runner import DaskOptions
from apache_beam.runners.dask.dask_runner import DaskRunner as BeamDaskRunner
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin

PLUGIN_NAME = "kinesis-export-filesystem-options"


class ApplyFileSystemOptions(WorkerPlugin):
    """Sets ``FileSystems`` options on a Dask worker, as Beam's SDK harness does on others."""

    def __init__(self, options: dict):
        self.options = options

    def setup(self, worker):
        FileSystems.set_options(PipelineOptions.from_dictionary(self.options))


class DaskRunner(BeamDaskRunner):
    """Beam's ``DaskRunner`` whose workers read ``s3://``/``gs://`` with the job's options."""

    _local_clusters: list = []  # started here when no address is given; closed at exit

    def run_pipeline(self, pipeline, options):
        dask = options.view_as(DaskOptions)
        if dask.address is None and dask.scheduler_file is None:
            cluster = LocalCluster(dashboard_address=None)
            self._local_clusters.append(cluster)
            dask.address = cluster.scheduler_address
        connect = {"timeout": dask.timeout} if dask.timeout is not None else {}
        with Client(address=dask.address, scheduler_file=dask.scheduler_file, set_as_default=False,
                    **connect) as client:
            client.register_plugin(ApplyFileSystemOptions(options.get_all_options(drop_default=True)),
                                   name=PLUGIN_NAME)
        return super().run_pipeline(pipeline, options)
