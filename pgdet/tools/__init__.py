"""pgdet's commands (the console scripts of pyproject.toml): ``pgdet-train``, ``pgdet-lazy-train``
and ``pgdet-predict``; ``pgdet-table1`` is the protocol runner's (pgdet/protocol/cli.py)."""
