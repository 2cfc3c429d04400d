"""Thin adapter between lm-eval 0.4.11+ and axolotl_calib_plugin for the ``calib_*`` tasks.

* Prompt: ``axolotl_calib_plugin.prompts.format_mcq_prompt`` (the prompt the plugin trains with),
  choices are the option letters, continuation ``" A"``: one loglikelihood request per letter,
  which HFLM answers with ONE forward pass per question (single-token continuations share a context).
* Option probability = softmax over the K option-letter log-likelihoods (= softmax over the K
  letter logits at the answer position: the log-softmax normaliser cancels).
* Metrics: ``axolotl_calib_plugin.metrics`` (conf_ece, cw_ece; 10 bins) over the items stacked by
  ``axolotl_calib_plugin.eval.samples.stack_items`` (the reports' stacker). Nothing is re-implemented here.
* Data: every task loads through :func:`load_suite` (``custom_dataset``), which reads the hub dataset
  by default, or local JSONL files in the hub schema when ``CALIB_LM_EVAL_DATA_DIR`` (or metadata
  ``calib_data_dir``) is set, and normalises every row to ``{id, question, choices, gold, subject, source}``.
  Rows in the project schema (``calib_jsonl``, MMLU) go through
  :func:`axolotl_calib_plugin.rows.normalize_mcq_row`, the normalizer of the training strategy (same answer
  rules, same messages); ``answer_format`` (metadata, else ``$CALIB_ANSWER_FORMAT``; default ``auto``) says
  how the calib_jsonl answers are written. Malformed rows raise :class:`CalibDataError` naming the file (or
  hub split), the row and the field; all bad rows of a file are listed in one error.

lm-eval 0.4.11 re-executes this file for every ``!function`` tag: keep it import-light and stateless
(no registries, no decorators).
"""

from __future__ import annotations

import hashlib
import os
import random
import warnings
from typing import Any, Callable, NamedTuple

import numpy as np
from scipy.special import softmax

from axolotl_calib_plugin import metrics as _metrics
from axolotl_calib_plugin.eval.samples import stack_items
from axolotl_calib_plugin.prompts import DEFAULT_LETTERS, check_option_letters, format_mcq_prompt, option_letters
from axolotl_calib_plugin.rows import (
    ANSWER_FORMATS,
    CalibDataError,
    normalize_mcq_row,
    parse_choices,
    raise_row_errors,
    read_answer,
    read_records,
    require_field,
    require_text,
)

N_BINS = _metrics.DEFAULT_N_BINS
DATA_DIR_ENV = "CALIB_LM_EVAL_DATA_DIR"
#: how the calib_jsonl answers are written: metadata key, then environment variable (rows.ANSWER_FORMATS).
ANSWER_FORMAT_KEY, ANSWER_FORMAT_ENV = "answer_format", "CALIB_ANSWER_FORMAT"
#: the option letters the model was trained with (``calib_option_letters``): metadata key, then environment variable.
LETTERS_KEY, LETTERS_ENV = "option_letters", "CALIB_OPTION_LETTERS"
#: the calib_jsonl column names (``calib_field_*`` of training): metadata keys, defaults.
FIELD_KEYS = {"question_field": "question", "choices_field": "choices", "answer_field": "answer"}


# --------------------------------------------------------------------------------------------
# prompt / choices / scoring (used by the YAML)
# --------------------------------------------------------------------------------------------


def _doc_letters(doc: dict) -> list[str]:
    return list(doc.get("letters") or DEFAULT_LETTERS)


def doc_to_text(doc: dict) -> str:
    """``question\\nA. c0\\n...\\nAnswer:`` -- exactly the plugin's training prompt, with its letters."""
    return format_mcq_prompt(doc["question"], doc["choices"], _doc_letters(doc))


def doc_to_choice(doc: dict) -> list[str]:
    """The first K option letters (K varies per row: ARC has 3-5 options) of the letters trained with."""
    return option_letters(len(doc["choices"]), _doc_letters(doc))


def option_probs(logliks) -> list[float]:
    """Softmax (float64) over the K option log-likelihoods, as plain Python floats."""
    return softmax(np.asarray(logliks, dtype=np.float64)).tolist()


def process_results(doc: dict, results: list) -> dict:
    """``results`` = [(loglik, is_greedy), ...] in ``doc_to_choice`` order.

    Returns the per-question ``acc`` (0/1, argmax with ties to the lowest index, as
    ``metrics.accuracy``) and the item ``{"probs": [...K floats], "gold": int, "logliks": [...K floats]}``
    under both ECE keys (one item list per aggregation); ``--log_samples`` therefore records each
    question's option probabilities as plain JSON.
    """
    k = len(doc["choices"])
    if len(results) != k:  # pragma: no cover - the harness always sends one result per choice
        raise RuntimeError(f"expected {k} option log-likelihoods for doc {doc.get('id')!r}, got {len(results)}")
    logliks = [float(r[0]) for r in results]
    probs = option_probs(logliks)
    gold = int(doc["gold"])
    # logliks = the letter logits minus one shared constant (the log-softmax normaliser), so temperature
    # scaling can use them directly: softmax(logliks / T) == softmax(letter_logits / T).
    item = {"probs": probs, "gold": gold, "logliks": logliks}
    return {"acc": float(int(np.argmax(probs)) == gold), "conf_ece": item, "cw_ece": item}


def conf_ece(items: list) -> float:
    """Corpus-level conf-ECE (10 bins) of all evaluated questions, by the shared metrics core."""
    probs, labels, num_options = stack_items(items)
    return _metrics.conf_ece(probs, labels, n_bins=N_BINS, num_options=num_options)


def cw_ece(items: list) -> float:
    """Corpus-level class-wise ECE (10 bins; with mixed K each class over the questions that have it,
    weighted by their number: ``metrics`` module docstring), by the shared metrics core."""
    probs, labels, num_options = stack_items(items)
    return _metrics.cw_ece(probs, labels, n_bins=N_BINS, num_options=num_options)


# --------------------------------------------------------------------------------------------
# row normalisers: hub schema -> {question, choices, gold, id, subject}
# --------------------------------------------------------------------------------------------


def _req(row: dict, key: str, kind: type | tuple = str) -> Any:
    """A required field: non-blank text (``kind=str``) or a value of ``kind``; the rows module's messages."""
    if kind is str:
        return require_text(row, key)
    val = require_field(row, key)
    if not isinstance(val, kind):
        raise CalibDataError(
            f"field {key!r} must be {getattr(kind, '__name__', kind)}, got {type(val).__name__} {val!r}"
        )
    return val


def _option(row: dict, key: str) -> str:
    """An option given as its own field (MedMCQA opa..opd, SciQ distractors): present, a string, may be empty."""
    val = require_field(row, key)
    if not isinstance(val, (str, int, float)) or isinstance(val, bool):
        raise CalibDataError(f"field {key!r} must be a string, got {type(val).__name__} {val!r}")
    return str(val)


def _check_choices(choices: Any, key: str = "choices") -> list[str]:
    """Option texts, by the rules of the training strategy (empty texts allowed: they occur in hub data)."""
    return parse_choices(choices, field=key)


def _labelled(row: dict, question_key: str) -> dict:
    """ARC / OpenBookQA / CommonsenseQA: ``choices = {text: [...], label: [...]}``, ``answerKey``."""
    q = _req(row, question_key)
    ch = _req(row, "choices", dict)
    texts = _check_choices(ch.get("text"), "choices.text")
    labels = ch.get("label")
    if not isinstance(labels, (list, tuple)) or len(labels) != len(texts):
        raise CalibDataError(f"'choices.label' must be a list as long as 'choices.text' ({len(texts)}), got {labels!r}")
    key = _req(row, "answerKey")
    labels = [str(x).strip() for x in labels]
    if key.strip() not in labels:
        raise CalibDataError(f"answerKey {key!r} is not one of the labels {labels}")
    return {"question": q, "choices": texts, "gold": labels.index(key.strip())}


def _norm_medmcqa(row: dict) -> dict:
    choices = _check_choices([_option(row, k) for k in ("opa", "opb", "opc", "opd")])
    gold = read_answer(require_field(row, "cop"), choices, answer_format="index", field="cop")
    return {"question": _req(row, "question"), "choices": choices, "gold": gold,
            "subject": str(row.get("subject_name") or "")}


def _norm_openbookqa(row: dict) -> dict:
    return _labelled(row, "question_stem")


def _norm_arc(row: dict) -> dict:
    return _labelled(row, "question")


def _norm_commonsense_qa(row: dict) -> dict:
    return _labelled(row, "question") | {"subject": str(row.get("question_concept") or "")}


def sciq_order(question: str, n: int = 4) -> list[int]:
    """Deterministic permutation of SciQ's options, seeded by a hash of the question (stable across
    processes and Python versions, unlike ``hash()``)."""
    seed = int.from_bytes(hashlib.blake2b(question.encode("utf-8"), digest_size=8).digest(), "little")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def _norm_sciq(row: dict) -> dict:
    q = _req(row, "question")
    raw = [_option(row, k) for k in ("distractor1", "distractor2", "distractor3", "correct_answer")]
    order = sciq_order(q, len(raw))
    return {"question": q, "choices": _check_choices([raw[i] for i in order]), "gold": order.index(3)}


def _norm_mcq(row: dict, answer_format: str = "auto", letters=DEFAULT_LETTERS, fields: dict | None = None,
             answer_from_csv: bool = False) -> dict:
    """The project's MCQ schema ``{question, choices, answer}``: exactly the training strategy's rules."""
    q, choices, gold = normalize_mcq_row(row, answer_format=answer_format, letters=letters,
                                         answer_from_csv=answer_from_csv, **(fields or {}))
    return {"question": q, "choices": choices, "gold": gold, "subject": str(row.get("subject") or "")}


def _norm_mmlu(row: dict) -> dict:
    """cais/mmlu rows (question, subject, choices, answer) are the project schema; the answer is an index."""
    return _norm_mcq(row, answer_format="index")

# --------------------------------------------------------------------------------------------
# suites: hub coordinates + normaliser (the one definition; README.md documents the same table)
# --------------------------------------------------------------------------------------------


class Suite(NamedTuple):
    name: str
    hub_path: str
    hub_name: str | None
    split: str
    normalize: Callable[[dict], dict]
    #: optional ``data_files`` restricting what is downloaded (MMLU: skip the 51 MB auxiliary_train)
    data_files: dict | None = None
    schema: str = ""


SUITES: dict[str, Suite] = {
    s.name: s
    for s in [
        Suite("calib_mmlu", "cais/mmlu", None, "test", _norm_mmlu, {"test": "all/test-*.parquet"},
              "question, subject, choices (4 str), answer (0-3)"),
        Suite("calib_medmcqa", "openlifescienceai/medmcqa", None, "validation", _norm_medmcqa, None,
              "id, question, opa, opb, opc, opd, cop (0-3), subject_name"),
        Suite("calib_openbookqa", "allenai/openbookqa", "main", "test", _norm_openbookqa, None,
              "id, question_stem, choices {text, label}, answerKey"),
        Suite("calib_arc_challenge", "allenai/ai2_arc", "ARC-Challenge", "test", _norm_arc, None,
              "id, question, choices {text, label} (3-5), answerKey"),
        Suite("calib_commonsense_qa", "tau/commonsense_qa", None, "validation", _norm_commonsense_qa, None,
              "id, question, question_concept, choices {label, text} (5), answerKey"),
        Suite("calib_sciq", "allenai/sciq", None, "test", _norm_sciq, None,
              "question, distractor1, distractor2, distractor3, correct_answer, support"),
    ]
}

IN_DOMAIN = ("calib_mmlu", "calib_medmcqa", "calib_openbookqa")
OUT_DOMAIN = ("calib_arc_challenge", "calib_commonsense_qa", "calib_sciq")
POOLS = {"calib_in_domain_pooled": IN_DOMAIN, "calib_out_domain_pooled": OUT_DOMAIN}

#: calib_jsonl tasks: metadata key, then environment variable, holding the JSONL path(s).
JSONL_SOURCES = {"calib_jsonl": ("data_files", "CALIB_JSONL"), "calib_jsonl_ood": ("ood_data_files", "CALIB_JSONL_OOD")}


def _normalize_rows(rows, normalize, source: str, letters=DEFAULT_LETTERS) -> list[dict]:
    """Docs of ``(where, row)`` records; every bad row is collected and reported in one error."""
    docs, errors = [], []
    for i, (where, row) in enumerate(rows):
        if not isinstance(row, dict):
            errors.append((where, f"expected a JSON object, got {type(row).__name__}"))
            continue
        try:
            d = normalize(row)
            parse_choices(d["choices"], letters)  # K within the letters trained with
        except CalibDataError as e:
            errors.append((where, str(e)))
            continue
        d.setdefault("subject", "")
        d["letters"] = list(letters)
        d["id"] = str(row.get("id", i))
        d["source"] = source
        d["where"] = where  # for messages only (to_dataset_dict keeps the doc fields)
        docs.append(d)
    raise_row_errors(errors, source)
    return docs


def answer_format_of(kwargs: dict) -> str:
    """The calib_jsonl ``answer_format``: metadata key, else ``$CALIB_ANSWER_FORMAT``, else ``auto``."""
    value = kwargs.get(ANSWER_FORMAT_KEY) or os.environ.get(ANSWER_FORMAT_ENV) or "auto"
    if value not in ANSWER_FORMATS:
        raise CalibDataError(
            f"answer_format (--metadata '{{\"{ANSWER_FORMAT_KEY}\": ...}}' or ${ANSWER_FORMAT_ENV}) must be one of "
            f"{list(ANSWER_FORMATS)}, got {value!r}"
        )
    return value


def letters_of(kwargs: dict) -> list[str]:
    """The option letters: metadata ``option_letters``, else ``$CALIB_OPTION_LETTERS``, else A..J."""
    value = kwargs.get(LETTERS_KEY) or os.environ.get(LETTERS_ENV) or list(DEFAULT_LETTERS)
    try:
        return check_option_letters(value, f"option_letters (--metadata or ${LETTERS_ENV})")
    except ValueError as e:
        raise CalibDataError(str(e)) from None


def fields_of(kwargs: dict) -> dict:
    """calib_jsonl column names: metadata ``question_field`` / ``choices_field`` / ``answer_field``."""
    return {k: str(kwargs.get(k) or default) for k, default in FIELD_KEYS.items()}


def _hub_rows(suite: Suite):
    import datasets

    kw = {"data_files": suite.data_files} if suite.data_files else {}
    label = f"hub {suite.hub_path}" + (f" ({suite.hub_name})" if suite.hub_name else "") + f" split {suite.split}"
    try:
        ds = datasets.load_dataset(suite.hub_path, suite.hub_name, split=suite.split, **kw)
    except Exception as e:  # offline, gated, renamed...: say how to use local data instead
        raise CalibDataError(
            f"{suite.name}: could not load {label} ({type(e).__name__}: {e}). Without hub access, set "
            f"{DATA_DIR_ENV}=<dir> with {suite.name}.jsonl in the same schema ({suite.schema})"
        ) from e
    return ((f"{label} row {i}", row) for i, row in enumerate(ds))


def load_suite_docs(name: str, data_dir: str | None = None, letters=DEFAULT_LETTERS) -> list[dict]:
    """Normalised docs of one suite: local ``<data_dir>/<name>.jsonl`` if a data dir is given, else the hub."""
    suite = SUITES[name]
    if data_dir:
        path = os.path.join(data_dir, f"{name}.jsonl")
        if not os.path.isfile(path):
            raise CalibDataError(
                f"{name}: local data dir {data_dir!r} (from ${DATA_DIR_ENV} or metadata calib_data_dir) has no "
                f"{name}.jsonl; expected JSONL rows in the {suite.hub_path} schema: {suite.schema}"
            )
        rows, _ = read_records(path)
    else:
        rows = _hub_rows(suite)
    return _normalize_rows(rows, suite.normalize, name, letters)


def _features():
    import datasets

    return datasets.Features({
        "id": datasets.Value("string"),
        "question": datasets.Value("string"),
        "choices": datasets.Sequence(datasets.Value("string")),
        "gold": datasets.Value("int64"),
        "subject": datasets.Value("string"),
        "source": datasets.Value("string"),
        "letters": datasets.Sequence(datasets.Value("string")),
    })


def to_dataset_dict(docs: list[dict], split: str):
    import datasets

    keys = ("id", "question", "choices", "gold", "subject", "source", "letters")
    cols = {k: [d[k] for d in docs] for k in keys}
    return datasets.DatasetDict({split: datasets.Dataset.from_dict(cols, features=_features())})


def _jsonl_paths(task: str, kwargs: dict) -> list[str]:
    meta_key, env_key = JSONL_SOURCES[task]
    spec = kwargs.get(meta_key) or os.environ.get(env_key)
    if not spec:
        raise CalibDataError(
            f"{task} needs an MCQ JSONL file ({{question, choices, answer}} per line): set {env_key}=/path/file.jsonl "
            f"or pass --metadata '{{\"{meta_key}\": \"/path/file.jsonl\"}}'"
        )
    paths = spec if isinstance(spec, (list, tuple)) else [p for p in str(spec).split(",") if p.strip()]
    paths = [os.path.abspath(os.path.expanduser(str(p).strip())) for p in paths]
    seen: dict[str, str] = {}
    for p in paths:
        same = seen.setdefault(os.path.realpath(p), p)
        if same is not p:
            raise CalibDataError(
                f"{task}: {p} is listed twice in {meta_key} / ${env_key}" + (f" (as {same})" if same != p else "")
                + ": each of its questions would be scored and counted twice; list each file once"
            )
    return paths


def repeated_questions_warning(docs: list[dict]) -> str | None:
    """A note when some docs ask a question an earlier doc already asked (same question text and choices):
    each copy is scored and counted, so n and the width of every interval count that question more than once."""
    first: dict[tuple, dict] = {}
    repeats = []
    for d in docs:
        key = (d["question"].strip(), tuple(c.strip() for c in d["choices"]))
        if key in first:
            repeats.append((d, first[key]))
        else:
            first[key] = d
    if not repeats:
        return None
    shown = "; ".join(f"{d.get('where', d['id'])} repeats {e.get('where', e['id'])}"
                      + (" with another gold answer" if d["gold"] != e["gold"] else "") for d, e in repeats[:3])
    return (f"{len(repeats)} of {len(docs)} questions repeat an earlier question and its choices ({shown}"
            f"{'; ...' if len(repeats) > 3 else ''}): each copy is scored and counted, so n counts "
            f"{len(docs)} for {len(docs) - len(repeats)} distinct questions. Unless the repeats are meant (answers "
            "drawn afresh per row), remove them")


def load_suite(suite: str | list | None = None, split: str = "test", **kwargs):
    """``custom_dataset`` of every calib task (``dataset_kwargs: {suite: ...}`` in the YAML).

    Returns a ``DatasetDict`` with the one split ``split`` (the template's ``test_split``); which hub
    split is read is the suite's own (:data:`SUITES`).
    ``answer_format`` (metadata, else ``$CALIB_ANSWER_FORMAT``) applies to calib_jsonl / calib_jsonl_ood; the hub
    suites' answers are read by their own schema (MMLU and MedMCQA: an index).

    ``suite`` is a suite name (``calib_mmlu``...), a list of suite names (pooled tasks: one docs list),
    or ``calib_jsonl`` / ``calib_jsonl_ood``. ``kwargs`` are lm-eval's metadata (``version``, CLI
    ``--metadata`` keys, model_args): ``calib_data_dir`` (else ``$CALIB_LM_EVAL_DATA_DIR``) switches the
    hub suites to local JSONL; ``data_files`` / ``ood_data_files`` feed calib_jsonl / calib_jsonl_ood.
    """
    letters = letters_of(kwargs)
    if isinstance(suite, str) and suite in JSONL_SOURCES:
        answer_format, fields = answer_format_of(kwargs), fields_of(kwargs)
        docs = []
        for path in _jsonl_paths(suite, kwargs):
            rows, is_csv = read_records(path)
            normalize = lambda row: _norm_mcq(row, answer_format, letters, fields, is_csv)  # noqa: E731
            docs += [dict(d, source=os.path.basename(path)) for d in _normalize_rows(rows, normalize, path, letters)]
        note = repeated_questions_warning(docs)
        if note:
            warnings.warn(f"{suite}: {note}", stacklevel=2)
        return to_dataset_dict(docs, split)
    names = [suite] if isinstance(suite, str) else list(suite or [])
    unknown = [n for n in names if n not in SUITES]
    if not names or unknown:
        raise CalibDataError(f"unknown suite(s) {unknown or names!r}; known: {sorted(SUITES)} + {sorted(JSONL_SOURCES)}")
    data_dir = kwargs.get("calib_data_dir") or os.environ.get(DATA_DIR_ENV) or None
    docs = []
    for n in names:
        docs += load_suite_docs(n, data_dir, letters)
    return to_dataset_dict(docs, split)
