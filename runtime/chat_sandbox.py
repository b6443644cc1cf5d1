"""The chat template sandbox: Jinja2's immutable sandbox, made strict, and a budget per render.

Templates come from model files, which anyone can publish. Jinja2's `ImmutableSandboxedEnvironment`
already refuses attributes starting with "_", unsafe callables and mutation of the values passed
in. On top of it (REL-8), so that a template can neither run forever nor eat the worker's memory:

- Every loop iteration and every call (functions, methods, macros, filters) is a *step* of the
  render's `RenderBudget`: more than `MAX_RENDER_STEPS`, or a render older than
  `MAX_RENDER_SECONDS`, stops it with `RenderLimitExceeded`, raised inside the template's own
  code, so the render thread ends by itself (nothing is abandoned; `/cancel` and SIGTERM wait
  at most that long). Loops are counted by rewriting each `{% for %}` at compile time to iterate
  through a counting filter; calls are counted in `call`, filters by wrapping each one.
- No value may grow past `MAX_VALUE_CHARS` items: `*`, `+`, `~` (concatenation), `%`
  formatting, and every call's and filter's result are checked, and the amplifiers that could
  build a huge value in one C call are checked before it (integer arguments, `replace`, format
  widths, `lipsum`). `**` may not build integers over `MAX_POWER_BITS` bits.
- A violation of those value rules is a `SecurityError` ("the sandbox forbids"), as before.
The rendered output is bounded by the caller (runtime.chat) while it streams.
"""

from __future__ import annotations

import contextvars
import functools
import operator
import re
import time
from collections.abc import Iterable, Iterator
from typing import Any

import attrs
import jinja2
import jinja2.nodes as nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.visitor import NodeTransformer

#: Loop iterations plus calls in one render. Real templates take a few per message (SmolLM2's
#: 3, Qwen2.5's ~10), so 256 messages need a few thousand; a template looping over every
#: character of 32 K of content still fits.
MAX_RENDER_STEPS = 200_000
#: Wall time of one render; real templates take a few milliseconds for 256 messages.
MAX_RENDER_SECONDS = 1.0
#: Longest string, list or dict a template may build (1 M items).
MAX_VALUE_CHARS = 1 << 20
MAX_POWER_BITS = 4096
#: A width or precision of 7 digits or more in a %-format or str.format spec (>= 1 M characters)
_WIDE_FORMAT = re.compile(r"%[-+ #0]*(\d{7,}|\d*\.\d{7,})|\{[^{}]*:[^{}]*\d{7,}")
_LOOP_FILTER = "_counted_loop"  # the filter each {% for %} iterates through
_CONCAT_FILTER = "_bounded_concat"  # what `~` becomes


class RenderLimitExceeded(Exception):
    """The render used up its budget (steps or time); `str()` says which."""


@attrs.define
class RenderBudget:
    """Steps and time left to one render; `step()` raises `RenderLimitExceeded` past either."""

    max_steps: int = MAX_RENDER_STEPS
    max_seconds: float = MAX_RENDER_SECONDS
    steps: int = 0
    deadline: float = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.deadline = time.monotonic() + self.max_seconds

    def step(self) -> None:
        self.steps += 1
        if self.steps > self.max_steps:
            raise RenderLimitExceeded(
                f"took over {self.max_steps} steps (loop iterations and calls)"
            )
        self.check_time()

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise RenderLimitExceeded(f"ran for over {self.max_seconds:g} s")


_BUDGET: contextvars.ContextVar[RenderBudget | None] = contextvars.ContextVar(
    "chat_render_budget", default=None
)


def _step() -> None:
    budget = _BUDGET.get()
    if budget is not None:  # None while Jinja folds constants at compile time
        budget.step()


def render_budget() -> contextvars.Token:
    """Start a fresh budget for the render about to run on this thread; `end_budget` after."""
    return _BUDGET.set(RenderBudget(MAX_RENDER_STEPS, MAX_RENDER_SECONDS))


def end_budget(token: contextvars.Token) -> None:
    _BUDGET.reset(token)


# --- value size -----------------------------------------------------------------------------


def _sized(value: Any) -> Any:
    """`value`, unless it is a string, list, tuple or dict of more than MAX_VALUE_CHARS items."""
    if isinstance(value, (str, list, tuple, dict)) and len(value) > MAX_VALUE_CHARS:
        raise SecurityError(
            f"the template builds a value of {len(value)} items (the limit is {MAX_VALUE_CHARS})"
        )
    return value


def _refuse_big_arguments(args: Iterable[Any]) -> None:
    """Integer arguments are widths and counts (`center`, `ljust`, `indent`, `%*s`, ...)."""
    for arg in args:
        if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > MAX_VALUE_CHARS:
            raise SecurityError(f"the template passes the integer {arg} (over {MAX_VALUE_CHARS})")


def _refuse_wide_format(fmt: Any) -> None:
    """A format string (str.format's, `%`'s left side, the `format` filter's) may not ask for
    a width or precision of a million characters or more."""
    if isinstance(fmt, str) and _WIDE_FORMAT.search(fmt):
        raise SecurityError("the template formats with a width of a million or more")


def _refuse_big_replace(s: Any, old: Any, new: Any, count: Any = None) -> None:
    if not (isinstance(s, str) and isinstance(old, str) and isinstance(new, str)):
        return
    n = s.count(old) if old else len(s) + 1
    if isinstance(count, int) and count >= 0:
        n = min(n, count)
    if len(s) + n * (len(new) - len(old)) > MAX_VALUE_CHARS:
        raise SecurityError("the template's replace() builds an oversized string")


def _bounded_filter(name: str, fn: Any) -> Any:
    @functools.wraps(fn)  # keeps `jinja_pass_arg`: Jinja still passes the context it asks for
    def run(*args: Any, **kwargs: Any) -> Any:
        _step()
        _refuse_big_arguments([*args, *kwargs.values()])
        if name == "replace":  # (eval_ctx, s, old, new, count=None)
            _refuse_big_replace(*args[1:], **kwargs)
        elif name == "format" and args:  # (value, *args, **kwargs): value is the format
            _refuse_wide_format(args[0])
        return _sized(fn(*args, **kwargs))

    return run


def _counted_loop(iterable: Any) -> Iterator[Any]:
    """What every {% for %} iterates through: one step per item."""
    for item in iterable:
        _step()
        yield item


def _bounded_concat(parts: list[Any]) -> str:
    """`a ~ b ~ ...` (Jinja's str_join: autoescape is off), refused past MAX_VALUE_CHARS."""
    texts = [str(p) for p in parts]
    if sum(map(len, texts)) > MAX_VALUE_CHARS:
        raise SecurityError("the template concatenates an oversized string")
    return "".join(texts)


def _bounded_lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    """Jinja's `lipsum` global (same arguments), at most 10,000 words."""
    if n * max > 10_000:
        raise SecurityError("the template asks lipsum for over 10,000 words")
    return jinja2.utils.generate_lorem_ipsum(n=n, html=html, min=min, max=max)


class _CountingRewrite(NodeTransformer):
    """Compile-time rewrite: loops iterate through the counting filter, `~` checks its size.

    Recursive loops (`loop(children)`) are counted too: the argument of a `loop(...)` call goes
    through the same filter (outside a recursive loop such a call fails anyway)."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = _filter(node.iter, _LOOP_FILTER)
        return node

    def visit_Call(self, node: nodes.Call) -> nodes.Node:
        self.generic_visit(node)
        if isinstance(node.node, nodes.Name) and node.node.name == "loop" and node.args:
            node.args[0] = _filter(node.args[0], _LOOP_FILTER)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _filter(nodes.List(node.nodes, lineno=node.lineno), _CONCAT_FILTER)


def _filter(node: nodes.Expr, name: str) -> nodes.Filter:
    return nodes.Filter(node, name, [], [], None, None, lineno=node.lineno)


class Sandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, made strict (see the module docstring): reaching for an unsafe
    attribute raises at once (Jinja's default yields an undefined value that prints as "" and
    lets the template go on), and every loop, call, filter and operator is bounded."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}
        self.filters[_LOOP_FILTER] = _counted_loop
        self.filters[_CONCAT_FILTER] = _bounded_concat
        self.globals["lipsum"] = _bounded_lipsum

    def add_filter(self, name: str, fn: Any) -> None:
        self.filters[name] = _bounded_filter(name, fn)

    def parse_bounded(self, source: str) -> nodes.Template:
        """Parse `source` and apply the counting rewrite (compile the result with from_string)."""
        return _CountingRewrite().visit(self.parse(source))

    def unsafe_undefined(self, obj: Any, attribute: Any) -> jinja2.Undefined:
        raise SecurityError(
            f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is unsafe"
        )

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        _step()
        _refuse_big_arguments([*args, *kwargs.values()])
        target = getattr(__obj, "__self__", None)
        if isinstance(target, str) and getattr(__obj, "__name__", "") == "replace":
            _refuse_big_replace(target, *args, **kwargs)
        return _sized(super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Any:
        """`"...".format` as the sandbox hands it out; its format string is checked first."""
        if getattr(value, "__name__", "") in ("format", "format_map"):
            _refuse_wide_format(getattr(value, "__self__", None))
        return super().wrap_str_format(value)

    def call_binop(self, context: Any, operator_name: str, left: Any, right: Any) -> Any:
        if operator_name == "**":
            ints = isinstance(left, int) and isinstance(right, int)
            if ints and right > 0 and right * abs(left).bit_length() > MAX_POWER_BITS:
                raise SecurityError("the template computes an oversized power")
            return operator.pow(left, right)
        if operator_name == "%":
            if isinstance(left, str):
                _refuse_wide_format(left)
                _refuse_big_arguments(right if isinstance(right, tuple) else (right,))
            return _sized(operator.mod(left, right))
        if operator_name == "+":
            sized = isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple))
            if sized and len(left) + len(right) > MAX_VALUE_CHARS:
                raise SecurityError("the template builds an oversized string or list")
            return operator.add(left, right)
        for seq, count in ((left, right), (right, left)):
            sized = isinstance(seq, (str, list, tuple)) and isinstance(count, int)
            if sized and len(seq) * count > MAX_VALUE_CHARS:
                raise SecurityError("the template builds an oversized string or list")
        return operator.mul(left, right)
