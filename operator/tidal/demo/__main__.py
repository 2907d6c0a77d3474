"""`python -m tidal.demo`: the same as `tidal demo` (what `make demo` runs)."""

from __future__ import annotations

import sys

from tidal.demo.cli import main

if __name__ == "__main__":
    sys.exit(main())
