#!/usr/bin/env python
"""Paper Table 1 on any dataset: the ``pgdet-table1`` command (pgdet/protocol) as a script of the
repository; ``python benchmarks/table1.py --help`` describes it."""
from pgdet.protocol.cli import main

if __name__ == "__main__":
    main()
