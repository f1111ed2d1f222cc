"""``python -m pipelines.validate --config C``: check a config before anything runs.

Beam's filesystem options (``--s3_endpoint_url``, ...) apply to reading a config on ``s3://``
or ``gs://``; the other Beam options are accepted, as by the jobs, and have nothing to act on.

Prints one line and exits 0 when valid. Otherwise exits 2 and writes to stderr either one line
(the file cannot be read or parsed) or how many errors, then one line per error with its field
path, so every problem is fixed in one round.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.common import ConfigOptions, cli_main, parse_command_line, require
from transforms.config import ConfigError, ConfigFileError, load_config

SUMMARY = "Check an export config: every problem is listed with its field path, nothing runs."


def run(argv: Sequence[str]) -> int:
    args, beam_args = parse_command_line(argv, "python -m pipelines.validate", "--config CONFIG [Beam options]",
                                         SUMMARY, [ConfigOptions])
    require(args.config, "--config")
    FileSystems.set_options(PipelineOptions(beam_args))
    try:
        config = load_config(args.config)
    except ConfigFileError as e:
        print(e, file=sys.stderr)
        return 2
    except ConfigError as e:
        print(f"{args.config}: invalid config: {len(e.errors)} error(s)", file=sys.stderr)
        for error in e.errors:
            print(f"  {error}", file=sys.stderr)
        return 2
    mapped = len(config.mapping.audiences)
    print(f"OK: {args.config}: {len(config.audiences)} audiences ({mapped} mapped), "
          f"{len(config.merge_policies)} merge policies, stream {config.destination.stream}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli_main(run, argv)


if __name__ == "__main__":
    sys.exit(main())
