"""What the training commands (pgdet-train, pgdet-lazy-train) share: parse detectron2's arguments,
launch `main` on every process, and turn the errors a user can fix (config, missing file, dataset)
into one line."""
import sys

from detectron2.engine import default_argument_parser, launch

from ..data import DatasetConfigError, DatasetContentError, UnknownDatasetError
from .setup import ConfigError

USER_ERRORS = (ConfigError, FileNotFoundError, UnknownDatasetError, DatasetConfigError,
               DatasetContentError)


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
        sys.exit(f"error: {e}")
