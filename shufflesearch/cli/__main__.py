"""`python -m shufflesearch.cli`: the same as the `shufflesearch` command."""

from __future__ import annotations

import sys

from . import main

sys.exit(main())
