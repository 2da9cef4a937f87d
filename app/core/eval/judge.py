"""LLM-as-judge: a local model scores an answer against a rubric.

The judge is asked for a JSON object ``{"score": 1-5, "rationale": "..."}``. Its
reply is parsed leniently (a JSON object anywhere in the text, code fences,
single quotes, a bare "score: 4"); a reply with no score in 1..5 is recorded on
the sample as an error, never a crash. The exact prompt sent to the judge is
stored with the results.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

DEFAULT_RUBRIC = (
    "5: fully correct, complete and clear. 4: correct with minor omissions. "
    "3: partly correct. 2: mostly wrong but on topic. 1: wrong, off topic or empty."
)

JUDGE_TEMPLATE = """You are a strict, impartial grader. Score the ANSWER to the QUESTION against the RUBRIC.
{reference_block}
RUBRIC:
{rubric}

QUESTION:
{input}

ANSWER:
{prediction}

Reply with only a JSON object, no other text: {{"score": <integer 1-5>, "rationale": "<one sentence>"}}
"""

#: A judge: prompt in, the judge model's reply out.
JudgeFn = Callable[[str], str]


@dataclass(frozen=True)
class JudgeVerdict:
    score: float | None
    rationale: str
    error: str | None
    raw: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def judge_prompt(
    input: str, prediction: str, reference: str | None = None, rubric: str = DEFAULT_RUBRIC
) -> str:
    """The prompt the judge model receives for one sample."""
    ref = f"\nA REFERENCE ANSWER (for guidance):\n{reference}\n" if reference else ""
    return JUDGE_TEMPLATE.format(
        reference_block=ref, rubric=rubric.strip(), input=input, prediction=prediction
    )


_OBJ = re.compile(r"\{.*?\}", re.DOTALL)
_SCORE = re.compile(r"""["']?score["']?\s*[:=]\s*["']?(\d+(?:\.\d+)?)""", re.IGNORECASE)
_RATIONALE = re.compile(
    r"""["']?rationale["']?\s*[:=]\s*["']?(.*?)["']?\s*[,}]?\s*$""", re.IGNORECASE | re.DOTALL
)


def parse_verdict(text: str, *, low: float = 1, high: float = 5) -> JudgeVerdict:
    """The score and rationale in a judge's reply; ``score`` None with an error when absent."""
    raw = text
    score: float | None = None
    rationale = ""
    for m in _OBJ.finditer(text):
        blob = m.group(0)
        for candidate in (blob, blob.replace("'", '"')):
            try:
                obj = json.loads(candidate)
            except ValueError:
                continue
            if isinstance(obj, dict) and "score" in obj:
                try:
                    score = float(obj["score"])
                except (TypeError, ValueError):
                    score = None
                rationale = str(obj.get("rationale", obj.get("reason", "")))
                break
        if score is not None:
            break
    if score is None:
        m2 = _SCORE.search(text)
        if m2:
            score = float(m2.group(1))
            r = _RATIONALE.search(text[m2.end() :])
            rationale = r.group(1).strip() if r else ""
    if score is None:
        snippet = " ".join(text.split())[:120]
        return JudgeVerdict(None, "", f"unparseable judge output: {snippet!r}", raw)
    if not low <= score <= high:
        return JudgeVerdict(
            None, rationale, f"judge score {score:g} is outside {low:g}..{high:g}", raw
        )
    return JudgeVerdict(score, rationale, None, raw)


def judge_sample(
    judge: JudgeFn,
    input: str,
    prediction: str,
    reference: str | None = None,
    rubric: str = DEFAULT_RUBRIC,
) -> tuple[JudgeVerdict, str]:
    """Ask ``judge`` about one sample: (verdict, the prompt sent). Judge exceptions become errors."""
    prompt = judge_prompt(input, prediction, reference, rubric)
    try:
        reply = judge(prompt)
    except Exception as exc:  # a failing judge is a per-sample error, not a crashed run
        return JudgeVerdict(None, "", f"judge failed: {type(exc).__name__}: {exc}", ""), prompt
    return parse_verdict(reply), prompt
