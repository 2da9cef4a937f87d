"""The arena: blind pairwise matches, votes, Bradley-Terry and Elo ratings, a leaderboard.

A match shows two answers to one prompt as A and B, with the models' names
hidden and their order randomised; the names are revealed with the vote. Ties
and "both bad" count as half a win for each side in the ratings.

Public API: :class:`ArenaService` (``create_match``, ``vote``, ``matches``,
``leaderboard``), :func:`bradley_terry`, :func:`elo`.
"""

from __future__ import annotations

import json
import math
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.core.errors import ConfigError, NotFoundError

if TYPE_CHECKING:
    from app.core.workspace.workspace import Workspace

VOTES = ("a", "b", "tie", "both_bad")
#: (winner, loser, weight): a decided vote is (w, l, 1); a tie two halves.
Outcome = tuple[str, str, float]


@dataclass
class BlindMatch:
    """What the voter sees before voting: no model names."""

    id: str
    prompt: str
    answer_a: str
    answer_b: str


@dataclass
class ArenaMatch:
    id: str
    prompt: str
    model_a: str
    model_b: str
    answer_a: str
    answer_b: str
    blinding: dict[str, Any]
    vote: str | None
    created_at: float
    voted_at: float | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def blind(self) -> BlindMatch:
        return BlindMatch(self.id, self.prompt, self.answer_a, self.answer_b)


def outcomes(votes: Sequence[tuple[str, str, str]]) -> list[Outcome]:
    """(model_a, model_b, vote) triples to weighted (winner, loser, weight) outcomes."""
    out: list[Outcome] = []
    for a, b, v in votes:
        if v == "a":
            out.append((a, b, 1.0))
        elif v == "b":
            out.append((b, a, 1.0))
        elif v in ("tie", "both_bad"):
            out += [(a, b, 0.5), (b, a, 0.5)]
    return out


def bradley_terry(
    results: Sequence[Outcome], *, iters: int = 1000, tol: float = 1e-10, prior: float = 0.5
) -> dict[str, float]:
    """Bradley-Terry strengths by Hunter's MM iterations, on the Elo scale (mean 1000).

    ``prior`` adds that many virtual half-win pairs against every other model, which
    keeps the estimate finite for a model that always wins or always loses.
    """
    models = sorted({m for w, l_, _ in results for m in (w, l_)})
    if not models:
        return {}
    idx = {m: i for i, m in enumerate(models)}
    k = len(models)
    wins = [[0.0] * k for _ in range(k)]
    for w, l_, wt in results:
        wins[idx[w]][idx[l_]] += wt
    if prior > 0:
        for i in range(k):
            for j in range(k):
                if i != j:
                    wins[i][j] += prior / 2
    games = [[wins[i][j] + wins[j][i] for j in range(k)] for i in range(k)]
    total_w = [sum(row) for row in wins]
    p = [1.0] * k
    for _ in range(iters):
        new = []
        for i in range(k):
            denom = sum(games[i][j] / (p[i] + p[j]) for j in range(k) if j != i and games[i][j])
            new.append(total_w[i] / denom if denom > 0 else p[i])
        g = math.exp(sum(math.log(max(x, 1e-300)) for x in new) / k)
        new = [x / g for x in new]
        delta = max(abs(a - b) for a, b in zip(new, p, strict=True))
        p = new
        if delta < tol:
            break
    return {m: 1000.0 + 400.0 * math.log10(p[idx[m]]) for m in models}


def elo(results: Sequence[Outcome], *, k: float = 16.0, base: float = 1000.0) -> dict[str, float]:
    """Sequential Elo over the outcomes in order (a half-weight outcome is half an update)."""
    r: dict[str, float] = {}
    for w, l_, wt in results:
        rw, rl = r.setdefault(w, base), r.setdefault(l_, base)
        ew = 1.0 / (1.0 + 10 ** ((rl - rw) / 400.0))
        r[w] = rw + k * wt * (1.0 - ew)
        r[l_] = rl - k * wt * (1.0 - ew)
    return r


def _bootstrap(
    votes: Sequence[tuple[str, str, str]],
    fn: Callable[[Sequence[Outcome]], dict[str, float]],
    n_boot: int,
    seed: int,
) -> dict[str, tuple[float, float]]:
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {}
    for _ in range(n_boot):
        pick = [votes[rng.randrange(len(votes))] for _ in votes]
        for m, v in fn(outcomes(pick)).items():
            samples.setdefault(m, []).append(v)
    out = {}
    for m, vals in samples.items():
        vals.sort()
        lo = vals[int(0.025 * (len(vals) - 1))]
        hi = vals[math.ceil(0.975 * (len(vals) - 1))]
        out[m] = (lo, hi)
    return out


class ArenaService:
    """Arena matches and votes in the workspace database."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.db = ws.db

    def create_match(
        self,
        prompt: str,
        answers: Mapping[str, str],
        *,
        rng: random.Random | None = None,
        session: str | None = None,
    ) -> BlindMatch:
        """A blind match from ``{model_id: answer}`` (two or more; two are drawn at random)."""
        if len(answers) < 2:
            raise ConfigError("An arena match needs answers from at least two models.")
        rng = rng or random.Random()
        a, b = rng.sample(sorted(answers), 2)  # the draw also randomises left/right
        mid = uuid.uuid4().hex[:12]
        blinding = {"pool": sorted(answers), "left": a, "right": b, "swapped": a > b}
        self.db.execute(
            "INSERT INTO arena_matches(id, prompt, model_a, model_b, answer_a, answer_b, "
            "blinding, session, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (mid, prompt, a, b, answers[a], answers[b], json.dumps(blinding), session, time.time()),
        )
        return BlindMatch(mid, prompt, answers[a], answers[b])

    def _match(self, r: dict[str, Any]) -> ArenaMatch:
        return ArenaMatch(
            id=r["id"],
            prompt=r["prompt"],
            model_a=r["model_a"],
            model_b=r["model_b"],
            answer_a=r["answer_a"],
            answer_b=r["answer_b"],
            blinding=json.loads(r["blinding"]),
            vote=r["vote"],
            created_at=r["created_at"],
            voted_at=r["voted_at"],
        )

    def get(self, match_id: str) -> ArenaMatch:
        row = self.db.query_one("SELECT * FROM arena_matches WHERE id = ?", (match_id,))
        if row is None:
            raise NotFoundError(f"No arena match '{match_id}'.")
        return self._match(row)

    def vote(self, match_id: str, vote: str) -> ArenaMatch:
        """Record the vote ('a', 'b', 'tie', 'both_bad') and return the match, names revealed."""
        if vote not in VOTES:
            raise ConfigError(f"Unknown vote '{vote}'.", f"Use one of {', '.join(VOTES)}.")
        m = self.get(match_id)
        if m.vote is not None:
            raise ConfigError(f"Match {match_id} already has a vote ({m.vote}).")
        self.db.execute(
            "UPDATE arena_matches SET vote = ?, voted_at = ? WHERE id = ?",
            (vote, time.time(), match_id),
        )
        return self.get(match_id)

    def matches(self, *, voted: bool | None = None) -> list[ArenaMatch]:
        sql = "SELECT * FROM arena_matches"
        if voted is not None:
            sql += " WHERE vote IS NOT NULL" if voted else " WHERE vote IS NULL"
        return [self._match(r) for r in self.db.query(sql + " ORDER BY created_at, id")]

    def votes(self) -> list[tuple[str, str, str]]:
        return [(m.model_a, m.model_b, m.vote) for m in self.matches(voted=True) if m.vote]

    def leaderboard(self, *, n_boot: int = 200, seed: int = 0) -> list[dict[str, Any]]:
        """Models by Bradley-Terry rating, with bootstrap 95% CIs, Elo and win counts."""
        return leaderboard(self.votes(), n_boot=n_boot, seed=seed)


def leaderboard(
    votes: Sequence[tuple[str, str, str]], *, n_boot: int = 200, seed: int = 0
) -> list[dict[str, Any]]:
    """The leaderboard rows for (model_a, model_b, vote) triples, best first."""
    res = outcomes(votes)
    bt = bradley_terry(res)
    el = elo(res)
    ci = _bootstrap(votes, bradley_terry, n_boot, seed) if n_boot > 0 and votes else {}
    rows: list[dict[str, Any]] = []
    for m in bt:
        w = sum(1 for a, b, v in votes if (a == m and v == "a") or (b == m and v == "b"))
        lo_ = sum(1 for a, b, v in votes if (a == m and v == "b") or (b == m and v == "a"))
        t = sum(1 for a, b, v in votes if m in (a, b) and v in ("tie", "both_bad"))
        lo, hi = ci.get(m, (bt[m], bt[m]))
        rows.append(
            {
                "model": m,
                "rating": bt[m],
                "ci_low": lo,
                "ci_high": hi,
                "elo": el.get(m),
                "matches": w + lo_ + t,
                "wins": w,
                "losses": lo_,
                "ties": t,
            }
        )
    rows.sort(key=lambda r: -float(r["rating"]))
    for i, r in enumerate(rows):
        r["rank"] = i + 1
    return rows
