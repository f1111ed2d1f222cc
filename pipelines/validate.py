"""``python -m pipelines.validate --config C``: check a config before anything runs.

Prints one line and exits 0 when valid. Otherwise exits 2 and writes to stderr either one line
(the file cannot be read or parsed) or how many errors, then one line per error with its field
path, so every problem is fixed in one round. Beam's filesystem options (``--s3_endpoint_url``,
``--s3_region_name``, ...) are accepted, for a config on object storage.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from transforms.config import ConfigError, ConfigFileError, load_config


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.validate", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="export config, YAML or JSON (any Beam filesystem)")
    args, beam_args = parser.parse_known_args(argv)
    options = PipelineOptions(beam_args)
    known = options.get_all_options()
    unknown = [a for a in beam_args if a.startswith("--") and a[2:].split("=", 1)[0] not in known]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    FileSystems.set_options(options)
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


if __name__ == "__main__":
    sys.exit(main())
