"""MCQ rows: the one reader and normalizer of the dataset strategy, the lm-eval tasks and the demo.

It is one module on purpose (about 470 lines, most of them the rules and their messages): the row contract must
be read identically by training and evaluation, and keeping every rule for choices, answers and field names side
by side is what makes a drift between them visible.

Training (``type: axolotl_calib_plugin.mcq``) and evaluation (``calib_jsonl``, local and hub suites)
read a row ``{question, choices, answer}`` through :func:`normalize_mcq_row`, so a row is either
accepted with the same gold option by both, or rejected by both with the same message. Every error
names the file (or dataset), the row, the field and what to do; nothing is guessed or skipped.

**Choices** are a list of strings, or a string holding such a list (``"['Paris', 'Rome']"``: an
Arrow column has one type, so published MCQ sets often store the list as its Python ``repr``). The
string is parsed with :func:`ast.literal_eval` (JSON lists too), never by a regex, so options with
apostrophes or quotes survive. Numbers in the list become their text by one rule for every reader
(:func:`number_text`: ``1`` and ``1.0`` read ``"1"``; a number no double holds exactly is an error);
``null`` is an error (write ``""`` for an intentionally empty option).

**Answers** (``answer_format``, key ``calib_answer_format`` / lm-eval metadata ``answer_format``):

* ``index``: an int, or a string of ASCII digits, is the 0-based option index;
* ``letter``: the option letter (``"B"``; the first K of the letters in use);
* ``text``: the text of exactly one choice (both sides stripped); an int is read as its decimal text;
* ``auto`` (default): an int is an index; a string is read in all three ways above and must name
  exactly one option. A string is **ambiguous** when its readings name different options, e.g.
  ``"3"`` with choices ``["3", "7", "12", "5"]`` (index 3 is ``"5"``, the text ``"3"`` is option A),
  ``"B"`` when option A's text is ``"B"``, or a text shared by two choices: an error asking for an
  explicit format, never a guess.

An index outside ``0..K-1`` is an error naming the row (never wrapped around with a modulo).

**Mixed answer columns.** When a JSON file's ``answer`` column mixes numbers and strings, the HF
``datasets`` JSON loader (4.x) stores the column as JSON text and keeps any string that is itself
valid JSON unquoted (``datasets.utils.json.json_encode_field``): the text ``"12"`` is read back as the
int ``12``, indistinguishable from a real index. The strategy therefore reads an int from such a
column (``answer_from_json_column=True``) by the string rules, which gives the gold option the
lm-eval loader (plain ``json.loads``) gives, or an error where the row is ambiguous.

**CSV** has no types: the loader turns the cell ``3`` into the int 3, though it is the same text as
the JSONL string ``"3"``. An int from a CSV answer column (``answer_from_csv=True``) is therefore read
by the string rules too, so a row gets the same gold (or the same error) from either file.
"""

from __future__ import annotations

import ast
import json
import math
import os
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

from .prompts import DEFAULT_LETTERS

__all__ = [
    "ANSWER_FORMATS",
    "CalibDataError",
    "MCQRow",
    "check_data_file",
    "describe_value",
    "normalize_mcq_row",
    "normalize_records",
    "parse_choices",
    "raise_row_errors",
    "read_answer",
    "read_jsonl",
    "read_jsonl_records",
    "read_records",
    "require_field",
    "require_text",
]

#: how answers are written: ``auto`` reads ints as indices and strings as index, letter or text.
ANSWER_FORMATS = ("auto", "index", "letter", "text")
#: whole numbers up to this magnitude survive a float64 round trip exactly (numbers as choice text).
_EXACT_INT = 2**53
#: at most this many bad rows are quoted in one error (the total is always given).
MAX_LISTED_ERRORS = 10
#: what to do about an ambiguous answer, in every message that reports one.
_FORMAT_HINT = ("say how answers are written with calib_answer_format (training) or the lm-eval metadata "
                "answer_format / $CALIB_ANSWER_FORMAT: index, letter or text")


class CalibDataError(ValueError):
    """Malformed MCQ data; the message names the file (or hub split / dataset), the row and the field."""


class MCQRow(NamedTuple):
    """A checked MCQ row: the question, the option texts (in order) and the 0-based gold index."""

    question: str
    choices: list[str]
    gold: int


# ------------------------------------------------------------------------------------------- files
def check_data_file(path: str, key: str = "datasets") -> None:
    """Raise :class:`CalibDataError` when a local data file has no rows (empty, blank or ``[]``).

    HF ``datasets`` fails on such a file with a bare ``StopIteration`` (JSON) or "corresponds to no
    data" without the path; this check runs at config validation so the message names the file.
    Reads only up to the first non-blank characters, so it is cheap on large files.
    """
    head = ""
    with open(path, "rb") as fh:
        while len(head) < 2:
            chunk = fh.read(1 << 16)
            if not chunk:
                break
            head += "".join(chunk.decode("utf-8", errors="replace").split())[: 2 - len(head)]
    if not head or (path.endswith(".json") and head == "[]"):
        raise CalibDataError(
            f"{path}: the dataset file is empty (no rows); add MCQ rows ({{question, choices, answer}} per line) "
            f"or remove it from `{key}:`"
        )


def read_jsonl_records(path: str) -> list[tuple[str, dict]]:
    """Rows of a JSONL file (or a ``.json`` file holding a list) as ``(where, row)``, where ``where``
    names the file and line; raises :class:`CalibDataError` for a missing or empty file and invalid JSON.

    Values keep their JSON types (``"12"`` stays a string), unlike the HF JSON loader on mixed columns.
    """
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
        # "\n" only, as JSONL and the datasets JSON loader do: str.splitlines() also breaks at U+2028, U+0085 ...,
        # which are valid unescaped inside a JSON string
        for lineno, line in enumerate(text.split("\n"), start=1):
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


#: file suffix -> the HF ``datasets`` loader Axolotl reads it with (JSON/JSONL are read by :func:`read_jsonl_records`).
TABLE_LOADERS = {".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}


def is_csv_source(ds_cfg: Mapping[str, Any] | None) -> bool:
    """True when Axolotl reads this dataset entry as CSV (``ds_type: csv`` or a ``.csv`` path or
    data file): its cells have no types, so answers are read by the string rules (``answer_from_csv``)."""
    ds_cfg = ds_cfg or {}
    if ds_cfg.get("ds_type"):  # Axolotl's get_dataset_type: ds_type, else an extension in the path, else json
        return str(ds_cfg["ds_type"]).lower() == "csv"
    files = ds_cfg.get("data_files")
    names = [ds_cfg.get("path")] + ([files] if isinstance(files, str) else list(files or []))
    return any(isinstance(n, str) and ".csv" in n.lower() for n in names)


def read_records(path: str) -> tuple[list[tuple[str, Any]], bool]:
    """``(records, is_csv)`` of a local MCQ file, each record ``(where, row)``: JSONL/JSON by
    :func:`read_jsonl_records` (exact JSON types), CSV / TSV / parquet / arrow by the HF ``datasets`` loader
    Axolotl trains with (``where`` = ``"<path> row N"``, 1-based data row). ``is_csv``: answers carry no type."""
    loader = TABLE_LOADERS.get(os.path.splitext(path)[1].lower())
    if loader is None:
        return read_jsonl_records(path), False
    if not os.path.isfile(path):
        raise CalibDataError(f"{path}: no such file")
    check_data_file(path)
    import datasets

    try:
        ds = datasets.load_dataset(loader, data_files=path, split="train")
    except Exception as e:  # noqa: BLE001 - name the file, whatever the loader raised
        cause = e.__cause__ or e
        raise CalibDataError(f"{path}: cannot be read as {loader} ({type(cause).__name__}: {cause})") from None
    out = [(f"{path} row {i + 1}", row) for i, row in enumerate(ds)]
    if not out:
        raise CalibDataError(f"{path}: no rows")
    return out, loader == "csv"


def read_jsonl(path: str) -> list[dict]:
    """The rows of :func:`read_jsonl_records`, without their locations."""
    return [row for _, row in read_jsonl_records(path)]


def raise_row_errors(errors: Sequence[tuple[str, str]], source: str, scope: str = "") -> None:
    """Raise one :class:`CalibDataError` for ``errors`` = ``[(where, message), ...]`` (no-op if empty).

    One error reads ``"<where>: <message>"``; several read ``"<source>: N bad rows<scope>"`` followed
    by the first :data:`MAX_LISTED_ERRORS`, one per line, so a file with many bad rows is fixed in one go.
    """
    if not errors:
        return
    if len(errors) == 1:
        where, msg = errors[0]
        raise CalibDataError(f"{where}: {msg}")
    shown = [f"  {where}: {msg}" for where, msg in errors[:MAX_LISTED_ERRORS]]
    more = len(errors) - len(shown)
    tail = [f"  ... and {more} more"] if more else []
    raise CalibDataError(f"{source}: {len(errors)} bad rows{scope}:\n" + "\n".join(shown + tail))


# ------------------------------------------------------------------------------------------- fields
def describe_value(value: Any) -> str:
    """``type value`` of a bad field's value for an error message, cut at 80 characters."""
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 80 else text[:77] + '...'}"


def _quote(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _letters_span(letters: Sequence[str]) -> str:
    return f"{letters[0]}..{letters[-1]}" if len(letters) > 2 else "/".join(letters)


def parse_choices(value: Any, letters: Sequence[str] = DEFAULT_LETTERS, field: str = "choices") -> list[str]:
    """The option texts of a row's ``choices`` value (a list, or a string holding a list literal).

    Raises :class:`CalibDataError` (message starts with ``field '<field>'``) when the value is not a
    list, a string does not parse to a list, an item is null or not text, or there are fewer than 2
    options or more than ``letters``.
    """
    raw = value
    if isinstance(value, str):
        text = value.strip()
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            try:  # JSON spellings that are not Python literals: null, true, false
                value = json.loads(text)
            except (ValueError, RecursionError):
                raise CalibDataError(
                    f"field {field!r} is a string but not a list literal such as \"['Paris', 'Rome']\": "
                    f"{describe_value(raw)}; write the choices as a list of strings"
                ) from None
        if not isinstance(value, (list, tuple)):
            raise CalibDataError(
                f"field {field!r} is a string that holds a {type(value).__name__}, not a list of strings: "
                f"{describe_value(raw)}"
            )
    elif hasattr(value, "tolist") and not isinstance(value, (list, tuple)):  # numpy / pandas arrays
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise CalibDataError(
            f"field {field!r} must be a list of strings (or a string holding one, such as \"['Paris', 'Rome']\"), "
            f"got {describe_value(raw)}"
        )
    out = []
    for j, c in enumerate(value):
        if c is None:
            raise CalibDataError(
                f"field {field!r} item {j} is null; every option needs its text (write \"\" for an empty option)"
            )
        if not isinstance(c, (str, int, float)) and hasattr(c, "item") and hasattr(c, "dtype"):
            c = c.item()  # numpy scalars (a parquet / pandas column)
        if isinstance(c, bool) or not isinstance(c, (str, int, float)):
            raise CalibDataError(f"field {field!r} item {j} must be a string, got {describe_value(c)}")
        out.append(c if isinstance(c, str) else number_text(c, f"field {field!r} item {j}"))
    k = len(out)
    if k < 2:
        raise CalibDataError(f"field {field!r} has {k} option(s); an MCQ needs at least 2: {describe_value(raw)}")
    if k > len(letters):
        raise CalibDataError(
            f"field {field!r} has {k} options but there are only {len(letters)} option letters "
            f"({_letters_span(list(letters))}); drop options, or for training list more calib_option_letters"
        )
    return out


def number_text(value: int | float, what: str) -> str:
    """The one text of a number given where text is expected (a choice), the same in every reader.

    HF ``datasets`` loads a JSON list ``[0.5, 1, 2]`` as doubles (``1`` arrives as ``1.0``) while
    ``json.loads`` keeps ``1``; so a whole-number float is shown as the integer (``1.0`` and ``1``
    both read ``"1"``) and any other float by ``repr`` (``0.5``). A number that a double cannot hold
    exactly (beyond 2**53, or nan/inf) would be shown differently by different readers: an error.
    """
    if isinstance(value, float) and value.is_integer() and abs(value) < _EXACT_INT:
        return str(int(value))
    if isinstance(value, int) and abs(value) < _EXACT_INT:
        return str(value)
    if isinstance(value, float) and math.isfinite(value) and not value.is_integer():
        return repr(value)
    raise CalibDataError(
        f"{what} is a number that a data loader cannot keep exactly ({value!r} here; a double holds whole numbers "
        "only up to 2**53 and no nan/inf), so training and evaluation would show it differently; write the option "
        "as a string"
    )


def _option(i: int, letters: Sequence[str], choices: Sequence[str]) -> str:
    return f"option {letters[i]} ({_quote(choices[i].strip())})"


def _options(idx: Sequence[int], letters: Sequence[str], choices: Sequence[str]) -> str:
    if len(idx) == 1:
        return _option(idx[0], letters, choices)
    return "options " + " and ".join(f"{letters[i]} ({_quote(choices[i].strip())})" for i in idx)


def read_answer(answer: Any, choices: Sequence[str], letters: Sequence[str] = DEFAULT_LETTERS,
                answer_format: str = "auto", field: str = "answer", answer_from_json_column: bool = False,
                answer_from_csv: bool = False) -> int:
    """0-based gold index of ``answer`` for ``choices`` under ``answer_format`` (module docstring rules).

    ``answer_from_json_column``: the value comes from an HF ``datasets`` JSON column (a file whose
    answers mix numbers and strings), where an int may have been a numeric string: it is then read
    by the string rules; likewise ``answer_from_csv`` (a CSV cell has no type). Raises
    :class:`CalibDataError` (message starts with ``field '<field>'``).
    """
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, got {answer_format!r}")
    k = len(choices)
    if not 2 <= k <= len(letters):
        raise CalibDataError(f"{k} choices: an MCQ here has 2 to {len(letters)} options (one per option letter)")
    labs = list(letters[:k])
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        raise CalibDataError(f"field {field!r} is empty; give the gold option (index, letter or choice text)")
    if isinstance(answer, bool):
        raise CalibDataError(f"field {field!r} is the boolean {answer}, not an option; write an index, a letter "
                             "or a choice's text")
    if not isinstance(answer, (str, int, float)):
        if hasattr(answer, "__index__"):  # numpy integers
            answer = int(answer)
        else:
            raise CalibDataError(f"field {field!r} must be an index, a letter or a choice's text, "
                                 f"got {describe_value(answer)}")
    if isinstance(answer, float):
        if not answer.is_integer():
            raise CalibDataError(f"field {field!r} is {answer!r}, not a whole-number option index")
        answer = int(answer)
    note = ""
    untyped = answer_from_json_column or answer_from_csv
    if isinstance(answer, int) and (answer_format == "text" or (answer_format == "auto" and untyped)):
        if answer_format == "auto" and answer_from_csv:
            note = (f" (a CSV cell has no type, so the answer {answer} is the text \"{answer}\" as in a JSONL file; "
                    "set calib_answer_format: index if every answer is an index)")
        elif answer_format == "auto":
            note = (f" (the {field!r} column mixes numbers and strings, so the datasets JSON loader stored it as "
                    f"JSON and the number {answer} may have been the text \"{answer}\": write every answer the "
                    "same way, all numbers or all strings)")
        answer = str(answer)

    if isinstance(answer, int):  # auto or index: a real int is an index
        if answer_format == "letter":
            raise CalibDataError(f"field {field!r} is the number {answer}, but answer_format is letter: expected "
                                 f"one of {labs}")
        if 0 <= answer < k:
            return answer
        raise CalibDataError(
            f"field {field!r}: index {answer} is out of range for {k} choices (valid 0..{k - 1}); fix the row "
            "(an index is never wrapped around)"
        )

    a = answer.strip()
    as_index = int(a) if a.isascii() and a.isdigit() and len(a) <= 4000 else None  # int() refuses longer
    if answer_format == "index":
        if as_index is None:
            raise CalibDataError(f"field {field!r} is {_quote(answer)}, not an index (answer_format: index expects "
                                 f"0..{k - 1})")
        if as_index >= k:
            raise CalibDataError(f"field {field!r}: index {as_index} is out of range for {k} choices "
                                 f"(valid 0..{k - 1}); fix the row (an index is never wrapped around)")
        return as_index
    if answer_format == "letter":
        if a not in labs:
            raise CalibDataError(f"field {field!r} is {_quote(answer)}, not one of the letters {labs} of these "
                                 f"{k} choices (answer_format: letter)")
        return labs.index(a)
    texts = [i for i, c in enumerate(choices) if c.strip() == a]
    if answer_format == "text":
        if len(texts) == 1:
            return texts[0]
        if texts:
            raise CalibDataError(f"field {field!r}: the text {_quote(a)} is {_options(texts, labs, choices)}; make "
                                 "the choices distinct")
        raise CalibDataError(f"field {field!r}: {_quote(a)} is not the text of any of the {k} choices "
                             f"(answer_format: text){note}")

    readings = []  # auto: every way the string names an option
    if as_index is not None and as_index < k:
        readings.append((f"as an index it is {_option(as_index, labs, choices)}", {as_index}))
    if a in labs:
        readings.append((f"as a letter it is {_option(labs.index(a), labs, choices)}", {labs.index(a)}))
    if texts:
        readings.append((f"as a choice text it is {_options(texts, labs, choices)}", set(texts)))
    named = set().union(*(r[1] for r in readings)) if readings else set()
    if len(named) == 1:
        return named.pop()
    if len(readings) == 1 and len(texts) > 1:
        raise CalibDataError(f"field {field!r}: the text {_quote(a)} is {_options(texts, labs, choices)}; make the "
                             "choices distinct or give the answer as an index or a letter")
    if named:
        raise CalibDataError(f"field {field!r}: {_quote(a)} is ambiguous: " + ", ".join(r[0] for r in readings)
                             + f"; {_FORMAT_HINT}{note}")
    if as_index is not None:
        raise CalibDataError(
            f"field {field!r}: index {as_index} is out of range for {k} choices (valid 0..{k - 1}) and no choice "
            f"has the text {_quote(a)}; fix the row (an index is never wrapped around){note}"
        )
    raise CalibDataError(
        f"field {field!r}: {_quote(a)} is not an option of these {k} choices: expected an index 0..{k - 1}, a letter "
        f"{_letters_span(labs)} or the text of one choice{note}"
    )


def answer_to_index(answer: Any, choices: Sequence[str], letters: Sequence[str] = DEFAULT_LETTERS) -> int:
    """0-based index of ``answer`` (int index, digit string, letter or choice text; ``answer_format: auto``).

    :func:`read_answer` with its defaults, for callers holding plain choices; raises ``CalibDataError`` (a
    ``ValueError``) on a bad answer.
    """
    return read_answer(answer, [str(c) for c in choices], letters)


def require_field(row: Mapping[str, Any], field: str) -> Any:
    """``row[field]``; :class:`CalibDataError` if it is absent or null (one message for both: an Arrow
    column gives ``None`` for a key a JSONL line lacks)."""
    if row.get(field) is None:
        present = ", ".join(repr(k) for k in sorted(str(k) for k, v in row.items() if v is not None)) or "nothing"
        raise CalibDataError(f"missing field {field!r} (absent or null; the row has {present})")
    return row[field]


def require_text(row: Mapping[str, Any], field: str) -> str:
    """``row[field]`` as a non-blank string, else :class:`CalibDataError` naming the field."""
    value = require_field(row, field)
    if not isinstance(value, str):
        raise CalibDataError(f"field {field!r} must be a string, got {describe_value(value)}")
    if not value.strip():
        raise CalibDataError(f"field {field!r} is empty")
    return value


def normalize_mcq_row(row: Mapping[str, Any], *, question_field: str = "question", choices_field: str = "choices",
                      answer_field: str = "answer", letters: Sequence[str] = DEFAULT_LETTERS,
                      answer_format: str = "auto", answer_from_json_column: bool = False,
                      answer_from_csv: bool = False) -> MCQRow:
    """Check one raw row and return its :class:`MCQRow`; :class:`CalibDataError` names the field at fault.

    An absent field and a ``null`` field are the same error (an Arrow column gives ``None`` for a key a
    JSONL line lacks), so training and evaluation report the same message.
    """
    if not isinstance(row, Mapping):
        raise CalibDataError(f"expected a JSON object with {question_field!r}, {choices_field!r} and "
                             f"{answer_field!r}, got {type(row).__name__}")
    for name in (question_field, choices_field, answer_field):
        require_field(row, name)
    question = require_text(row, question_field)
    choices = parse_choices(row[choices_field], letters, choices_field)
    gold = read_answer(row[answer_field], choices, letters, answer_format, answer_field, answer_from_json_column,
                       answer_from_csv)
    return MCQRow(question, choices, gold)


def normalize_records(records: Iterable[tuple[str, Any]], source: str, **kwargs) -> list[tuple[str, MCQRow]]:
    """:func:`normalize_mcq_row` over ``(where, row)`` records; ALL bad rows are reported in one error."""
    good, errors = [], []
    for where, row in records:
        try:
            good.append((where, normalize_mcq_row(row, **kwargs)))
        except CalibDataError as exc:
            errors.append((where, str(exc)))
    raise_row_errors(errors, source)
    return good
