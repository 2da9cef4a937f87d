"""Built-in tools: calculator, files inside a granted folder, document search, Python, write.

File tools take a *granted folder*; every path is resolved (``..`` and symlinks
followed) and refused unless the result lies inside that folder.
"""

from __future__ import annotations

import ast
import math
import operator
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.core.agents import sandbox
from app.core.agents.tools import Tool, ToolError, dumps, schema
from app.core.errors import DemoAIError

MAX_READ = 64 * 1024
MAX_WRITE = 1024 * 1024
TEXT_SUFFIXES = {
    ".txt", ".md", ".rst", ".csv", ".json", ".jsonl", ".yaml", ".yml", ".toml", ".ini",
    ".py", ".log", ".html", ".xml", ".tex", ".cfg",
}  # fmt: skip


@dataclass(frozen=True)
class ToolContext:
    """What a built-in tool factory needs: the granted folder, sandbox limits and, for
    semantic document search, an embedding function with its model and index folder.

    ``folder_writable``: ``run_python`` mounts the folder writable (read-only otherwise).
    """

    folder: Path | None = None
    folder_writable: bool = False
    python_timeout_s: float = 10.0
    python_memory_mb: int = 512
    embed: Callable[[list[str]], list[list[float]]] | None = None
    embedding_model: str | None = None
    index_dir: Path | None = None


# --------------------------------------------------------------------------- paths


def resolve_inside(root: Path, rel: str) -> Path:
    """``rel`` resolved under ``root``; ToolError if it points outside (``..``, absolute, symlink)."""
    base = root.resolve()
    if not rel or "\x00" in rel:
        raise ToolError("A path is required.")
    target = (base / rel).resolve()
    if target != base and not target.is_relative_to(base):
        raise ToolError(f"Refused: {rel!r} is outside the granted folder.")
    return target


def _need_folder(ctx: ToolContext) -> Path:
    if ctx.folder is None:
        raise ToolError("No folder was granted to this agent.")
    return ctx.folder


def _walk_text_files(root: Path, limit: int = 5000) -> list[Path]:
    base = root.resolve()
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            p = Path(dirpath) / fn
            if p.is_symlink() or p.suffix.lower() not in TEXT_SUFFIXES:
                continue
            out.append(p)
            if len(out) >= limit:
                return out
    return out


# --------------------------------------------------------------------------- calculator

_BIN: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_FUNCS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt, "log": math.log, "exp": math.exp, "sin": math.sin, "cos": math.cos,
    "tan": math.tan, "abs": abs, "round": round, "min": min, "max": max,
}  # fmt: skip
_CONSTS = {"pi": math.pi, "e": math.e}


def calculate(expression: str) -> float | int:
    """Evaluate arithmetic safely: numbers, + - * / // % **, a few math functions; no names."""
    if len(expression) > 500:
        raise ToolError("Expression too long.")
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        raise ToolError(f"Not an arithmetic expression: {exc.msg}.") from None

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 1000:
                raise ToolError("Exponent too large.")
            return _BIN[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](ev(node.operand))
        if isinstance(node, ast.Name) and node.id in _CONSTS:
            return _CONSTS[node.id]
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCS
            and not node.keywords
        ):
            return _FUNCS[node.func.id](*[ev(a) for a in node.args])
        raise ToolError(f"Not allowed in an expression: {type(node).__name__}.")

    try:
        value = ev(tree)
    except ToolError:
        raise
    except (ArithmeticError, ValueError, TypeError) as exc:
        raise ToolError(f"Cannot compute: {exc}.") from None
    if not isinstance(value, int | float):
        raise ToolError("The result is not a number.")
    return value


def _calculator(ctx: ToolContext) -> Tool:
    return Tool(
        "calculator",
        "Evaluate an arithmetic expression, e.g. '2 * (3 + 4) ** 2' or 'sqrt(2)'.",
        schema({"expression": {"type": "string"}}, ["expression"]),
        lambda a: str(calculate(a["expression"])),
    )


# --------------------------------------------------------------------------- files


def _read_file(ctx: ToolContext) -> Tool:
    def fn(a: dict[str, Any]) -> str:
        path = resolve_inside(_need_folder(ctx), a["path"])
        if not path.is_file():
            raise ToolError(f"No file {a['path']!r} in the granted folder.")
        data = path.read_bytes()[:MAX_READ]
        return data.decode("utf-8", "replace")

    return Tool(
        "read_file",
        "Read a text file inside the granted folder (path relative to it).",
        schema({"path": {"type": "string"}}, ["path"]),
        fn,
    )


def _list_files(ctx: ToolContext) -> Tool:
    def fn(a: dict[str, Any]) -> str:
        root = _need_folder(ctx).resolve()
        sub = resolve_inside(root, a.get("path") or ".")
        if not sub.is_dir():
            raise ToolError(f"No folder {a.get('path')!r} in the granted folder.")
        rows = []
        for p in sorted(sub.iterdir())[:500]:
            rel = p.relative_to(root).as_posix()
            rows.append(rel + ("/" if p.is_dir() else ""))
        return "\n".join(rows) or "(empty folder)"

    return Tool(
        "list_files",
        "List the files of a folder inside the granted folder ('.' for its top).",
        schema({"path": {"type": "string"}}),
        fn,
    )


def _search_files(ctx: ToolContext) -> Tool:
    def fn(a: dict[str, Any]) -> str:
        root = _need_folder(ctx).resolve()
        needle = str(a["text"]).lower()
        if not needle:
            raise ToolError("text must not be empty.")
        hits: list[str] = []
        for p in _walk_text_files(root):
            try:
                lines = p.read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError:
                continue
            for n, line in enumerate(lines, 1):
                if needle in line.lower():
                    hits.append(f"{p.relative_to(root).as_posix()}:{n}: {line.strip()[:200]}")
                    if len(hits) >= 50:
                        return "\n".join(hits)
        return "\n".join(hits) or "(no matches)"

    return Tool(
        "search_files",
        "Find lines containing a text (case-insensitive) in the files of the granted folder.",
        schema({"text": {"type": "string"}}, ["text"]),
        fn,
    )


def _write_file(ctx: ToolContext) -> Tool:
    def fn(a: dict[str, Any]) -> str:
        root = _need_folder(ctx)
        path = resolve_inside(root, a["path"])
        content = str(a["content"])
        if len(content.encode("utf-8")) > MAX_WRITE:
            raise ToolError("Content too large.")
        if path.is_dir():
            raise ToolError(f"{a['path']!r} is a folder.")
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_NOFOLLOW: a symlink planted after the check is not followed.
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as exc:
            raise ToolError(f"Cannot write {a['path']!r}: {exc.strerror}.") from None
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(content)
        return f"Wrote {len(content)} characters to {path.relative_to(root.resolve()).as_posix()}."

    return Tool(
        "write_file",
        "Write a text file inside the granted folder (creates or replaces it).",
        schema({"path": {"type": "string"}, "content": {"type": "string"}}, ["path", "content"]),
        fn,
        side_effect=True,
    )


# --------------------------------------------------------------------------- documents

_WORD = re.compile(r"\w+", re.UNICODE)


def _tokens(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def chunk_text(text: str, size: int = 800) -> list[str]:
    """Paragraph-aligned chunks of about ``size`` characters."""
    chunks: list[str] = []
    cur = ""
    for para in re.split(r"\n\s*\n", text):
        para = para.strip()
        if not para:
            continue
        while len(para) > size:
            if cur:
                chunks.append(cur)
                cur = ""
            chunks.append(para[:size])
            para = para[size:]
        if cur and len(cur) + len(para) + 2 > size:
            chunks.append(cur)
            cur = ""
        cur = f"{cur}\n\n{para}" if cur else para
    if cur:
        chunks.append(cur)
    return chunks


def bm25_search(
    docs: list[tuple[str, str]], query: str, k: int = 5, k1: float = 1.5, b: float = 0.75
) -> list[tuple[float, str, str]]:
    """Rank (label, text) chunks against ``query`` with BM25; best first, zero scores dropped."""
    ranked = bm25_rank([t for _, t in docs], query, k1=k1, b=b)
    return [(s, docs[i][0], docs[i][1]) for s, i in ranked[:k]]


def bm25_rank(
    texts: list[str], query: str, k1: float = 1.5, b: float = 0.75
) -> list[tuple[float, int]]:
    """(BM25 score, chunk number) of every chunk matching ``query``; best first."""
    q = set(_tokens(query))
    if not q or not texts:
        return []
    toks = [_tokens(t) for t in texts]
    avg = sum(len(t) for t in toks) / len(toks) or 1.0
    df: Counter[str] = Counter()
    for t in toks:
        df.update(set(t) & q)
    n = len(texts)
    scored: list[tuple[float, int]] = []
    for i, t in enumerate(toks):
        tf = Counter(w for w in t if w in q)
        s = 0.0
        for w, f in tf.items():
            idf = math.log(1 + (n - df[w] + 0.5) / (df[w] + 0.5))
            s += idf * f * (k1 + 1) / (f + k1 * (1 - b + b * len(t) / avg))
        if s > 0:
            scored.append((s, i))
    scored.sort(key=lambda x: (-x[0], x[1]))
    return scored


def _search_documents(ctx: ToolContext) -> Tool:
    if ctx.embed is not None:
        return _semantic_search_documents(ctx)

    def fn(a: dict[str, Any]) -> str:
        root = _need_folder(ctx).resolve()
        docs: list[tuple[str, str]] = []
        for p in _walk_text_files(root):
            try:
                text = p.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            rel = p.relative_to(root).as_posix()
            docs += [(f"{rel}#{i}", c) for i, c in enumerate(chunk_text(text))]
        k = int(a.get("k") or 5)
        hits = bm25_search(docs, str(a["query"]), k=max(1, min(k, 20)))
        return dumps([{"chunk": lbl, "score": round(s, 3), "text": t} for s, lbl, t in hits])

    return Tool(
        "search_documents",
        "Keyword (BM25) search over text chunks of the documents in the granted folder.",
        schema({"query": {"type": "string"}, "k": {"type": "integer"}}, ["query"]),
        fn,
    )


def _semantic_search_documents(ctx: ToolContext) -> Tool:
    from app.core.agents.docindex import DocumentIndex, fuse

    assert ctx.embed is not None
    index: DocumentIndex | None = None

    def fn(a: dict[str, Any]) -> str:
        nonlocal index
        root = _need_folder(ctx).resolve()
        if index is None:
            if ctx.index_dir is None:
                raise ToolError("Semantic search needs an index folder (the workspace).")
            assert ctx.embed is not None
            index = DocumentIndex(
                root, ctx.index_dir, ctx.embed, ctx.embedding_model or "?",
                files=_walk_text_files, chunker=chunk_text,
            )  # fmt: skip
        index.refresh()
        query = str(a["query"])
        k = max(1, min(int(a.get("k") or 5), 20))
        semantic = index.semantic(query)
        keyword = bm25_rank(index.texts, query)
        sims = {i: s for s, i in semantic}
        fused = fuse([[i for _, i in semantic], [i for _, i in keyword]])[:k]
        return dumps(
            [
                {
                    "chunk": index.labels[i],
                    "score": round(s, 4),
                    "similarity": round(sims.get(i, 0.0), 4),
                    "text": index.texts[i],
                }
                for s, i in fused
            ]
        )

    return Tool(
        "search_documents",
        "Search text chunks of the documents in the granted folder by meaning and keywords "
        f"(embeddings from {ctx.embedding_model} fused with BM25); best first.",
        schema({"query": {"type": "string"}, "k": {"type": "integer"}}, ["query"]),
        fn,
    )


# --------------------------------------------------------------------------- python


def _python_description(ctx: ToolContext, reason: str | None) -> str:
    if reason is not None:
        return f"UNAVAILABLE here: {reason}"
    if ctx.folder is None:
        files = "No files of the user are visible"
    else:
        mode = "read and write" if ctx.folder_writable else "read only (writes fail)"
        files = f"The user's granted folder is at {sandbox.GRANT_DIR} ({mode}), the working folder"
    return (
        "Run a Python program (standard library only) in a sandbox and return what it prints. "
        f"{files}; /tmp is private scratch space (64 MB), deleted after the call. "
        "No network, no other programs or processes. Limits per call: "
        f"{ctx.python_timeout_s:g} s, {ctx.python_memory_mb} MB of memory, "
        f"{sandbox.MAX_OUTPUT // 1024} KB of output. Nothing is kept between calls: print results."
    )


def _run_python(ctx: ToolContext) -> Tool:
    reason = sandbox.unavailable_reason()

    def fn(a: dict[str, Any]) -> str:
        try:
            res = sandbox.run_python(
                str(a["code"]),
                timeout_s=ctx.python_timeout_s,
                memory_mb=ctx.python_memory_mb,
                folder=ctx.folder,
                writable=ctx.folder_writable,
            )
        except DemoAIError as exc:  # SandboxUnavailable included: never a weaker run
            raise ToolError(exc.message, exc.hint) from None
        return res.summary()

    return Tool(
        "run_python",
        _python_description(ctx, reason),
        schema({"code": {"type": "string"}}, ["code"]),
        fn,
        # The code can change files in a writable granted folder and uses the
        # machine's time: every call is approved like any other side effect.
        side_effect=True,
    )


#: name -> factory(context) -> Tool
BUILTIN_TOOLS: dict[str, Callable[[ToolContext], Tool]] = {
    "calculator": _calculator,
    "read_file": _read_file,
    "list_files": _list_files,
    "search_files": _search_files,
    "search_documents": _search_documents,
    "run_python": _run_python,
    "write_file": _write_file,
}


#: name -> () -> why the tool cannot work on this machine (None: it can)
REQUIREMENTS: dict[str, Callable[[], str | None]] = {
    "run_python": sandbox.unavailable_reason,
}


def unavailable(name: str) -> str | None:
    """Why the built-in tool ``name`` cannot run here (with what to install), or None."""
    check = REQUIREMENTS.get(name)
    return None if check is None else check()


def builtin_tool(name: str, ctx: ToolContext) -> Tool:
    """The built-in tool ``name`` bound to ``ctx``."""
    try:
        factory = BUILTIN_TOOLS[name]
    except KeyError:
        raise ToolError(
            f"Unknown built-in tool {name!r}.", f"Known: {', '.join(sorted(BUILTIN_TOOLS))}."
        ) from None
    return factory(ctx)
