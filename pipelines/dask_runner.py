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
in this process, as Beam's runner would. When the job has finished, its client is closed (Beam's
runner leaves it open, and it then complains when the cluster goes) and so is such a cluster.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Optional

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.dask.dask_runner import DaskOptions
from apache_beam.runners.dask.dask_runner import DaskRunner as BeamDaskRunner
from apache_beam.runners.dask.dask_runner import DaskRunnerResult
from apache_beam.runners.runner import PipelineState
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin

PLUGIN_NAME = "kinesis-export-filesystem-options"


class ApplyFileSystemOptions(WorkerPlugin):
    """Sets ``FileSystems`` options on a Dask worker, as Beam's SDK harness does on others."""

    def __init__(self, options: dict):
        self.options = options

    def setup(self, worker):
        FileSystems.set_options(PipelineOptions.from_dictionary(self.options))


@dataclasses.dataclass
class DaskJobResult(DaskRunnerResult):
    """Beam's result, closing the job's client (and a cluster started for the job) at its end."""

    cluster: Optional[LocalCluster] = None

    def wait_until_finish(self, duration=None) -> str:
        try:
            return super().wait_until_finish(duration)
        finally:
            if PipelineState.is_terminal(self._state):
                self.client.close()
                if self.cluster is not None:
                    self.cluster.close()


class DaskRunner(BeamDaskRunner):
    """Beam's ``DaskRunner`` whose workers read ``s3://``/``gs://`` with the job's options."""

    def run_pipeline(self, pipeline, options):
        dask = options.view_as(DaskOptions)
        cluster = None
        if dask.address is None and dask.scheduler_file is None:
            # the cluster's INFO lines are not the job's: quiet here and in the spawned workers
            logging.getLogger("distributed").setLevel(logging.WARNING)
            os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
            cluster = LocalCluster(dashboard_address=None)
            dask.address = cluster.scheduler_address
        connect = {"timeout": dask.timeout} if dask.timeout is not None else {}
        with Client(address=dask.address, scheduler_file=dask.scheduler_file, set_as_default=False,
                    **connect) as client:
            client.register_plugin(ApplyFileSystemOptions(options.get_all_options(drop_default=True)),
                                   name=PLUGIN_NAME)
        result = super().run_pipeline(pipeline, options)
        return DaskJobResult(result.client, result.futures, cluster)
