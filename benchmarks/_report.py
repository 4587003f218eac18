"""What every benchmark of this folder does with its report: write it as JSON under ``benchmarks/results/``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO = RESULTS_DIR.parent.parent


def write_report(name: str, report: dict[str, Any]) -> Path:
    """Write ``report`` to ``results/<name>-<UTC timestamp>.json``, print where, and return the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path.relative_to(REPO)}")
    return path
