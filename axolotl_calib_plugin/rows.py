"""Reading MCQ data files: the one JSONL reader of the dataset tools, the lm-eval tasks and the demo.

Every error names the file and the line (or item) and says what is wrong, so a bad row is found
before anything trains or evaluates on it.
"""

from __future__ import annotations

import json
import os

__all__ = ["CalibDataError", "read_jsonl", "read_jsonl_records"]


class CalibDataError(ValueError):
    """Malformed MCQ data; the message names the file (or hub split) and the row."""


def read_jsonl_records(path: str) -> list[tuple[str, dict]]:
    """Rows of a JSONL file (or a ``.json`` file holding a list) as ``(where, row)``, where ``where``
    names the file and line; raises :class:`CalibDataError` for a missing or empty file and invalid JSON."""
    if not os.path.isfile(path):
        raise CalibDataError(f"{path}: no such file")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    out = []
    if path.endswith(".json") and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise CalibDataError(f"{path}: not valid JSON ({e})") from None
        out = [(f"{path} item {i}", r) for i, r in enumerate(rows)]
    else:
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise CalibDataError(f"{path} line {lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            out.append((f"{path} line {lineno}", row))
    if not out:
        raise CalibDataError(f"{path}: no rows")
    return out


def read_jsonl(path: str) -> list[dict]:
    """The rows of :func:`read_jsonl_records`, without their locations."""
    return [row for _, row in read_jsonl_records(path)]
