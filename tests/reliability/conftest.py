"""The reliability tests drive the same fault code as ``reliability/run.py``, at a smaller size.

``reliability/`` is a folder of scripts at the repository root, not part of the package:
put the root on ``sys.path`` so the tests import it as the script does.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
