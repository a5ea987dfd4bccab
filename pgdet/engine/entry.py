"""What the training commands (pgdet-train, pgdet-lazy-train) share: parse detectron2's arguments,
launch `main` on every process, and turn the errors a user can fix (config, missing file, dataset,
weights that cannot be downloaded) into one line. ``PGDET_TRACEBACK=1`` shows their traceback
instead."""
import os
import sys

from detectron2.engine import default_argument_parser, launch

from ..config_error import ConfigError
from ..data import (
    DatasetConfigError, DatasetContentError, MalformedAnnotationError, UnknownDatasetError,
)

USER_ERRORS = (ConfigError, FileNotFoundError, UnknownDatasetError, DatasetConfigError,
               DatasetContentError, MalformedAnnotationError)


def launch_main(main, description: str = None) -> None:
    """Run ``main(args)`` with detectron2's ``launch``; exit with ``error: ...`` on a user error.
    `description` heads ``--help`` (detectron2's parser shows it as written)."""
    parser = default_argument_parser()
    parser.description = description
    args = parser.parse_args()
    print("Command Line Args:", args)
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except USER_ERRORS as e:
        if os.environ.get("PGDET_TRACEBACK", "0") not in ("", "0"):
            raise
        sys.exit(f"error: {e}")
