"""Chat templates, rendered only in a sandboxed Jinja environment, with a budget.

A model's chat template is code supplied by whoever made the file. We render it
in Jinja's ``ImmutableSandboxedEnvironment`` and, before rendering, refuse any
template that reaches for dunder attributes (``__class__``, ``__globals__``,
``__subclasses__``...), so a hostile template fails before anything runs.
Presets cover models that ship no template.

A template can also simply take too long or too much memory (nested
``range(100000)`` loops, ``'A' * 3000000000``). Every render therefore runs
under a budget: a wall-clock deadline, a count of loop steps, and size checks on
what operators, filters and string methods produce, charged from hooks of the
sandbox (``call_binop``, ``call``, ``getattr``) and from nodes we add to the
parsed template (each ``for`` iterable and each printed value). That is cheap
and catches the plain attacks in-process. It cannot bound a single C-level
operation on a value that is small in memory but huge when walked (a list
nested into itself 60 times, then printed), so untrusted templates served to
other people (the model host) render with ``isolate=True``: in a small worker
process with a memory limit, killed when it overruns the deadline.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, NoReturn

from jinja2 import nodes
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

from app.core.errors import DemoAIError

__all__ = [
    "MAX_OUTPUT_CHARS",
    "MAX_STEPS",
    "PRESETS",
    "RENDER_SECONDS",
    "ChatTemplate",
    "ChatTemplateError",
    "UnsafeTemplateError",
    "guess_preset",
    "preset",
]

Message = Mapping[str, Any]

#: Wall-clock seconds one render may take.
RENDER_SECONDS = 1.0
#: Characters a render may produce, and the longest string any step may build.
MAX_OUTPUT_CHARS = 64 * 1024 * 1024
#: Loop items, range items and sandbox operations one render may take.
MAX_STEPS = 10_000_000
#: Items in one list, tuple or dict built by an operator or filter.
MAX_ITEMS = 1_000_000
#: Bits in one integer built by ``*`` or ``**``.
MAX_INT_BITS = 1 << 16
#: Items in one ``range()`` (Jinja's own sandbox limit).
MAX_RANGE = 100_000
#: Extra seconds an isolated render gets before its worker is killed.
_KILL_GRACE = 0.5
#: Address space a render worker may add to what it uses at start (POSIX).
_WORKER_MEMORY = 1024 * 1024 * 1024
_MAX_WORKERS = 4


class ChatTemplateError(DemoAIError):
    """A chat template failed to compile or render."""

    http_status = 400
    error_type = "invalid_request_error"
    code = "chat_template_error"


class UnsafeTemplateError(ChatTemplateError):
    """A chat template tried to reach Python internals; nothing was run."""

    code = "unsafe_chat_template"


class _TemplateRaised(Exception):
    """``raise_exception(...)`` called by the template itself."""


def _raise_exception(message: str) -> NoReturn:
    raise _TemplateRaised(str(message))


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


# --------------------------------------------------------------------------- budget


class _OverBudget(Exception):
    """A render went over its budget; once raised, every later step raises again."""


class _Budget:
    """What one render may still spend: a deadline and a step count."""

    __slots__ = ("deadline", "exhausted", "printed", "seconds", "steps")

    def __init__(self, seconds: float = RENDER_SECONDS) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.steps = 0
        self.printed = 0
        self.exhausted = ""

    def step(self, n: int = 1) -> None:
        self.steps += n
        if self.exhausted:
            raise _OverBudget(self.exhausted)
        if self.steps > MAX_STEPS:
            self.fail(f"it took more than {MAX_STEPS:,} steps")
        if time.monotonic() > self.deadline:
            self.fail(f"it ran for more than {self.seconds:g} s")

    def fail(self, reason: str) -> NoReturn:
        self.exhausted = reason
        raise _OverBudget(reason)


_LOCAL = threading.local()


def _budget() -> _Budget:
    b: _Budget | None = getattr(_LOCAL, "budget", None)
    if b is None:  # outside a render (e.g. constant folding while compiling): a budget per call
        return _Budget()
    return b


def _check_size(value: Any) -> None:
    """Refuse a value built past the limits (strings, containers, integers)."""
    if isinstance(value, str | bytes):
        if len(value) > MAX_OUTPUT_CHARS:
            _budget().fail(f"it built a string of {len(value):,} characters")
    elif isinstance(value, list | tuple | dict | set):
        if len(value) > MAX_ITEMS:
            _budget().fail(f"it built a collection of {len(value):,} items")
    elif isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        _budget().fail("it built an integer too large")


def _refuse_big(n: Any, limit: int, what: str) -> None:
    if isinstance(n, int) and n > limit:
        _budget().fail(f"{what} asked for {n:,}")


def _check_repeat(seq: Any, n: Any) -> None:
    if isinstance(seq, int) and isinstance(n, int):
        if seq.bit_length() + n.bit_length() > MAX_INT_BITS:
            _budget().fail("it built an integer too large")
    elif isinstance(n, int) and isinstance(seq, str | bytes | list | tuple):
        limit = MAX_OUTPUT_CHARS if isinstance(seq, str | bytes) else MAX_ITEMS
        if len(seq) * n > limit:
            _budget().fail(f"it repeated a value {n:,} times")


def _check_pow(base: Any, exp: Any) -> None:
    if isinstance(base, int) and isinstance(exp, int) and exp > 0:
        if max(base.bit_length(), 1) * exp > MAX_INT_BITS:
            _budget().fail("it built an integer too large")


_PRINTF_WIDTHS = re.compile(r"%[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")
_FORMAT_FIELDS = re.compile(r"\{[^{}]*\}")


def _check_printf(fmt: Any) -> None:
    if not isinstance(fmt, str) or "%" not in fmt:
        return
    for m in _PRINTF_WIDTHS.finditer(fmt):
        for width in m.groups():
            if width == "*" or (width and (len(width) > 8 or int(width) > MAX_OUTPUT_CHARS)):
                _budget().fail("a format width is too large")


def _check_format(fmt: str) -> None:
    for m in _FORMAT_FIELDS.finditer(fmt):
        for digits in re.findall(r"\d+", m.group()):
            if len(digits) > 8 or int(digits) > MAX_OUTPUT_CHARS:
                _budget().fail("a format width is too large")


def _check_replace(s: Any, old: Any, new: Any, count: Any = None) -> None:
    if not (isinstance(s, str) and isinstance(old, str) and isinstance(new, str)):
        return
    n = s.count(old) if old else len(s) + 1
    if isinstance(count, int) and count >= 0:
        n = min(n, count)
    if len(s) + n * (len(new) - len(old)) > MAX_OUTPUT_CHARS:
        _budget().fail("a replace() would build too long a string")


def _check_join(parts: Any, sep: Any) -> None:
    if isinstance(parts, list | tuple) and isinstance(sep, str):
        size = len(sep) * len(parts) + sum(len(p) for p in parts if isinstance(p, str))
        if size > MAX_OUTPUT_CHARS:
            _budget().fail("a join would build too long a string")


def _check_str_method(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Bound the str methods whose output size an argument chooses."""
    wrapped = getattr(obj, "__wrapped__", obj)  # the sandbox wraps str.format
    owner = getattr(wrapped, "__self__", None)
    if not isinstance(owner, str):
        return
    name = getattr(wrapped, "__name__", "")
    for value in (*args, *kwargs.values()):
        _refuse_big(value, MAX_OUTPUT_CHARS, f"str.{name}()")
    if name in ("format", "format_map"):
        _check_format(owner)
    elif name == "replace" and len(args) >= 2:
        _check_replace(owner, *args[:3])
    elif name == "join" and args:
        _check_join(args[0], owner)
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(size, int) and owner.count("\t") * size > MAX_OUTPUT_CHARS:
            _budget().fail("an expandtabs() would build too long a string")


def _filter_indent(s: Any, width: Any = 4, *rest: Any, **kw: Any) -> None:
    w = width if isinstance(width, int) else len(str(width))
    text = str(s)
    if (text.count("\n") + 1) * w + len(text) > MAX_OUTPUT_CHARS:
        _budget().fail("an indent would build too long a string")


def _filter_wordwrap(s: Any, width: Any = 79, *rest: Any, **kw: Any) -> None:
    wrap = kw.get("wrapstring", rest[1] if len(rest) > 1 else None)
    if isinstance(s, str) and isinstance(wrap, str) and isinstance(width, int) and width > 0:
        lines = len(s) // width + s.count("\n") + 1
        if lines * len(wrap) + len(s) > MAX_OUTPUT_CHARS:
            _budget().fail("a wordwrap would build too long a string")


def _filter_items(value: Any, n: Any = 0, *rest: Any, **kw: Any) -> None:
    _refuse_big(n, MAX_ITEMS, "a batch/slice")


#: Filter name -> a check of its (value, *args, **kwargs) before it runs.
_FILTER_CHECKS: dict[str, Callable[..., None]] = {
    "replace": _check_replace,
    "indent": _filter_indent,
    "wordwrap": _filter_wordwrap,
    "format": lambda value, *a, **k: _check_printf(value),
    "join": lambda value, d="", *a, **k: _check_join(value, d),
    "batch": _filter_items,
    "slice": _filter_items,
}


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` charged one step, its size-choosing arguments checked, its result measured."""
    check = _FILTER_CHECKS.get(name)
    skip = 1 if getattr(func, "jinja_pass_arg", None) is not None else 0

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _budget().step()
        for value in (*args[skip + 1 :], *kwargs.values()):
            _refuse_big(value, MAX_OUTPUT_CHARS, f"the {name} filter")
        if check is not None:
            check(*args[skip:], **kwargs)
        out = func(*args, **kwargs)
        _check_size(out)
        return out

    return guarded


def _range(*args: int) -> range:
    """``range`` of at most MAX_RANGE items, each charged to the budget."""
    rng = range(*args)
    try:
        n = len(rng)
    except OverflowError:
        n = MAX_RANGE + 1
    if n > MAX_RANGE:
        _budget().fail(f"it asked for a range of more than {MAX_RANGE:,} items")
    _budget().step(n)
    return rng


def _iter_charged(value: Any) -> Any:
    """Each item a ``for`` loop takes is one step."""
    b = _budget()
    for item in value:
        b.step()
        yield item


def _printed(value: Any) -> str:
    """A printed value, measured (output built inside macros and blocks counts too)."""
    text = value if isinstance(value, str) else str(value)
    b = _budget()
    b.step(1 + len(text) // 4096)
    # Output captured by macros and {% set %} blocks is printed again where it is
    # used: allow for some of that, but bound what all the joins can build.
    b.printed += len(text)
    if b.printed > 2 * MAX_OUTPUT_CHARS:
        b.fail(f"it printed more than {2 * MAX_OUTPUT_CHARS:,} characters")
    return text


_ITER = "demoai:iter"  # not a valid filter name in a template: only we can place these
_PRINT = "demoai:print"
_SIZE = "demoai:size"


def _filter_node(node: nodes.Node, name: str) -> nodes.Filter:
    return nodes.Filter(node, name, [], [], None, None, lineno=node.lineno)


class _Instrument(NodeTransformer):
    """Adds the budget's nodes: charged ``for`` iterables, measured prints and ``~``."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = _filter_node(node.iter, _ITER)
        return node

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        self.generic_visit(node)
        node.nodes = [
            n if isinstance(n, nodes.TemplateData) else _filter_node(n, _PRINT) for n in node.nodes
        ]
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _filter_node(node, _SIZE)


class _StrictSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox with a budget, failing loudly (not with a silent Undefined)."""

    intercepted_binops = frozenset({"*", "**", "+", "%", "//"})

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        raise SecurityError(
            f"access to attribute {attribute!r} of {type(obj).__name__!r} is unsafe"
        )

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        out: nodes.Template = _Instrument().visit(tree)
        return out

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _budget().step()
        if operator == "*":
            _check_repeat(left, right)
            _check_repeat(right, left)
        elif operator == "**":
            _check_pow(left, right)
        elif operator == "%":
            _check_printf(left)
        out = self.binop_table[operator](left, right)
        _check_size(out)
        return out

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _budget().step()
        _check_str_method(__obj, args, kwargs)
        out = super().call(__context, __obj, *args, **kwargs)
        _check_size(out)
        return out

    def getattr(self, obj: Any, attribute: str) -> Any:
        _budget().step()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _budget().step()
        return super().getitem(obj, argument)


def _make_env() -> _StrictSandbox:
    # optimized=False: the optimizer folds constant expressions while compiling,
    # outside any budget.
    env = _StrictSandbox(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols], optimized=False
    )
    env.filters["tojson"] = _tojson
    env.filters = {name: _guard_filter(name, f) for name, f in env.filters.items()}
    env.filters[_ITER] = _iter_charged
    env.filters[_PRINT] = _printed
    env.filters[_SIZE] = _printed
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["range"] = _range
    env.globals.pop("lipsum", None)  # lipsum(n) builds n paragraphs
    return env


_ENV = _make_env()


def _check_ast(source: str) -> None:
    """Refuse templates that name private or dunder attributes anywhere, taken branch or not."""
    try:
        tree = _ENV.parse(source)
    except TemplateSyntaxError as exc:
        raise ChatTemplateError(f"The chat template has a syntax error: {exc}.") from exc
    except RecursionError:
        raise ChatTemplateError("The chat template is nested too deeply to compile.") from None
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Name)):
        name: object = None
        if isinstance(node, nodes.Getattr):
            name = node.attr
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            name = node.arg.value
        elif isinstance(node, nodes.Name):
            name = node.name
        prefix = "__" if isinstance(node, nodes.Name) else "_"
        if isinstance(name, str) and name.startswith(prefix):
            raise UnsafeTemplateError(
                f"Refused an unsafe chat template: it accesses {name!r}.",
                "The model file may be malicious; use a preset template (--template) instead.",
            )


_UNSAFE_HINT = "The model file may be malicious; use a preset template (--template) instead."


@dataclass(frozen=True)
class ChatTemplate:
    """A compiled chat template with the special tokens it may reference.

    ``stop`` lists strings that end an assistant turn (the template's end-of-turn
    marker), added to the request's stop strings when chatting. ``trusted``
    marks our own presets, which never need a worker process.
    """

    source: str
    bos_token: str = ""
    eos_token: str = ""
    name: str = "model"
    stop: tuple[str, ...] = ()
    trusted: bool = False
    _compiled: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_ast(self.source)
        try:
            compiled = _ENV.from_string(self.source)
        except TemplateError as exc:
            raise ChatTemplateError(f"The chat template does not compile: {exc}.") from exc
        except RecursionError:
            raise ChatTemplateError("The chat template is nested too deeply to compile.") from None
        object.__setattr__(self, "_compiled", compiled)

    def render(
        self,
        messages: Sequence[Message],
        *,
        add_generation_prompt: bool = True,
        **extra: Any,
    ) -> str:
        """Render ``messages`` (dicts with ``role`` and ``content``) to a prompt string.

        Over budget (time, steps, sizes) raises :class:`UnsafeTemplateError`.
        """
        msgs = [_normalise_message(m) for m in messages]
        return self._render_here(msgs, add_generation_prompt, extra)

    def render_isolated(
        self,
        messages: Sequence[Message],
        *,
        add_generation_prompt: bool = True,
        **extra: Any,
    ) -> str:
        """:meth:`render`, in a worker process unless the template is one of ours.

        The worker bounds even what the in-process budget cannot see; it costs
        a few hundred microseconds per render.
        """
        msgs = [_normalise_message(m) for m in messages]
        if self.trusted:
            return self._render_here(msgs, add_generation_prompt, extra)
        return _render_isolated(self, msgs, add_generation_prompt, extra)

    def _render_here(
        self, msgs: list[dict[str, Any]], add_generation_prompt: bool, extra: Mapping[str, Any]
    ) -> str:
        context: dict[str, Any] = {
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            **extra,
            "messages": msgs,
            "add_generation_prompt": add_generation_prompt,
        }
        budget = _Budget()
        outer = getattr(_LOCAL, "budget", None)
        _LOCAL.budget = budget
        try:
            parts: list[str] = []
            size = 0
            for piece in self._compiled.generate(**context):
                size += len(piece)
                if size > MAX_OUTPUT_CHARS:
                    budget.fail(f"it produced more than {MAX_OUTPUT_CHARS:,} characters")
                budget.step()
                parts.append(piece)
            return "".join(parts)
        except _OverBudget as exc:
            raise _over_budget(str(exc)) from None
        except (RecursionError, MemoryError) as exc:
            what = "recursed too deeply" if isinstance(exc, RecursionError) else "ran out of memory"
            raise _over_budget(what) from None
        except SecurityError as exc:
            raise UnsafeTemplateError(
                f"Refused an unsafe chat template: {exc}.", _UNSAFE_HINT
            ) from exc
        except _TemplateRaised as exc:
            raise ChatTemplateError(f"The chat template refused the conversation: {exc}") from exc
        except (
            TemplateError,
            TypeError,
            ValueError,
            KeyError,
            IndexError,
            AttributeError,
            ArithmeticError,
        ) as exc:
            raise ChatTemplateError(f"The chat template failed to render: {exc}.") from exc
        finally:
            _LOCAL.budget = outer

    def with_tokens(self, bos_token: str, eos_token: str) -> ChatTemplate:
        """The same template with the model's special tokens."""
        return ChatTemplate(
            self.source, bos_token, eos_token, self.name, self.stop, trusted=self.trusted
        )


def _over_budget(reason: str) -> UnsafeTemplateError:
    return UnsafeTemplateError(
        f"Refused an unsafe chat template: it went over its budget ({reason}).",
        f"A chat template may take {RENDER_SECONDS:g} s and build {MAX_OUTPUT_CHARS // 2**20} MB "
        "at most. " + _UNSAFE_HINT,
    )


# --------------------------------------------------------------------------- isolation


class _Worker:
    """A render worker process; replies are read by a thread so waits can time out anywhere."""

    def __init__(self) -> None:
        root = str(Path(__file__).resolve().parents[3])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        code = "from app.core.infer.templates import _worker_main; _worker_main()"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        self.replies: queue.Queue[bytes | None] = queue.Queue()
        assert self.proc.stdout is not None
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, stream: IO[bytes]) -> None:
        try:
            for line in stream:
                self.replies.put(line)
        except (OSError, ValueError):
            pass
        self.replies.put(None)

    def ask(self, request: bytes, timeout: float) -> bytes | None:
        """The reply line, or None when the worker died or overran ``timeout``."""
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(request)
            self.proc.stdin.flush()
            return self.replies.get(timeout=timeout)
        except (OSError, queue.Empty):
            return None

    def kill(self) -> None:
        self.proc.kill()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass


class _WorkerPool:
    """Up to ``size`` render workers, started on demand and reused."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._idle: list[_Worker] = []
        self._count = 0
        self._cond = threading.Condition()

    def acquire(self, timeout: float = 30.0) -> _Worker:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._idle and self._count >= self.size:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ChatTemplateError(
                        "Every chat-template worker is busy.", "Try again in a moment."
                    )
                self._cond.wait(left)
            if self._idle:
                return self._idle.pop()
            self._count += 1
        try:
            return _Worker()
        except OSError as exc:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise ChatTemplateError(f"Cannot start a chat-template worker: {exc}.") from exc

    def release(self, worker: _Worker, healthy: bool) -> None:
        if not healthy:
            worker.kill()
        with self._cond:
            if healthy:
                self._idle.append(worker)
            else:
                self._count -= 1
            self._cond.notify()

    def prestart(self, n: int = 1) -> None:
        """Start ``n`` workers now, so the first render does not wait for one."""
        workers = [self.acquire() for _ in range(min(n, self.size))]
        for w in workers:
            self.release(w, True)


_POOL = _WorkerPool(_MAX_WORKERS)


def prestart_render_workers(n: int = 1) -> None:
    """Start isolated-render workers ahead of the first request."""
    _POOL.prestart(n)


def _render_isolated(
    template: ChatTemplate,
    msgs: list[dict[str, Any]],
    add_generation_prompt: bool,
    extra: Mapping[str, Any],
) -> str:
    try:
        request = (
            json.dumps(
                {
                    "source": template.source,
                    "bos": template.bos_token,
                    "eos": template.eos_token,
                    "messages": msgs,
                    "add_generation_prompt": add_generation_prompt,
                    "extra": dict(extra),
                },
                ensure_ascii=False,
            ).encode("utf-8")
            + b"\n"
        )
    except (TypeError, ValueError) as exc:
        raise ChatTemplateError(f"The conversation cannot be rendered: {exc}.") from exc
    worker = _POOL.acquire()
    reply: bytes | None = None
    try:
        reply = worker.ask(request, RENDER_SECONDS + _KILL_GRACE)
    finally:
        healthy = reply is not None and not reply.startswith(b'{"unsafe"')
        _POOL.release(worker, healthy)
    if reply is None:
        raise _over_budget(f"it did not finish in {RENDER_SECONDS:g} s or used too much memory")
    try:
        answer = json.loads(reply.decode("utf-8", "surrogatepass"))
        if "text" in answer:
            return str(answer["text"])
        _kind, message, hint = answer["unsafe" if "unsafe" in answer else "error"]
    except (ValueError, KeyError, TypeError):
        raise ChatTemplateError("The chat-template worker gave an unreadable reply.") from None
    cls = UnsafeTemplateError if "unsafe" in answer else ChatTemplateError
    raise cls(str(message), hint if isinstance(hint, str) else None)


def _limit_memory() -> None:
    try:
        import resource

        with open("/proc/self/statm") as fh:
            used = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        limit = used + _WORKER_MEMORY
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, OSError, ValueError):
        pass  # no rlimits (Windows) or no /proc: the in-process budget and the kill remain


def _worker_main() -> None:
    """The isolated renderer: one JSON request per line in, one JSON reply per line out."""
    _limit_memory()
    cache: dict[tuple[str, str, str], ChatTemplate] = {}
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        reply: dict[str, Any]
        try:
            req = json.loads(line)
            key = (req["source"], req["bos"], req["eos"])
            template = cache.get(key)
            if template is None:
                if len(cache) >= 8:
                    cache.clear()
                template = cache[key] = ChatTemplate(*key)
            text = template._render_here(
                req["messages"], bool(req["add_generation_prompt"]), req["extra"]
            )
            reply = {"text": text}
        except UnsafeTemplateError as exc:
            reply = {"unsafe": [exc.code, exc.message, exc.hint]}
        except DemoAIError as exc:
            reply = {"error": ["chat_template_error", exc.message, exc.hint]}
        except MemoryError:
            reply = {
                "unsafe": [
                    "unsafe_chat_template",
                    "The chat template ran out of memory.",
                    _UNSAFE_HINT,
                ]
            }
        except Exception as exc:  # a reply for anything, so the host never waits on a silent worker
            reply = {"error": ["chat_template_error", f"The chat template failed: {exc!r}.", None]}
        out.write(json.dumps(reply, ensure_ascii=False).encode("utf-8", "surrogatepass") + b"\n")
        out.flush()


def _normalise_message(message: Message) -> dict[str, Any]:
    if not isinstance(message, Mapping) or "role" not in message:
        raise ChatTemplateError("Each message needs a 'role' and a 'content'.")
    out = dict(message)
    content = out.get("content")
    if content is None:
        out["content"] = ""
    elif isinstance(content, list):
        # OpenAI content parts: keep the text parts.
        out["content"] = "".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, Mapping) and p.get("type") == "text"
        )
    elif not isinstance(content, str):
        raise ChatTemplateError("A message's content must be text.")
    return out


_CHATML = (
    "{% for m in messages %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Gemma has no system role: a system message is folded into the first user turn.
_GEMMA = (
    "{{ bos_token }}"
    "{% set ns = namespace(system='') %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{% set ns.system = ns.system + m['content'] + '\\n\\n' %}"
    "{% else %}"
    "{% set role = 'model' if m['role'] == 'assistant' else 'user' %}"
    "{{ '<start_of_turn>' + role + '\\n' + ns.system + m['content'] + '<end_of_turn>\\n' }}"
    "{% set ns.system = '' %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
_LLAMA3 = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
# ChatML with tools in the Hermes function-calling format (as used by Hermes 2 Pro
# and Qwen 2.5): tool schemas in a <tools> block of the system turn, calls as
# <tool_call>JSON</tool_call>, results as <tool_response> in a user turn.
# Without tools it renders exactly like chatml.
_HERMES = (
    "{% set ns = namespace(first=0) %}"
    "{% if tools %}"
    "{{ '<|im_start|>system\\n' }}"
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{{ messages[0]['content'] + '\\n\\n' }}{% set ns.first = 1 %}{% endif %}"
    "{{ '# Tools\\n\\nYou may call one or more functions to assist with the user query.'"
    " + ' You are provided with function signatures within <tools></tools> XML tags:'"
    " + '\\n<tools>' }}"
    "{% for t in tools %}{{ '\\n' + (t | tojson) }}{% endfor %}"
    "{{ '\\n</tools>\\n\\nFor each function call, return a JSON object with the function'"
    " + ' name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n'"
    ' + \'{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call>\''
    " + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% for m in messages[ns.first:] %}"
    "{% if m['role'] == 'tool' %}"
    "{{ '<|im_start|>user\\n<tool_response>\\n' + m['content'] + '\\n</tool_response><|im_end|>\\n' }}"
    "{% elif m['role'] == 'assistant' and m['tool_calls'] %}"
    "{{ '<|im_start|>assistant\\n' + m['content'] }}"
    "{% for c in m['tool_calls'] %}"
    "{{ '<tool_call>\\n' + ({'name': c['function']['name'], 'arguments': c['function']['arguments']} | tojson) + '\\n</tool_call>' }}"
    "{% endfor %}"
    "{{ '<|im_end|>\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_PLAIN = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] + '\\n\\n' }}"
    "{% elif m['role'] == 'assistant' %}{{ 'Assistant: ' + m['content'] + '\\n\\n' }}"
    "{% else %}{{ 'User: ' + m['content'] + '\\n\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

#: Preset name -> (template source, default bos, default eos, stop strings).
PRESETS: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "chatml": (_CHATML, "", "<|im_end|>", ("<|im_end|>",)),
    "hermes": (_HERMES, "", "<|im_end|>", ("<|im_end|>",)),
    "gemma": (_GEMMA, "<bos>", "<eos>", ("<end_of_turn>",)),
    "llama3": (_LLAMA3, "<|begin_of_text|>", "<|eot_id|>", ("<|eot_id|>",)),
    "plain": (_PLAIN, "", "", ("\nUser:",)),
}


#: (label, preset name or None for the model's own) as offered in the panes.
TEMPLATE_CHOICES: list[tuple[str, str | None]] = [
    ("Model's own (or a preset guessed from the architecture)", None),
    ("ChatML", "chatml"),
    ("ChatML with tools (Hermes format)", "hermes"),
    ("Gemma", "gemma"),
    ("Llama 3", "llama3"),
    ("Plain (User:/Assistant:)", "plain"),
]


def preset(
    name: str, *, bos_token: str | None = None, eos_token: str | None = None
) -> ChatTemplate:
    """A preset template by name (``chatml``, ``hermes``, ``gemma``, ``llama3``, ``plain``)."""
    try:
        source, bos, eos, stop = PRESETS[name]
    except KeyError:
        raise ChatTemplateError(
            f"Unknown chat template preset {name!r}.",
            f"Choose one of: {', '.join(sorted(PRESETS))}.",
        ) from None
    return ChatTemplate(
        source,
        bos if bos_token is None else bos_token,
        eos if eos_token is None else eos_token,
        name=name,
        stop=stop,
        trusted=True,
    )


def guess_preset(architecture: str | None) -> str:
    """A sensible preset for a model without a template, from its architecture name."""
    arch = (architecture or "").lower()
    if arch.startswith("gemma"):
        return "gemma"
    if arch.startswith(("qwen", "internlm", "yi")):
        return "chatml"
    return "plain"
