"""Shape suites: the benchmark lists shipped in mategemm/shapes/shapes.json, or a file of one's own,
read and checked row by row (what `mategemm prewarm --shapes` and tools/bench.py run).

A shapes file is a JSON object of suite name -> list of rows (keys starting with '_' are
comments), or a plain JSON list of rows: one suite named after the file. A suite's kind follows
from its rows' fields; every row of a suite has the same fields:

    dense       {m, n, k}                                     gemm_fp8_nt_groupwise
    bmm         {batch, m, n, k}                              bmm_fp8 (four recipes), bmm_fp16
    contiguous  {groups, m_per_group, n, k}                   ragged_m_moe_gemm_8bit, per_token ids
    masked      {groups, m_per_group, n, k}, suite name       masked_moe_gemm_8bit
                containing "masked"
    k_grouped   {groups, k_per_group, m, n}                   ragged_k_moe_gemm_8bit
    indexer     {batch, next_n, heads, index_dim, block_kv,   fp8_paged_mqa_logits
                 avg_context}
    nvfp4       {active_experts, tokens_per_expert, n, k}     grouped_matmul_dynamic_scaled_nvfp4 (token-packed
                                                              groups), and ragged_m_moe_gemm_8bit per_expert
    moe_layers  an object (not a list) of model name ->       ragged_m_moe_gemm_8bit, per_expert
                {hidden, intermediate, experts, topk, tokens}  and per_token

Rules: m, batch, m_per_group, k_per_group, avg_context, tokens_per_expert positive integers; n a
positive multiple of 8; k, hidden and intermediate positive multiples of 128 (k of dense and bmm
rows: of 16; of nvfp4 rows: of 32); groups, experts and active_experts in [1, 1024];
topk in [1, experts]; next_n in [1, 4]; heads a multiple of 8 with next_n x heads <= 256;
index_dim 128; block_kv 64; tokens a non-empty list of positive integers. Contiguous and k_grouped
rows are DeepGEMM's test shapes: each group's size is drawn in [0.7, 1.3) x the nominal one.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mategemm.kernels import sm90_fp8_mqa_logits as kernel_mqa
from mategemm.validate import FP8_K_MULTIPLE, MAX_GROUPS

SHAPES_FILE = Path(__file__).resolve().parent / "shapes" / "shapes.json"
# DeepGEMM's grouped test shapes: each group int(nominal x (0.7 + 0.6 x U[0, 1))) rows (or K).
GROUP_SIZE_LOW, GROUP_SIZE_SPREAD = 0.7, 0.6

ROW_FIELDS = {
    "dense": ("m", "n", "k"),
    "bmm": ("batch", "m", "n", "k"),
    "contiguous": ("groups", "m_per_group", "n", "k"),
    "k_grouped": ("groups", "k_per_group", "m", "n"),
    "indexer": ("batch", "next_n", "heads", "index_dim", "block_kv", "avg_context"),
    "nvfp4": ("active_experts", "tokens_per_expert", "n", "k"),
}
NVFP4_K_MULTIPLE = 32
MODEL_FIELDS = ("hidden", "intermediate", "experts", "topk", "tokens")
KINDS = (*ROW_FIELDS, "masked", "moe_layers")


@dataclass(frozen=True)
class Suite:
    name: str
    kind: str          # one of KINDS
    rows: tuple        # dicts of the kind's fields (moe_layers: the model rows, each with "model")


class ShapesError(ValueError):
    """A shapes file or suite that cannot be used; the message names every bad row and why."""


def group_size_range(nominal: int) -> tuple[int, int]:
    """Bounds of the group sizes DeepGEMM's generator draws for `nominal` (both included)."""
    return int(nominal * GROUP_SIZE_LOW), int(nominal * (GROUP_SIZE_LOW + GROUP_SIZE_SPREAD))


def read(path: Path | str) -> dict[str, Suite]:
    """Every suite of a shapes file. Raises ShapesError naming the file, each bad suite or row and
    the rule it breaks."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ShapesError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise ShapesError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(data, list):
        data = {path.stem: data}
    if not isinstance(data, dict):
        raise ShapesError(f"{path}: must be a JSON object of suite name -> list of rows, or a list of rows")
    suites, errors = {}, []
    for name, value in data.items():
        if name.startswith("_"):
            continue
        suite = _suite(name, value, errors, f"{path}: suite {name!r}")
        if suite is not None:
            suites[name] = suite
    if errors:
        raise ShapesError("\n".join(errors))
    if not suites:
        raise ShapesError(f"{path}: holds no suite")
    return suites


def resolve(shapes: str) -> list[Suite]:
    """`shapes`: a shapes file (all its suites), or suite names of the shipped file, comma-separated."""
    path = Path(shapes)
    if path.is_file():
        return list(read(path).values())
    if path.suffix == ".json" or "/" in shapes or path.exists():
        raise ShapesError(f"--shapes {shapes!r}: no such file")
    shipped = read(SHAPES_FILE)
    names = [name.strip() for name in shapes.split(",") if name.strip()]
    unknown = [name for name in names if name not in shipped]
    if unknown or not names:
        raise ShapesError(f"--shapes {shapes!r} is neither a file nor a suite of {SHAPES_FILE.name}; suites: "
                          f"{', '.join(shipped)}")
    return [shipped[name] for name in dict.fromkeys(names)]


def _suite(name: str, value, errors: list, where: str) -> Suite | None:
    if isinstance(value, dict):
        return _models(name, value, errors, where)
    if not isinstance(value, list) or not value:
        errors.append(f"{where}: must be a non-empty list of rows (or an object of MoE models)")
        return None
    kind = _kind_of(name, value)
    if kind is None:
        expected = "; ".join(f"{{{', '.join(f)}}} ({k})" for k, f in ROW_FIELDS.items())
        errors.append(f"{where}: no row has the fields of a suite kind; expected one of {expected}")
        return None
    fields = ROW_FIELDS["contiguous" if kind == "masked" else kind]
    rows = []
    for i, row in enumerate(value):
        problem = _row_problem(row, fields, lambda r: _check_row(r, kind))
        if problem:
            errors.append(f"{where}, row {i} {json.dumps(row)}: {problem}")
        else:
            rows.append({f: row[f] for f in fields})
    return Suite(name, kind, tuple(rows))


def _kind_of(name: str, rows: list) -> str | None:
    for row in rows:
        if isinstance(row, dict):
            keys = {key for key in row if not key.startswith("_")}
            for kind, fields in ROW_FIELDS.items():
                if keys == set(fields):
                    return "masked" if kind == "contiguous" and "masked" in name else kind
    return None


def _models(name: str, value: dict, errors: list, where: str) -> Suite | None:
    rows = []
    for model, row in value.items():
        if model.startswith("_"):
            continue
        problem = _row_problem(row, MODEL_FIELDS, _check_model)
        if problem:
            errors.append(f"{where}, model {model!r} {json.dumps(row)}: {problem}")
        else:
            rows.append({"model": model, **{f: row[f] for f in MODEL_FIELDS}})
    if not rows and not errors:
        errors.append(f"{where}: holds no model")
    return Suite(name, "moe_layers", tuple(rows))


def _row_problem(row, fields: tuple, check) -> str:
    if not isinstance(row, dict):
        return f"must be an object with fields {list(fields)}"
    keys = [key for key in row if not key.startswith("_")]
    missing = [f for f in fields if f not in row]
    unknown = [key for key in keys if key not in fields]
    if missing or unknown:
        return (f"missing field(s) {missing}" if missing else "") + ("; " if missing and unknown else "") + \
            (f"unknown field(s) {unknown}" if unknown else "") + f" (expected {list(fields)})"
    return check(row)


def _positive(value) -> bool:
    return type(value) is int and value > 0


def _field_problem(field: str, value) -> str:
    rules = {"n": (8, "a positive multiple of 8"), "k": (128, "a positive multiple of 128"),
             "hidden": (128, "a positive multiple of 128"), "intermediate": (128, "a positive multiple of 128")}
    multiple, rule = rules.get(field, (1, "a positive integer"))
    if field in ("groups", "experts", "active_experts"):
        if not _positive(value) or value > MAX_GROUPS:
            return f"{field} must be an integer in [1, {MAX_GROUPS}], got {value!r}"
        return ""
    if not _positive(value) or value % multiple:
        return f"{field} must be {rule}, got {value!r}"
    return ""


def _check_row(row: dict, kind: str) -> str:
    for field, value in row.items():
        if field.startswith("_") or field in ("next_n", "index_dim", "block_kv"):
            continue
        # NVFP4: 16-byte packed rows; dense and batched FP8 (K-major): 16-byte rows, a K tail allowed
        k_multiple = NVFP4_K_MULTIPLE if kind == "nvfp4" else FP8_K_MULTIPLE if kind in ("dense", "bmm") else 0
        if field == "k" and k_multiple:
            if not _positive(value) or value % k_multiple:
                return f"k must be a positive multiple of {k_multiple}, got {value!r}"
            continue
        problem = _field_problem(field, value)
        if problem:
            return problem
    if "next_n" in row:
        next_n, heads = row["next_n"], row["heads"]
        if not _positive(next_n) or next_n > kernel_mqa.MAX_NEXT_N:
            return f"next_n must be an integer in [1, {kernel_mqa.MAX_NEXT_N}], got {next_n!r}"
        if heads % kernel_mqa.HEADS_MULTIPLE or next_n * heads > kernel_mqa.MAX_TILE_HEADS:
            return (f"heads must be a multiple of {kernel_mqa.HEADS_MULTIPLE} with next_n x heads <= "
                    f"{kernel_mqa.MAX_TILE_HEADS}, got heads={heads}, next_n={next_n}")
        for field, only in (("index_dim", kernel_mqa.INDEX_DIM), ("block_kv", kernel_mqa.KV_BLOCK)):
            if type(row[field]) is not int or row[field] != only:
                return f"{field} must be {only}, got {row[field]!r}"
    return ""


def _check_model(row: dict) -> str:
    for field in ("hidden", "intermediate", "experts"):
        problem = _field_problem(field, row[field])
        if problem:
            return problem
    topk, tokens = row["topk"], row["tokens"]
    if not _positive(topk) or topk > row["experts"]:
        return f"topk must be an integer in [1, experts = {row['experts']}], got {topk!r}"
    if not isinstance(tokens, list) or not tokens or not all(_positive(t) for t in tokens):
        return f"tokens must be a non-empty list of positive integers, got {tokens!r}"
    return ""
