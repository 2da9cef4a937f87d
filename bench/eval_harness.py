"""Wall time of ``demoai eval harness`` vs the harness run by hand against ``demoai serve``.

Same model, task, data and lm-eval version; both include starting the model host:

* ours: ``python -m app eval harness --model M --task mc.yaml`` (the CLI submits the
  ``eval.harness`` job; the worker starts the host, runs lm-eval with the request
  cache, stores one sample per document);
* by hand (docs/eval-harness.md): a :class:`HostProcess` started for the model, then
  ``python -m lm_eval run --model local-completions ...`` against it, then stopped.

Arms alternate over ``--repeats``; prints the medians and the ratio (by hand / ours;
goal >= 0.9x: the job adds little; on a loaded machine the minimums and the per-pair
ratios say more) and checks that both give the same accuracy.

    .venv/bin/python bench/eval_harness.py [--docs 40] [--model tiny|gemma] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SUBJECTS = ["France", "Italy", "Spain", "Germany", "Japan", "Egypt", "Peru", "Kenya"]
CAPITALS = ["Paris", "Rome", "Madrid", "Berlin", "Tokyo", "Cairo", "Lima", "Nairobi"]
YAML = """task: bench_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def _task(folder: Path, n: int) -> Path:
    rows = []
    for i in range(n):
        k = i % len(SUBJECTS)
        choices = [CAPITALS[(k + j) % len(CAPITALS)] for j in range(3)]
        rows.append({"question": f"The capital of {SUBJECTS[k]} is", "choices": choices,
                     "answer": 0})  # fmt: skip
    data = folder / "mc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "mc.yaml").write_text(YAML.format(data=data))
    return folder / "mc.yaml"


def ours(ws: Path, model: str, task: Path, threads: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "app", "--workspace", str(ws), "eval", "harness", "--model",
         model, "--task", str(task), "--threads", str(threads), "--n-ctx", "512", "--json"],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )  # fmt: skip
    secs = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(r.stderr[-3000:])
    out = json.loads(r.stdout)
    return secs, float(next(iter(out["aggregates"].values()))["mc_accuracy"]["value"])


def by_hand(path: Path, fmt: str, task: Path, out: Path, threads: int) -> tuple[float, float]:
    from app.workers.host_client import HostProcess

    t0 = time.perf_counter()
    host = HostProcess(threads=threads, n_ctx=512)
    host.start({"m": (path, fmt)})
    try:
        tok = (
            f"tokenizer_backend=huggingface,tokenizer={path},add_bos_token=True"
            if fmt == "hf"
            else f"tokenizer_backend=remote,auth_token={host.token}"
        )
        env = {**os.environ, "OPENAI_API_KEY": host.token, "HF_HUB_OFFLINE": "1",
               "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(out / "hf")}  # fmt: skip
        r = subprocess.run(
            [sys.executable, "-m", "lm_eval", "run", "--model", "local-completions",
             "--model_args", f"model=m,base_url={host.base_url}/completions,{tok},max_retries=1",
             "--tasks", "bench_mc", "--include_path", str(task.parent), "--output_path",
             str(out)],
            capture_output=True, text=True, env=env, check=False,
        )  # fmt: skip
    finally:
        host.stop()
    secs = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(r.stderr[-3000:])
    [res] = out.rglob("results_*.json")
    return secs, float(json.loads(res.read_text())["results"]["bench_mc"]["acc,none"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=40)
    ap.add_argument("--model", choices=["tiny", "gemma"], default="tiny")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from app.core.models.registry import ModelRegistry
    from app.core.workspace import Workspace
    from tests.support.models import gemma_gguf_cached, tiny_llama_cached

    path = tiny_llama_cached() if args.model == "tiny" else gemma_gguf_cached()
    fmt = "hf" if args.model == "tiny" else "gguf"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        task = _task(root, args.docs)
        ws = Workspace.open(root / "ws")
        try:
            model = ModelRegistry(ws).import_path(path, copy=False).id
        finally:
            ws.close()
        a, b, accs = [], [], set()
        for i in range(args.repeats):
            s, acc = ours(root / "ws", model, task, args.threads)
            a.append(s)
            accs.add(round(acc, 9))
            s, acc = by_hand(path, fmt, task, root / f"out{i}", args.threads)
            b.append(s)
            accs.add(round(acc, 9))
    ma, mb = statistics.median(a), statistics.median(b)
    print(json.dumps({
        "model": args.model, "docs": args.docs, "repeats": args.repeats,
        "ours_s": [round(x, 2) for x in a], "by_hand_s": [round(x, 2) for x in b],
        "median_ours_s": round(ma, 2), "median_by_hand_s": round(mb, 2),
        "ratio_by_hand_over_ours": round(mb / ma, 3),
        "ratio_of_minimums": round(min(b) / min(a), 3),
        "ratio_per_pair": [round(y / x, 3) for x, y in zip(a, b, strict=True)],
        "accuracies": sorted(accs),
    }, indent=2))  # fmt: skip
    return 0 if len(accs) == 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())
