"""`is_rate_limit_error` and `retry_after` never raise (issue 9, item 5), and every header
parser takes any input (hypothesis).

Both are documented never to raise: they run inside `except` blocks of retry loops, where
an exception of their own would replace the provider's error. Hostile here means an
exception whose attributes are subclasses of str, int, dict, list or bytes whose methods
raise, properties and `__getattr__` that raise, `__str__` that raises, a `__class__` that
raises (which `isinstance` consults), cycles, and huge or deeply nested bodies and headers.
"""

from __future__ import annotations

import email.utils
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crewthrottle._rate_limit_errors import (
    _duration,
    _header_lookup,
    _http_date_wait,
    _seconds,
    is_rate_limit_error,
    retry_after,
)


class Boom(Exception):
    """What every hostile method raises."""


def boom(*args: object, **kwargs: object) -> Any:
    raise Boom("hostile")


def hostile(base: type, names: list[str]) -> type:
    """A subclass of `base` whose methods `names` (those that exist on it) all raise."""
    return type(
        f"Hostile{base.__name__.title()}", (base,), {n: boom for n in names if hasattr(base, n)}
    )


COMMON = [
    "__eq__",
    "__ne__",
    "__lt__",
    "__le__",
    "__gt__",
    "__ge__",
    "__hash__",
    "__len__",
    "__iter__",
    "__contains__",
    "__getitem__",
    "__str__",
    "__repr__",
    "__format__",
    "__bool__",
    "__float__",
    "__int__",
    "__index__",
    "__add__",
    "__radd__",
    "__mul__",
    "__mod__",
]
HostileStr = hostile(str, [*COMMON, *(n for n in dir(str) if not n.startswith("_"))])
HostileInt = hostile(int, [*COMMON, *(n for n in dir(int) if not n.startswith("_"))])
HostileDict = hostile(dict, [*COMMON, "get", "keys", "items", "values", "__missing__"])
HostileList = hostile(list, [*COMMON])
HostileBytes = hostile(bytes, [*COMMON, "decode", "startswith", "strip"])


class HostileObject:
    """Raises on every attribute, `__class__` included (which `isinstance` reads)."""

    def __getattribute__(self, name: str) -> Any:
        raise Boom(name)


class RaisingGetattr:
    """Raises Boom for every public attribute (private ones are left to tools: hypothesis
    looks up `_repr_pretty_` to print an example)."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        raise Boom(name)


def with_attrs(base: type[Exception] = Exception, **attrs: Any) -> Exception:
    exc = base("hostile")
    for name, value in attrs.items():
        setattr(exc, name, value)
    return exc


class RaisingProperties(Exception):
    @property
    def status_code(self) -> int:
        raise Boom("status_code")

    @property
    def __cause__(self) -> Any:  # type: ignore[override]
        raise Boom("__cause__")

    @property
    def __context__(self) -> Any:  # type: ignore[override]
        raise Boom("__context__")

    @property
    def __suppress_context__(self) -> Any:  # type: ignore[override]
        raise Boom("__suppress_context__")

    def __str__(self) -> str:
        raise Boom("__str__")


def never_raises(exc: BaseException) -> tuple[bool, float | None]:
    limited = is_rate_limit_error(exc)
    wait = retry_after(exc)
    assert isinstance(limited, bool)
    assert wait is None or (type(wait) is float and math.isfinite(wait) and wait >= 0)
    return limited, wait


def response(**attrs: Any) -> Any:
    """An object with these attributes (functions stay plain functions, not methods)."""
    wrapped = {
        k: staticmethod(v) if callable(v) and hasattr(v, "__code__") else v
        for k, v in attrs.items()
    }
    return type("Response", (), wrapped)()


# The hostile shapes named in the issue, and a few more.
CASES: dict[str, Callable[[], BaseException]] = {
    "str-subclass body": lambda: with_attrs(body=HostileStr('{"error": {"code": "x"}}')),
    "str-subclass code": lambda: with_attrs(code=HostileStr("429")),
    "str-subclass type": lambda: with_attrs(type=HostileStr("rate_limit_error")),
    "dict-subclass body": lambda: with_attrs(body=HostileDict(error={"code": "x"})),
    "dict in a dict body": lambda: with_attrs(body={"error": HostileDict(code=1)}),
    "int-subclass status_code": lambda: with_attrs(status_code=HostileInt(429)),
    "int-subclass on response": lambda: with_attrs(response=response(status_code=HostileInt(429))),
    "list-subclass details": lambda: with_attrs(body={"error": {"details": HostileList([{}])}}),
    "bytes-subclass body": lambda: with_attrs(body=HostileBytes(b'{"a": 1}')),
    "hostile object attributes": lambda: with_attrs(
        status_code=HostileObject(), body=HostileObject(), response=HostileObject()
    ),
    "raising __getattr__": lambda: with_attrs(response=RaisingGetattr(), body=RaisingGetattr()),
    "raising properties and __str__": RaisingProperties,
    "hostile headers mapping": lambda: with_attrs(headers=HostileDict({"retry-after": "1"})),
    "hostile header values": lambda: with_attrs(
        headers=response(
            items=lambda: [
                (HostileStr("retry-after"), HostileStr("1")),
                ("retry-after-ms", HostileBytes(b"5")),
            ]
        )
    ),
    "hostile header pairs": lambda: with_attrs(
        headers=response(items=lambda: [hostile(tuple, COMMON)(("retry-after", "1"))])
    ),
    "endless headers": lambda: with_attrs(headers=response(items=endless_pairs)),
    "json method raising": lambda: with_attrs(response=response(json=boom, status_code=429)),
    "json returning hostile": lambda: with_attrs(
        response=response(json=lambda: HostileDict(error=1))
    ),
    "self-referential body": lambda: with_attrs(body=cyclic()),
    "deeply nested JSON body": lambda: with_attrs(body="{" + '"a":{' * 100_000 + "}" * 100_001),
    "deeply nested dict body": lambda: with_attrs(body=nested(5_000)),
    "huge body": lambda: with_attrs(body="x" * 20_000_000 + " rate limit exceeded"),
    "status of 5000 digits": lambda: with_attrs(status_code="9" * 5000, code="4" * 5000),
    "retry-after of 100k digits": lambda: with_attrs(headers={"retry-after": "1" * 100_000 + "x"}),
    "date before the epoch's range": lambda: with_attrs(
        headers={"retry-after": "Mon, 01 Jan 0001 00:00:00 +0100"}
    ),
    "date in year 9999": lambda: with_attrs(
        headers={"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT"}
    ),
}


def endless_pairs() -> Any:
    while True:
        yield ("x-other", "1")


def cyclic() -> dict[str, Any]:
    body: dict[str, Any] = {"error": {}}
    body["error"]["error"] = body
    body["error"]["details"] = [body]
    return body


def nested(depth: int) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for _ in range(depth):
        body = {"error": body, "details": [body]}
    return body


@pytest.mark.parametrize("make", list(CASES.values()), ids=list(CASES))
def test_hostile_exceptions_never_make_them_raise(
    make: Callable[[], BaseException], promptly: Any
) -> None:
    exc = make()
    promptly(lambda: never_raises(exc))
    wrapped = RuntimeError("wrapper")
    wrapped.__cause__ = exc
    promptly(lambda: never_raises(wrapped))


def test_a_hostile_part_does_not_hide_a_plain_429() -> None:
    """Hostile attributes read as nothing: the plain signals beside them still count."""
    exc = with_attrs(
        status_code=429,
        body=HostileDict(error=1),
        code=HostileStr("x"),
        headers=response(items=lambda: [(HostileStr("x"), HostileStr("y")), ("retry-after", "2")]),
    )
    assert never_raises(exc) == (True, 2.0)


def test_a_far_future_date_is_a_long_finite_wait() -> None:
    assert never_raises(CASES["date in year 9999"]())[1] > 1e10  # backoff gives up on it


# -- fuzzing ---------------------------------------------------------------------------------

LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(),
    st.binary(),
    st.sampled_from([429, 503, 529, "429", "rate_limit_exceeded", "insufficient_quota"]),
    st.builds(HostileStr, st.text()),
    st.builds(HostileInt, st.integers()),
    st.builds(HostileBytes, st.binary()),
    st.just(RaisingGetattr()),
)  # HostileObject (whose __class__ raises) trips hypothesis's own reporting: CASES has it
VALUES = st.recursive(
    LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.builds(HostileList, st.lists(inner, max_size=4)),
        st.dictionaries(
            st.one_of(st.text(), st.sampled_from(["error", "code", "details"])), inner, max_size=4
        ),
        st.builds(HostileDict, st.dictionaries(st.text(), inner, max_size=4)),
    ),
    max_leaves=12,
)
KEYS = st.one_of(
    st.sampled_from(
        [
            "retry-after",
            "Retry-After",
            "retry-after-ms",
            "x-ratelimit-reset-requests",
            "x-ratelimit-reset-tokens",
        ]
    ),
    st.text(max_size=20),
    st.binary(max_size=20),
)
# Hostile names cannot be dict keys (their __hash__ raises): they come as (name, value) pairs.
HEADER_NAMES = st.one_of(KEYS, st.builds(HostileStr, st.text(max_size=5)))
HEADER_VALUES = st.one_of(
    st.text(),
    st.binary(),
    st.from_regex(r"\A[0-9.]{1,12}(ns|us|µs|ms|s|m|h|d)?([0-9.]{1,6}(ms|s|m|h))*\Z"),
    st.datetimes(timezones=st.timezones()).map(lambda d: email.utils.format_datetime(d)),
    st.floats().map(repr),
    st.integers().map(str),
    LEAVES,
)
HEADERS = st.one_of(
    st.dictionaries(KEYS, HEADER_VALUES, max_size=5),
    st.builds(HostileDict, st.dictionaries(KEYS, HEADER_VALUES, max_size=5)),
    st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=5).map(
        lambda p: response(items=lambda: p)
    ),
    VALUES,
)
ATTRIBUTES = ["status_code", "status", "code", "http_status", "type", "body", "json_body",
              "details", "response_json", "headers", "message"]  # fmt: skip


@st.composite
def exceptions(draw: st.DrawFn) -> BaseException:
    base = draw(
        st.sampled_from(
            [Exception, RuntimeError, RaisingProperties, type("RateLimitError", (Exception,), {})]
        )
    )
    exc = base(draw(st.one_of(st.text(), st.just("429 Too Many Requests"))))
    for name in draw(st.lists(st.sampled_from(ATTRIBUTES), max_size=5, unique=True)):
        value = draw(HEADERS if name == "headers" else VALUES)
        if not isinstance(getattr(type(exc), name, None), property):
            object.__setattr__(exc, name, value)
    if draw(st.booleans()):
        attrs = {n: draw(VALUES) for n in draw(st.lists(st.sampled_from(ATTRIBUTES), max_size=3))}
        attrs["headers"] = draw(HEADERS)
        object.__setattr__(exc, "response", response(**attrs))
    if draw(st.booleans()) and base is not RaisingProperties:
        exc.__cause__ = draw(exceptions())
    return exc


FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(exceptions())
def test_fuzz_arbitrary_exception_shapes(exc: BaseException) -> None:
    never_raises(exc)


@FUZZ
@given(HEADERS)
def test_fuzz_header_mappings(headers: Any) -> None:
    never_raises(with_attrs(headers=headers))
    never_raises(with_attrs(response=response(headers=headers, status_code=429)))


@FUZZ
@given(st.one_of(HEADER_VALUES, VALUES))
def test_fuzz_every_header_parser(value: Any) -> None:
    """Each parser answers None or a finite number of seconds >= 0, whatever it is given."""
    for parse in (_seconds, _duration, _http_date_wait):
        wait = parse(value)
        assert wait is None or (type(wait) is float and math.isfinite(wait) and wait >= 0), (
            parse.__name__,
            value,
            wait,
        )
    lookup = _header_lookup({"retry-after": value})
    assert lookup("retry-after") is None or type(lookup("retry-after")) is str


@FUZZ
@given(
    st.floats(min_value=0, allow_infinity=False),
    st.sampled_from(["ns", "us", "ms", "s", "m", "h", "d"]),
)
def test_fuzz_durations_read_back(number: float, unit: str) -> None:
    """A well-formed duration is read as its value (or refused if it overflows to inf)."""
    scale = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    text = f"{number:f}{unit}"
    wait = _duration(text)
    expected = float(f"{number:f}") * scale[unit]
    if len(text) > 64 or not math.isfinite(expected):
        assert wait is None or math.isfinite(wait)
    else:
        assert wait == pytest.approx(expected)
