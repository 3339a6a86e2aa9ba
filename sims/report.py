"""Writing benchmark results: a run header, and a section of docs/benchmarks.md per script."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def run_header(params: dict[str, Any]) -> str:
    """When and where a run happened, and with which parameters."""
    return (f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.node()} "
            f"({os.cpu_count()} cores, Python {platform.python_version()}); "
            + ", ".join(f"{k}={v}" for k, v in params.items()))


def write_section(key: str, title: str, body: str) -> None:
    """Replace (or append) the section between ``<!-- key:begin -->`` and ``:end`` markers."""
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    block = f"{begin}\n## {title}\n\n{body}\n{end}"
    if begin in text:
        pre, rest = text.split(begin, 1)
        text = pre + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    DOC.write_text(text)
