#!/usr/bin/env python
"""featx command line: ``python cli.py --help``."""

from featx.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
