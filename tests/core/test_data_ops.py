"""Preparation operations: each does what it says, recorded with its full parameters."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from app.core.data import pii
from app.core.data.ops import count_pii, preview
from app.core.data.recipes import apply_op
from app.core.data.store import DatasetStore
from app.core.errors import ConfigError


def _dataset(ws: Any, rows: list[dict[str, Any]], name: str = "d") -> str:
    v = DatasetStore(ws).create_dataset(name, pa.Table.from_pylist(rows))
    return v.dataset_id


def _rows(ws: Any, ref: str) -> list[dict[str, Any]]:
    return DatasetStore(ws).read_table(ref).to_pylist()


def test_normalize_and_drop_empty(workspace: Any) -> None:
    ds = _dataset(
        workspace,
        [
            {"a": "  ﬁne\u00a0 text  ", "b": "x"},
            {"a": "", "b": "  "},
            {"a": None, "b": "kept"},
            {"a": "para one\n\n\n\npara two", "b": ""},
        ],
    )
    v = apply_op(workspace, ds, "normalize")
    assert v.operation == {
        "name": "normalize",
        "params": {"columns": None, "unicode": "NFKC", "collapse_whitespace": True, "strip": True},
    }
    assert [r["a"] for r in _rows(workspace, ds)] == ["fine text", "", None, "para one\n\npara two"]
    apply_op(workspace, ds, "drop_empty")
    assert [r["b"] for r in _rows(workspace, ds)] == ["x", "kept", ""]
    apply_op(workspace, ds, "drop_empty", {"how": "any"})
    assert [r["b"] for r in _rows(workspace, ds)] == ["x"]


def test_dedupe_keeps_the_first_of_exact_duplicates(workspace: Any) -> None:
    rows = [{"t": "a", "n": 1}, {"t": "b", "n": 1}, {"t": "a", "n": 1}, {"t": "a", "n": 2}]
    ds = _dataset(workspace, rows)
    apply_op(workspace, ds, "dedupe")
    assert _rows(workspace, ds) == [rows[0], rows[1], rows[3]]
    apply_op(workspace, ds, "dedupe", {"columns": ["t"]})
    assert _rows(workspace, ds) == [rows[0], rows[1]]


def test_near_dedupe_drops_near_identical_and_keeps_distinct(workspace: Any) -> None:
    base = (
        "Please remember that the quarterly expense reports for the northern region are due "
        "on the last Friday of the month, together with itemized receipts for every purchase "
        "above fifty euros and the signed approval form from your manager."
    )
    near = base.replace("fifty", "fifty-five").replace("Please", "please")
    other = (
        "The cafeteria on the second floor will be closed next week for renovation; a food "
        "truck will be parked outside the main entrance between noon and two in the afternoon."
    )
    other2 = other.replace("cafeteria", "library").replace("food truck", "reading tent")
    rows = [{"t": base}, {"t": other}, {"t": near}, {"t": "short"}, {"t": other2}]
    ds = _dataset(workspace, rows)
    v = apply_op(workspace, ds, "near_dedupe", {"column": "t", "threshold": 0.8})
    assert [r["t"] for r in _rows(workspace, ds)] == [base, other, "short", other2]
    assert v.operation["params"]["num_perm"] == 128


def test_minhash_estimates_jaccard() -> None:
    import numpy as np

    from app.core.data.minhash import shingle_hashes, signatures

    a = "the quick brown fox jumps over the lazy dog " * 3
    b = a.replace("lazy", "sleepy")
    sa, sb = set(shingle_hashes(a).tolist()), set(shingle_hashes(b).tolist())
    true_j = len(sa & sb) / len(sa | sb)
    sig = signatures([a, b], num_perm=256)
    est = float(np.mean(sig[0] == sig[1]))
    assert abs(est - true_j) < 0.12
    assert (signatures([a], seed=1) == signatures([a], seed=1)).all()


PII_TEXT = (
    "Mail jane.doe@example.com or call +44 20 7946 0958. Card 4111 1111 1111 1111, "
    "not 4111 1111 1111 1112. IBAN GB82 WEST 1234 5698 7654 32 but not GB82 WEST 1234 5698 7654 33. "
    "Server 192.168.1.20 and 2001:db8::8a2e:370:7334; version 1.2.3 and 999.1.1.1. Due 2024-05-14."
)


def test_redaction_of_each_type_with_checksums() -> None:
    out = pii.redact_text(PII_TEXT)
    assert "jane.doe" not in out and "[EMAIL]" in out
    assert "+44 20 7946 0958" not in out and "[PHONE]" in out
    assert "4111 1111 1111 1111" not in out and "[CARD]" in out
    assert "4111 1111 1111 1112" in out  # fails the Luhn check
    assert "GB82 WEST 1234 5698 7654 32" not in out and "[IBAN]" in out
    assert "GB82 WEST 1234 5698 7654 33" in out  # fails mod-97
    assert "192.168.1.20" not in out and "2001:db8::8a2e:370:7334" not in out
    assert out.count("[IP]") == 2
    assert "999.1.1.1" in out and "1.2.3" in out and "2024-05-14" in out
    assert pii.luhn_ok("79927398713") and not pii.luhn_ok("79927398710")
    assert pii.iban_ok("DE89 3704 0044 0532 0130 00")


def test_count_pii_previews_then_redact_applies(workspace: Any) -> None:
    ds = _dataset(workspace, [{"t": PII_TEXT, "n": 1}, {"t": "nothing here", "n": 2}])
    table = DatasetStore(workspace).read_table(ds)
    assert count_pii(table) == {
        "email": 1,
        "iban": 1,
        "credit_card": 1,
        "ipv6": 1,
        "ipv4": 1,
        "phone": 1,
    }
    assert count_pii(table, types=["email"]) == {"email": 1}
    v = apply_op(workspace, ds, "redact_pii", {"types": ["email", "credit_card"]})
    text = _rows(workspace, ds)[0]["t"]
    assert "[EMAIL]" in text and "[CARD]" in text and "192.168.1.20" in text
    assert v.operation["params"]["types"] == ["email", "credit_card"]
    with pytest.raises(ConfigError):
        apply_op(workspace, ds, "redact_pii", {"types": ["ssn"]})


def test_split_is_reproducible_and_stratified(workspace: Any) -> None:
    rows = [{"i": i, "label": "a" if i % 4 else "b"} for i in range(400)]  # 300 a, 100 b
    ds = _dataset(workspace, rows)
    params = {
        "ratios": {"train": 0.8, "validation": 0.1, "test": 0.1},
        "seed": 7,
        "stratify": "label",
    }
    v1 = apply_op(workspace, ds, "split", params)
    first = _rows(workspace, f"{ds}@{v1.hash}")
    store = DatasetStore(workspace)
    base = store.versions(ds)[0]
    v2 = apply_op(workspace, f"{ds}@{base.hash}", "split", params)
    assert v2.hash == v1.hash
    counts = Counter((r["label"], r["split"]) for r in first)
    assert counts == {
        ("a", "train"): 240,
        ("a", "validation"): 30,
        ("a", "test"): 30,
        ("b", "train"): 80,
        ("b", "validation"): 10,
        ("b", "test"): 10,
    }
    assert [r["i"] for r in first] == list(range(400))  # order kept, a column added
    v3 = apply_op(workspace, f"{ds}@{base.hash}", "split", {**params, "seed": 8})
    assert v3.hash != v1.hash
    plain = apply_op(workspace, f"{ds}@{base.hash}", "split", {"seed": 1})
    sizes = Counter(r["split"] for r in _rows(workspace, f"{ds}@{plain.hash}"))
    assert sizes == {"train": 320, "validation": 40, "test": 40}


def test_template_mapping_to_chat_and_prompt_completion(workspace: Any) -> None:
    rows = [
        {"instruction": "Summarize.", "input": "Long text.", "output": "Short."},
        {"instruction": "Say hi.", "input": "", "output": "Hi!"},
    ]
    ds = _dataset(workspace, rows)
    table = DatasetStore(workspace).read_table(ds)
    prev = preview(table, "map_template", {"system": "You are helpful."}, n=1)
    assert prev == [
        {
            "messages": [
                {"role": "system", "content": "You are helpful."},
                {"role": "user", "content": "Summarize.\n\nLong text."},
                {"role": "assistant", "content": "Short."},
            ]
        }
    ]
    base = DatasetStore(workspace).version(ds).hash
    apply_op(workspace, ds, "map_template")
    out = _rows(workspace, ds)
    assert out[1]["messages"] == [
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "Hi!"},
    ]
    apply_op(workspace, f"{ds}@{base}", "map_template", {"format": "prompt_completion"})
    assert _rows(workspace, ds) == [
        {"prompt": "Summarize.\n\nLong text.", "completion": "Short."},
        {"prompt": "Say hi.", "completion": "Hi!"},
    ]
    with pytest.raises(ConfigError, match="column"):
        apply_op(workspace, f"{ds}@{base}", "map_template", {"user_template": "{question}"})


def test_length_regex_sample_shuffle_concat(workspace: Any, tmp_path: Path) -> None:
    rows = [{"t": "a" * n, "id": n} for n in range(1, 11)]
    ds = _dataset(workspace, rows)
    base = DatasetStore(workspace).version(ds).hash
    apply_op(workspace, ds, "length_filter", {"column": "t", "min": 3, "max": 5})
    assert [r["id"] for r in _rows(workspace, ds)] == [3, 4, 5]
    apply_op(
        workspace,
        f"{ds}@{base}",
        "regex_filter",
        {"column": "t", "pattern": "^a{2}$", "keep": False},
    )
    assert len(_rows(workspace, ds)) == 9
    apply_op(workspace, ds, "regex_replace", {"pattern": "a(a)", "replacement": r"b\1"})
    assert _rows(workspace, ds)[1]["t"] == "baa"
    s1 = apply_op(workspace, f"{ds}@{base}", "sample", {"n": 4, "seed": 3})
    s2 = apply_op(workspace, f"{ds}@{base}", "sample", {"n": 4, "seed": 3})
    assert s1.hash == s2.hash and s1.rows == 4
    ids = [r["id"] for r in _rows(workspace, f"{ds}@{s1.hash}")]
    assert ids == sorted(ids)
    sh = apply_op(workspace, f"{ds}@{base}", "shuffle", {"seed": 5})
    shuffled = [r["id"] for r in _rows(workspace, f"{ds}@{sh.hash}")]
    assert sorted(shuffled) == list(range(1, 11)) and shuffled != list(range(1, 11))
    other = _dataset(workspace, [{"t": "zz", "extra": True}], name="other")
    cat = apply_op(workspace, f"{ds}@{base}", "concatenate", {"others": [other]})
    last = _rows(workspace, f"{ds}@{cat.hash}")[-1]
    assert cat.rows == 11 and last == {"t": "zz", "id": None, "extra": True}
    with pytest.raises(ConfigError, match="regular expression"):
        apply_op(workspace, ds, "regex_filter", {"column": "t", "pattern": "("})
    with pytest.raises(ConfigError, match="no parameter"):
        apply_op(workspace, ds, "shuffle", {"sed": 1})


def test_token_length_filter_with_a_tokenizer_json(workspace: Any, tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "one": 1, "two": 2, "three": 3}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    ds = _dataset(workspace, [{"t": "one two three"}, {"t": "onetwothree"}, {"t": "one two"}])
    apply_op(
        workspace,
        ds,
        "length_filter",
        {"column": "t", "unit": "tokens", "min": 2, "tokenizer": str(path)},
    )
    assert [r["t"] for r in _rows(workspace, ds)] == ["one two three", "one two"]


def _big(n: int) -> pa.Table:
    """Rows with repeats (for dedupe), a label (for stratify) and text spread over row groups."""
    return pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "t": pa.array([f"text {i % (n // 3)}" for i in range(n)]),
            "label": pa.array(["a", "b", "b", "c"][i % 4] for i in range(n)),
        }
    )


@pytest.mark.parametrize(
    ("op", "params"),
    [
        ("dedupe", {"columns": ["t"]}),
        ("dedupe", {}),
        ("near_dedupe", {"column": "t", "threshold": 0.9}),
        ("split", {"seed": 4}),
        ("split", {"seed": 4, "stratify": "label"}),
        ("sample", {"n": 777, "seed": 2}),
        ("shuffle", {"seed": 9}),
    ],
)
def test_whole_table_ops_stream_blocks_to_the_same_result(
    workspace: Any, monkeypatch: pytest.MonkeyPatch, op: str, params: dict[str, Any]
) -> None:
    """The file path (row groups, small key blocks) gives the version the in-memory path gives."""
    import app.core.data.ops as ops_mod
    from app.core.data.content_hash import content_hash
    from app.core.data.store import ROW_GROUP_ROWS

    n = 2 * ROW_GROUP_ROWS + 123  # three row groups
    table = _big(n)
    in_memory = ops_mod.get_op(op).run_on_table(params, table)
    monkeypatch.setattr(ops_mod, "BLOCK_ROWS", 1000)  # key columns read 1,000 rows at a time
    monkeypatch.setattr(ops_mod, "SHUFFLE_BUCKET_ROWS", 5000)  # five buckets on disk
    store = DatasetStore(workspace)
    ds = store.create_dataset("big", table).dataset_id
    v = apply_op(workspace, ds, op, params)
    assert v.hash == content_hash(in_memory) and v.rows == in_memory.num_rows
    out = store.read_table(f"{ds}@{v.hash}")
    if op == "dedupe":
        key = ["t"] if params else ["id", "t", "label"]
        firsts = {tuple(r[k] for k in key): r["id"] for r in reversed(table.to_pylist())}
        assert out["id"].to_pylist() == sorted(firsts.values())
    elif op == "shuffle":
        perm = np.random.default_rng(9).permutation(n)
        assert out["id"].to_pylist() == perm.tolist()
        assert not [p for p in store.root.iterdir() if p.name.startswith(".shuffle-")]
    elif op == "sample":
        ids = out["id"].to_pylist()
        assert len(ids) == 777 and ids == sorted(ids) and len(set(ids)) == 777
    elif op == "split":
        sizes = Counter(out["split"].to_pylist())
        assert sum(sizes.values()) == n
        slack = 3 if params.get("stratify") else 1  # largest remainder per label group
        for name, ratio in (("train", 0.8), ("validation", 0.1), ("test", 0.1)):
            assert abs(sizes[name] - ratio * n) <= slack
    elif op == "near_dedupe":
        texts = out["t"].to_pylist()
        assert len(set(texts)) == len(texts)  # every exact repeat dropped
        assert len(texts) >= 0.99 * (n // 3)  # a handful of short near-identical texts at most


def test_concatenate_streams_with_type_promotion(workspace: Any) -> None:
    store = DatasetStore(workspace)
    a = pa.table({"x": pa.array([1, 2], pa.int32()), "t": ["p", "q"]})
    b = pa.table({"x": pa.array([3], pa.int64()), "extra": [True]})
    ds = store.create_dataset("a", a).dataset_id
    other = store.create_dataset("b", b)
    v = apply_op(workspace, ds, "concatenate", {"others": [f"{other.dataset_id}@{other.hash}"]})
    want = pa.concat_tables([a, b], promote_options="permissive")
    got = store.read_table(f"{ds}@{v.hash}")
    assert got.schema.field("x").type == pa.int64()
    assert got.to_pylist() == want.to_pylist()
    bad = store.create_dataset("c", pa.table({"x": pa.array([[1]], pa.list_(pa.int64()))}))
    with pytest.raises(ConfigError, match=r"do not match|Cannot concatenate"):
        apply_op(workspace, ds, "concatenate", {"others": [bad.dataset_id]})
    assert store.version(ds).hash == v.hash  # the failed step left the current version alone
