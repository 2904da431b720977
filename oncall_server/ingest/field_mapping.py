"""Field mappings: where an integration's payloads keep their title, severity, dedup key, status...

An operator gives each field a JMESPath expression (a dotted path with indexes such as
``alerts[0].labels.alertname`` is already one) and, for severity and status, a value map (this
sender's ``Average`` is our ``medium``). The integration's adapter normalizes the payload as
usual; the mapping then overrides the fields it names, each evaluated against the event's own
item of the payload. A field whose expression yields null, an empty string, or a value that maps
to nothing keeps the adapter's value: an odd payload never costs a page.

The stored form (``Integration.field_mapping``, the API's ``field_mapping``) is a JSON object::

    {"title": "<expr>", "severity": "<expr>", "dedup_key": "<expr>", "status": "<expr>",
     "description": "<expr>", "links": "<expr>", "device": "<expr>", "events": "<expr>",
     "severity_map": {"Average": "medium"}, "status_map": {"OK": "resolve"}}

every key optional. :func:`parse_mapping` validates one on save (errors name the field:
``field_mapping.title``); :func:`compile_mapping` turns a stored one into a :class:`FieldMapping`,
which the integration's cached context keeps, so alerts never recompile an expression.

Bounds. JMESPath has no loops, recursion, variables or I/O; but a pipe or a multiselect can
reuse a value (``[@, @] | [@, @] | ...`` doubles it each time) and functions such as
``to_string`` or a flatten then do work in proportion. So every expression is checked on save
by :func:`_bounds`, a conservative static estimate of the size of its result and of the work it
does, both as multiples of the input's size: at most :data:`MAX_AMPLIFICATION` and
:data:`MAX_WORK`. The input is a request body, at most ``ONCALL_MAX_BODY_BYTES``. At run time,
one request's evaluations share a budget of :data:`MAX_VISITS` interpreter steps; past it the
remaining fields keep the adapter's values. Results are cut to each field's cap (a title to
1,024 characters, as extraction does).

Fast path. Most expressions are plain paths (``labels.alertname``, ``alerts[0].id``,
``"dotted.key"[-1]``): :func:`_path_steps` recognizes them from the parsed AST (``field``,
``index``, ``subexpression`` and ``index_expression`` nodes only) and :func:`_walk` evaluates
them with direct dict and list lookups, the same results as JMESPath's interpreter. Their work is
bounded by their length, so they need no step budget; they are charged their node count all the
same (what the interpreter would take), so the budget stops a mapping at the same field as
before. Everything else goes through the interpreter, which does the plain paths inside an
expression (the arguments of ``join(' ', [labels.alertname, labels.instance])``) by the same
lookups.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import jmespath  # type: ignore[import-untyped]
from jmespath import exceptions as jmespath_errors
from jmespath import functions as jmespath_functions
from jmespath import visitor as jmespath_visitor
from prometheus_client import Counter

from oncall_server import json_codec
from oncall_server.errors import InvalidArgument
from oncall_server.hookspecs import Adapter, AdapterContext
from oncall_server.ingest.extraction import ACTION_WORDS, MAX_TITLE, normalize_dedup_key
from oncall_server.ingest.model import EventAction, NormalizedEvent
from oncall_server.severity import Severity, severity_from_word

log = logging.getLogger(__name__)

FIELDS = ("title", "severity", "dedup_key", "status", "description", "links", "device")
"""The event fields a mapping can set, in the order they are applied."""
EXPRESSION_KEYS = (*FIELDS, "events")
MAP_KEYS = ("severity_map", "status_map")
KEYS = (*EXPRESSION_KEYS, *MAP_KEYS)

MAX_EXPRESSION_CHARS = 1000
MAX_MAP_ENTRIES = 100
MAX_MAP_KEY_CHARS = 200
MAX_AMPLIFICATION = 16
"""An expression's result may be at most this many times the size of its input (static bound)."""
MAX_WORK = 256
"""An expression may do at most this many passes' worth of work over its input (static bound)."""
MAX_VISITS = 200_000
"""Interpreter steps one request's mapping may take in all (about 0.1 s of CPU); past it, the
remaining fields keep the adapter's values."""

# Where each field goes, and how long its text may be.
MAX_DESCRIPTION = 65_536
MAX_LINKS = 8_192
MAX_DEVICE = 255
DEVICE_DETAIL = "device_name"  # what pages show as the device (paging/deliveries.py)
LINKS_DETAIL = "links"

ACTION_NAMES = {action.name.lower(): action for action in EventAction}

MAPPING_MISSES = Counter(
    "oncall_field_mapping_misses_total",
    "Mapped fields that kept the adapter's value because their expression failed or ran out of "
    "budget (not counted: a null result or an unmapped value, which are normal).",
    ["field", "reason"],
)


# --- validation (on save) ---------------------------------------------------------------------


def parse_mapping(value: Any, field_name: str = "field_mapping") -> dict[str, Any] | None:
    """The stored form of a mapping given through the API, or None for no mapping (null, ``{}``,
    or only empty expressions). InvalidArgument names the first bad field, e.g.
    ``field_mapping.title`` or ``field_mapping.severity_map["Average"]``."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidArgument.field(field_name, "must be a JSON object (or null for no mapping)")
    unknown = sorted(set(value) - set(KEYS))
    if unknown:
        raise InvalidArgument.field(
            f"{field_name}.{unknown[0]}", f"is not a mapping field (known: {', '.join(KEYS)})"
        )
    stored: dict[str, Any] = {}
    for key in EXPRESSION_KEYS:
        expression = value.get(key)
        if expression is None:
            continue
        where = f"{field_name}.{key}"
        if not isinstance(expression, str):
            raise InvalidArgument.field(where, "must be a JMESPath expression (a string)")
        expression = expression.strip()
        if expression:
            _check_expression(expression, where)
            stored[key] = expression
    for key, vocabulary in (("severity_map", _severity_word), ("status_map", _action_word)):
        entries = value.get(key)
        if entries is None:
            continue
        where = f"{field_name}.{key}"
        if not isinstance(entries, dict):
            raise InvalidArgument.field(where, "must be a JSON object of the sender's values to ours")
        if len(entries) > MAX_MAP_ENTRIES:
            raise InvalidArgument.field(where, f"has {len(entries)} entries; at most {MAX_MAP_ENTRIES}")
        seen: dict[str, str] = {}
        normalized: dict[str, str] = {}
        for sender_value, ours in entries.items():
            entry = f"{where}[{json.dumps(sender_value, ensure_ascii=False)}]"
            folded = _fold(sender_value)
            if not folded or len(sender_value) > MAX_MAP_KEY_CHARS:
                raise InvalidArgument.field(
                    entry, f"the sender's value must be 1 to {MAX_MAP_KEY_CHARS} characters"
                )
            if folded in seen:
                raise InvalidArgument.field(
                    entry,
                    f"repeats {seen[folded]!r} (values are matched ignoring case and surrounding spaces)",
                )
            seen[folded] = sender_value
            normalized[sender_value] = vocabulary(ours, entry)
        if normalized:
            if key == "severity_map" and "severity" not in stored:
                raise InvalidArgument.field(
                    where, "needs field_mapping.severity: the map translates what it yields"
                )
            if key == "status_map" and "status" not in stored:
                raise InvalidArgument.field(
                    where, "needs field_mapping.status: the map translates what it yields"
                )
            stored[key] = normalized
    return stored or None


def _severity_word(value: object, where: str) -> str:
    severity = Severity.parse(value) if isinstance(value, str) else None
    if severity is None:
        words = ", ".join(s.label for s in Severity)
        raise InvalidArgument.field(where, f"must be one of our severities ({words}), not {value!r}")
    return severity.label


def _action_word(value: object, where: str) -> str:
    action = ACTION_WORDS.get(value.strip().lower()) if isinstance(value, str) else None
    if action is None:
        words = ", ".join(ACTION_NAMES)
        raise InvalidArgument.field(
            where, f"must be an action ({words}) or a status word we know, not {value!r}"
        )
    return action.name.lower()


def _fold(text: str) -> str:
    return text.strip().casefold()


def _check_expression(expression: str, where: str) -> None:
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise InvalidArgument.field(
            where, f"is {len(expression)} characters long; at most {MAX_EXPRESSION_CHARS}"
        )
    try:
        parsed = jmespath.compile(expression).parsed
    except jmespath_errors.JMESPathError as exc:
        raise InvalidArgument.field(where, f"is not a valid JMESPath expression: {_one_line(exc)}") from None
    try:
        size, work = _bounds(parsed, 1)
    except _Unsupported as exc:
        raise InvalidArgument.field(where, f"uses {exc}, which mappings do not support") from None
    if size > MAX_AMPLIFICATION or work > MAX_WORK:
        raise InvalidArgument.field(
            where,
            "could build a result too large or do too much work for one alert (it reuses a value "
            f"too often: up to {size:g}x the payload's size and {work:g} passes over it; at most "
            f"{MAX_AMPLIFICATION}x and {MAX_WORK})",
        )


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


class _Unsupported(Exception):
    pass


def _bounds(node: dict[str, Any], size: float) -> tuple[float, float]:
    """(result size, work) of evaluating ``node`` on an input ``size`` times the payload's size.

    Conservative: every node is charged a pass over its input, a projection's right side a pass
    over everything the left side yields, a function or flatten a pass over its arguments. A
    node type this does not know is refused rather than guessed."""
    kind = node["type"]
    children: list[dict[str, Any]] = node.get("children", [])
    if kind in ("field", "identity", "current", "index", "slice"):
        return size, size
    if kind == "literal":
        return 1, 1
    if kind in ("subexpression", "pipe", "index_expression"):
        work = size
        for child in children:
            size, child_work = _bounds(child, size)
            work += child_work
        return size, work
    if kind in ("projection", "value_projection", "filter_projection"):
        left_size, work = _bounds(children[0], size)
        out, right_work = _bounds(children[1], left_size)
        work += size + right_work
        if kind == "filter_projection":
            work += _bounds(children[2], left_size)[1]
        return out, work
    if kind == "flatten":
        out, work = _bounds(children[0], size)
        return out, work + size + out
    if kind in ("multi_select_list", "multi_select_dict"):
        results = [_bounds(child, size) for child in children]
        return max(1, sum(r[0] for r in results)), size + sum(r[1] for r in results)
    if kind == "key_val_pair":
        return _bounds(children[0], size)
    if kind in ("or_expression", "and_expression"):
        results = [_bounds(child, size) for child in children]
        return max(r[0] for r in results), size + sum(r[1] for r in results)
    if kind in ("comparator", "not_expression"):
        results = [_bounds(child, size) for child in children]
        return 1, size + sum(r[0] + r[1] for r in results)
    if kind == "function_expression":
        plain = [_bounds(child, size) for child in children if child["type"] != "expref"]
        arguments = sum(r[0] for r in plain)
        # &expr runs once per element of the list argument: a pass over it.
        by_element = [
            _bounds(child["children"][0], arguments) for child in children if child["type"] == "expref"
        ]
        out = max(1, arguments + sum(r[0] for r in by_element))
        return out, size + out + sum(r[1] for r in plain) + sum(r[1] for r in by_element)
    if kind == "expref":
        return _bounds(children[0], size)
    raise _Unsupported(f"a {kind!r} node")


# --- evaluation (per alert) -------------------------------------------------------------------


class _OverBudget(Exception):
    pass


PathSteps = tuple[tuple[bool, str | int], ...]
"""A plain path as lookups: (True, index) into a list, (False, key) into an object."""


def _path_steps(node: dict[str, Any]) -> PathSteps | None:
    """The lookups of an expression that is a plain path (fields, quoted fields, integer indexes,
    ``@``), or None for anything else (projections, slices, filters, functions, literals...)."""
    kind = node["type"]
    if kind == "field":
        return ((False, node["value"]),)
    if kind == "index":
        return ((True, node["value"]),)
    if kind in ("identity", "current"):
        return ()
    if kind in ("subexpression", "index_expression"):
        steps: list[tuple[bool, str | int]] = []
        for child in node["children"]:
            sub = _path_steps(child)
            if sub is None:
                return None
            steps.extend(sub)
        return tuple(steps)
    return None


def _walk(steps: PathSteps, value: Any) -> Any:
    """A plain path evaluated as JMESPath's interpreter does: a field of anything but an object
    is null, an index of anything but a list (or out of range) is null; negative indexes count
    from the end."""
    for is_index, key in steps:
        if is_index:
            if not isinstance(value, list):
                return None
            try:
                value = value[key]  # type: ignore[index]
            except IndexError:
                return None
        elif isinstance(value, dict):
            value = value.get(key)
        else:
            return None
    return value


def _node_count(node: dict[str, Any]) -> int:
    """Nodes of an AST (a slice's children are its numbers, not nodes)."""
    children = node.get("children", ())
    return 1 + sum(_node_count(child) for child in children if isinstance(child, dict))


InnerPaths = dict[int, tuple[PathSteps, int]]
"""The plain paths inside an expression, by ``id()`` of their AST node: lookups and node count."""


def _inner_paths(node: dict[str, Any], found: InnerPaths) -> None:
    """The largest plain-path ``subexpression``/``index_expression`` nodes under ``node`` (e.g. the
    two arguments of ``join(' ', [labels.alertname, labels.instance])``) into ``found``."""
    if node["type"] in ("subexpression", "index_expression"):
        steps = _path_steps(node)
        if steps is not None:
            found[id(node)] = (steps, _node_count(node))
            return
    for child in node.get("children", ()):
        if isinstance(child, dict):
            _inner_paths(child, found)


@dataclass(frozen=True, slots=True)
class _Compiled:
    """An expression ready to evaluate: its AST, its lookups when it is a plain path, and the
    plain paths inside it when it is not (the interpreter does those by lookups too)."""

    parsed: Any
    path: PathSteps | None
    steps: int  # what the interpreter would charge: one step per node
    inner: InnerPaths = field(default_factory=dict)


def _compile(expression: str) -> _Compiled:
    parsed = jmespath.compile(expression).parsed
    path = _path_steps(parsed)
    inner: InnerPaths = {}
    if path is None:
        _inner_paths(parsed, inner)
    return _Compiled(parsed, path, _node_count(parsed), inner)


_OPTIONS = jmespath_visitor.Options(custom_functions=jmespath_functions.Functions())


class _Interpreter(jmespath_visitor.TreeInterpreter):  # type: ignore[misc]
    """JMESPath's own interpreter, counting its steps against one request's budget; the plain
    paths inside an expression (``paths``, from :func:`_inner_paths`) are done by lookups and
    charged their node count, as if visited."""

    def __init__(self, paths: Mapping[int, tuple[PathSteps, int]] | None = None) -> None:
        super().__init__(_OPTIONS)
        self.steps_left = MAX_VISITS
        self.paths = paths or {}

    def visit(self, node: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        self.steps_left -= 1
        if self.steps_left < 0:
            raise _OverBudget
        method = self._method_cache.get(node["type"])  # TreeInterpreter.visit, one call fewer
        if method is None:
            return super().visit(node, *args, **kwargs)
        return method(node, *args, **kwargs)

    def _path(self, node: dict[str, Any], value: Any) -> Any:
        steps, count = self.paths[id(node)]
        self.steps_left -= count - 1  # visit() charged the node itself
        if self.steps_left < 0:
            raise _OverBudget
        return _walk(steps, value)

    def visit_subexpression(self, node: dict[str, Any], value: Any) -> Any:
        if id(node) in self.paths:
            return self._path(node, value)
        return super().visit_subexpression(node, value)

    def visit_index_expression(self, node: dict[str, Any], value: Any) -> Any:
        if id(node) in self.paths:
            return self._path(node, value)
        return super().visit_index_expression(node, value)


@dataclass(frozen=True, slots=True, eq=False)
class FieldMapping:
    """A validated mapping with its expressions compiled, as the integration's context keeps it."""

    stored: Mapping[str, Any]
    expressions: tuple[tuple[str, _Compiled], ...]  # (field, compiled expression) in FIELDS order
    events: _Compiled | None
    severity_map: Mapping[str, Severity] = field(default_factory=dict)
    status_map: Mapping[str, EventAction] = field(default_factory=dict)
    inner_paths: Mapping[int, tuple[PathSteps, int]] = field(default_factory=dict)

    def normalize(
        self,
        adapter: Adapter,
        payload: Any,
        context: AdapterContext,
        notes: list[str] | None = None,
    ) -> list[NormalizedEvent]:
        """The adapter's events for ``payload`` with the mapped fields overridden.

        With ``events``, each item it selects is read by the adapter as if it had been posted
        alone (null selects the payload itself); without, each event is mapped against its own
        item: the payload for a single event, the array's element for an array of as many
        elements, else the JSON its adapter kept as the event's raw payload."""
        interpreter = _Interpreter(self.inner_paths)
        items: list[Any] | None = None
        if self.events is not None:
            selected = self._evaluate(interpreter, "events", self.events, payload, notes)
            if isinstance(selected, list):
                if not selected:
                    raise InvalidArgument.field("body", "field_mapping.events selected no alerts")
                items = selected
            elif selected is not None:
                items = [selected]
        out: list[NormalizedEvent] = []
        if items is not None:
            for item in items:
                for event in adapter.parse(item, context):
                    if len(items) > 1 and not event.raw_payload:
                        event.raw_payload = json_codec.dumps(item)
                    out.append(self._apply(interpreter, event, item, notes))
            return out
        events = adapter.parse(payload, context)
        by_position = isinstance(payload, list) and len(payload) == len(events)
        for index, event in enumerate(events):
            if len(events) == 1:
                item = payload
            elif by_position:
                item = payload[index]
            elif event.raw_payload:
                try:
                    item = json_codec.loads(event.raw_payload)
                except ValueError:
                    item = payload
            else:
                item = payload
            out.append(self._apply(interpreter, event, item, notes))
        return out

    def _evaluate(
        self,
        interpreter: _Interpreter,
        name: str,
        compiled: _Compiled,
        item: Any,
        notes: list[str] | None,
    ) -> Any:
        """The expression's result, or None (noted and counted) if it failed or ran out of budget."""
        if interpreter.steps_left <= 0:
            reason, text = (
                "budget",
                f"field_mapping.{name}: not evaluated, the mapping's step budget is spent",
            )
        else:
            try:
                if compiled.path is not None:  # a plain path: direct lookups, bounded by its length
                    interpreter.steps_left -= compiled.steps  # what the interpreter would charge
                    if interpreter.steps_left < 0:
                        raise _OverBudget
                    return _walk(compiled.path, item)
                return interpreter.visit(compiled.parsed, item)
            except _OverBudget:
                reason = "budget"
                text = f"field_mapping.{name}: stopped after {MAX_VISITS} steps; the adapter's value is kept"
            except (jmespath_errors.JMESPathError, TypeError, ValueError, RecursionError) as exc:
                reason = "error"
                text = f"field_mapping.{name}: {_one_line(exc)}; the adapter's value is kept"
        MAPPING_MISSES.labels(name, reason).inc()
        if notes is not None:
            notes.append(text)
        return None

    def _apply(
        self, interpreter: _Interpreter, event: NormalizedEvent, item: Any, notes: list[str] | None
    ) -> NormalizedEvent:
        changes: dict[str, Any] = {}
        details: dict[str, str] | None = None
        for name, compiled in self.expressions:
            text = _text(self._evaluate(interpreter, name, compiled, item, notes))
            if text is None:
                continue
            if name == "title":
                changes["title"] = _cut(text, MAX_TITLE)
            elif name == "severity":
                severity = self.severity_map.get(_fold(text)) or severity_from_word(text)
                if severity is not None:
                    changes["severity"] = severity
                elif notes is not None:
                    notes.append(
                        f"field_mapping.severity: {text[:100]!r} is in neither severity_map nor the "
                        f"severity words; kept {event.severity.label!r}"
                    )
            elif name == "dedup_key":
                changes["dedup_key"] = normalize_dedup_key(text)
            elif name == "status":
                action = self.status_map.get(_fold(text)) or ACTION_WORDS.get(text.strip().lower())
                if action is not None:
                    changes["action"] = action
                elif notes is not None:
                    notes.append(
                        f"field_mapping.status: {text[:100]!r} is in neither status_map nor our status "
                        f"words; kept {event.action.name.lower()!r}"
                    )
            elif name == "description":
                changes["description"] = _cut(text, MAX_DESCRIPTION)
            else:
                details = details if details is not None else dict(event.details)
                if name == "links":
                    details[LINKS_DETAIL] = _cut(text, MAX_LINKS)
                else:
                    details[DEVICE_DETAIL] = _cut(text, MAX_DEVICE)
        if details is not None:
            changes["details"] = details
        return replace(event, **changes) if changes else event


def _text(value: Any) -> str | None:
    """A result as text: strings as they are, numbers as written (4821.0 is 4821), true/false,
    lists and objects as compact JSON; None for null, empty text and empty containers."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        try:
            return str(value)
        except ValueError:  # more digits than Python prints
            return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return str(int(value)) if value.is_integer() and abs(value) < 2**63 else repr(value)
    if isinstance(value, list | dict):
        return json_codec.dumps(value) if value else None
    return None


def _cut(text: str, limit: int) -> str:
    """At most ``limit`` characters, with lone surrogates replaced (the database refuses them)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        text = text.encode(errors="replace").decode()
    return text[:limit].rstrip() if len(text) > limit else text


def compile_mapping(stored: Any) -> FieldMapping | None:
    """The stored mapping, compiled; None for no mapping. A stored mapping that no longer
    validates (a rule tightened since it was saved) is logged and ignored, so its alerts keep
    flowing with the adapter's fields rather than being refused."""
    try:
        valid = parse_mapping(stored)
    except InvalidArgument as exc:
        log.warning("ignoring a stored field mapping that no longer validates: %s", exc.message)
        return None
    if valid is None:
        return None
    expressions = tuple((name, _compile(valid[name])) for name in FIELDS if name in valid)
    events = _compile(valid["events"]) if "events" in valid else None
    inner_paths: InnerPaths = {}
    for _name, compiled in expressions:
        inner_paths.update(compiled.inner)
    if events is not None:
        inner_paths.update(events.inner)
    return FieldMapping(
        stored=valid,
        expressions=expressions,
        events=events,
        inner_paths=inner_paths,
        severity_map={_fold(k): Severity[v.upper()] for k, v in valid.get("severity_map", {}).items()},
        status_map={_fold(k): ACTION_NAMES[v] for k, v in valid.get("status_map", {}).items()},
    )
