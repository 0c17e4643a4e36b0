"""Property-based request generation for every RPC of prefmine.v1.Recommender, built from the proto descriptors.

Why from the descriptors: a field added to recommender.proto is fuzzed without anyone writing a strategy for it,
and the generator can send what a generated client refuses to (strings that are not UTF-8, unknown enum numbers,
wrong wire types, truncated bytes), because each request is encoded here, field by field, to protobuf wire bytes.

Per field type (walked recursively through nested messages):

* string: empty, whitespace, unicode (combining marks, astral planes), NUL and control characters, invalid
  UTF-8, a few bytes over the documented limits (256-byte ids, 1024-byte query, 64-byte placement) and huge
  (up to ~1 MiB); fields named ``*user_id``/``*item_id*`` also draw ids the bundle knows, so some requests get
  past validation into the ranker, the encoder and the feedback log;
* integers: the type's limits, 0, -1, the documented limits +-1 (``k``), timestamps around now;
* float/double: NaN, +-inf, -0.0, subnormals, ratings 1..5;
* enums: every named value and unknown numbers;
* repeated: short lists, and long ones at and over the documented limits (10,000 entries);
* about half the requests are plausible (what a well-behaved client sends) with at most one field fuzzed, so
  they get past validation;
* the whole request: now and then garbage bytes, a truncated encoding, an unknown field, a wrong wire type.

``requests_for(rpc, vocab)`` is the strategy of one RPC's request bytes (a ``FuzzRequest``);
``for_each_example`` draws N of them outside a test (a seeded ``@given`` run: no shrinking, no example
database) and hands each to a function as it is drawn, so a long run never holds them all in memory.
``named_field`` is the invariant on INVALID_ARGUMENT details: they must start with a path of the request.
No Ray, no gRPC: the serving test and ``bench.fuzz`` send the bytes.
"""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from prefmine.v1 import recommender_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["Recommender"]
RPCS = tuple(m.name for m in SERVICE.methods)

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
UINT_MASK = 2**64 - 1
MAX_FIELD_NUMBER = 2**29 - 1  # protobuf's largest field number; a tag is at most 32 bits


@dataclass(frozen=True)
class FuzzConfig:
    """What the generator draws. ``known_users``/``known_items``: raw ids the served bundle knows (the deep
    paths); ``max_short``: length of ordinary repeated fields; ``long_lengths``: lengths of the long ones (around
    the 10,000-entry limits); ``huge_bytes``: sizes of the huge strings (1 MiB keeps a request under the 4 MiB
    message limit); ``raw_share``: about one request in this many is wire-level garbage instead of fields."""

    known_users: tuple[str, ...] = ()
    known_items: tuple[str, ...] = ()
    max_short: int = 6
    long_lengths: tuple[int, ...] = (999, 1000, 1001, 9999, 10_000, 10_001)
    huge_bytes: tuple[int, ...] = (257, 1025, 4096, 65_536, 1 << 20)
    raw_share: int = 12
    now: float = field(default_factory=time.time)


@dataclass(frozen=True)
class FuzzRequest:
    """One generated request: the wire bytes to send and whether they are meant to parse as the message (the
    server may then only answer a rejection that names a field, never "not a valid <Message>")."""

    rpc: str
    data: bytes
    wire_garbage: bool = False


def request_class(rpc: str):
    """The generated message class of the RPC's request."""
    return getattr(pb, SERVICE.methods_by_name[rpc].input_type.name)


# -- wire encoding ----------------------------------------------------------------------------------------------
def varint(value: int) -> bytes:
    v, out = value & UINT_MASK, bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint((number << 3) | wire_type)


def length_delimited(number: int, payload: bytes) -> bytes:
    return tag(number, 2) + varint(len(payload)) + payload


_VARINT_TYPES = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT32,
                 FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_BOOL, FieldDescriptor.TYPE_ENUM}


def _scalar(fd: FieldDescriptor, value) -> tuple[int, bytes]:
    """(wire type, encoded value without tag) of one scalar."""
    if fd.type in _VARINT_TYPES:
        return 0, varint(int(value))
    if fd.type == FieldDescriptor.TYPE_FLOAT:
        return 5, struct.pack("<f", value)
    if fd.type == FieldDescriptor.TYPE_DOUBLE:
        return 1, struct.pack("<d", value)
    raise TypeError(f"no scalar encoding for {fd.full_name}")


def _is_repeated(fd: FieldDescriptor) -> bool:
    rep = getattr(fd, "is_repeated", None)  # protobuf >= 6 (label is gone in 7)
    return bool(rep if rep is not None else fd.label == fd.LABEL_REPEATED)


def encode(desc: Descriptor, values: dict) -> bytes:
    """Wire bytes of message ``desc`` with ``values`` ({field name: value}; strings may be bytes, which are sent
    as they are, valid UTF-8 or not; a repeated numeric field given as ``("packed", [..])`` is packed)."""
    out = bytearray()
    for name, value in values.items():
        fd = desc.fields_by_name[name]
        items = value if _is_repeated(fd) else [value]
        if _is_repeated(fd) and isinstance(value, tuple) and value and value[0] == "packed":
            payload = b"".join(_scalar(fd, v)[1] for v in value[1])
            out += length_delimited(fd.number, payload)
            continue
        done: dict[int, bytes] = {}  # a long list repeats a few objects: each is encoded once
        for v in items:
            enc = done.get(id(v))
            if enc is None:
                if fd.type == FieldDescriptor.TYPE_MESSAGE:
                    enc = length_delimited(fd.number, encode(fd.message_type, v))
                elif fd.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
                    enc = length_delimited(fd.number, v if isinstance(v, bytes) else v.encode("utf-8", "surrogatepass"))
                else:
                    wt, raw = _scalar(fd, v)
                    enc = tag(fd.number, wt) + raw
                done[id(v)] = enc
            out += enc
    return bytes(out)


# -- strategies -------------------------------------------------------------------------------------------------
_UNICODE = ["é", "e\u0301", "日本", "\U0001f600", "\u202e", "\ufeff", "ß", "\u00a0", "Ω"]
_CONTROL = ["\x00", "\x01", "\x07", "\t", "\n", "\r", "\x1b", "\x7f", "\u0085", "\u2028"]
_BAD_UTF8 = [b"\xff", b"\xc3", b"caf\xe9", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"a\x80b"]


def _huge(sizes) -> st.SearchStrategy:
    """A string of one of ``sizes`` bytes, built from two small draws (hypothesis never holds the bytes)."""
    return st.builds(lambda n, ch: (ch * n)[:n], st.sampled_from(sizes), st.sampled_from(["x", "a", " ", "0"]))


def _string(fd: FieldDescriptor, cfg: FuzzConfig, big: bool) -> st.SearchStrategy:
    name = fd.name
    pieces = st.lists(st.one_of(st.sampled_from(_UNICODE + _CONTROL + ["a", "b", "1", " ", "-"]),
                                st.text(max_size=4)), max_size=8).map("".join)
    options = [
        st.just(""), st.sampled_from([" ", "\t", "\n", "  \u3000 "]), pieces, st.text(max_size=20),
        _huge(cfg.huge_bytes if big else cfg.huge_bytes[:2]),
        st.builds(lambda a, bad, b: a.encode() + bad + b.encode(), st.sampled_from(["", "u", "item-"]),
                  st.sampled_from(_BAD_UTF8), st.sampled_from(["", "x"])),
        st.sampled_from(["a" * 256, "é" * 128, "a" * 255 + "é", "q" * 1024, "p" * 64, "p" * 65]),
    ]
    known: tuple[str, ...] = ()
    if name.endswith("user_id"):
        known = cfg.known_users
    elif "item_id" in name:
        known = cfg.known_items
    if known:  # ids the bundle knows, also with a stray space or control character around them
        ids = st.sampled_from(known)
        options += [ids, ids, ids,
                    st.builds(lambda i, a: a + i, ids, st.sampled_from([" ", "\x00", "\u200b"]))]
    if name == "impression_id":
        options += [st.uuids().map(str), st.sampled_from(["a" * 64, "a" * 65, "x_y", "-"])]
    if name == "query":
        options += [st.sampled_from(["magazine", "news", "cooking recipes", "The", "ßtraße", "日本語"])]
    if name == "idempotency_key":
        options += [st.uuids().map(str)]
    return st.one_of(options)


def _int(fd: FieldDescriptor, cfg: FuzzConfig) -> st.SearchStrategy:
    lo, hi = INT64 if fd.type == FieldDescriptor.TYPE_INT64 else INT32
    options = [st.sampled_from([lo, hi, 0, -1, 1]), st.integers(lo, hi), st.integers(-3, 12)]
    if fd.name == "k":
        options += [st.sampled_from([999, 1000, 1001, 10_000]), st.integers(1, 20)]
    if fd.name == "timestamp":
        now = int(cfg.now)
        options += [st.integers(now - 86_400 * 3650, now), st.integers(now, now + 3 * 86_400),
                    st.sampled_from([631_151_999, 631_152_000, 2**62])]
    return st.one_of(options)


def _value(fd: FieldDescriptor, cfg: FuzzConfig, depth: int, big: bool = True) -> st.SearchStrategy:
    """One value of field ``fd``; ``big``: huge strings allowed (one top-level field, not a list entry)."""
    t = fd.type
    if t in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        return _string(fd, cfg, big and depth == 0)
    if t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64):
        return _int(fd, cfg)
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64):
        return st.integers(0, 2**32 - 1 if t == FieldDescriptor.TYPE_UINT32 else UINT_MASK)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        width = 32 if t == FieldDescriptor.TYPE_FLOAT else 64
        return st.one_of(st.floats(width=width), st.sampled_from([0.0, -0.0, 1.0, 5.0, 5.5, 0.5, 1e-45]),
                         st.floats(0, 10, width=width))
    if t == FieldDescriptor.TYPE_ENUM:
        named = [v.number for v in fd.enum_type.values]
        return st.one_of(st.sampled_from(named), st.sampled_from(named), st.integers(*INT32))
    if t == FieldDescriptor.TYPE_MESSAGE:
        return message_values(fd.message_type, cfg, depth + 1)
    raise TypeError(f"no strategy for {fd.full_name} (type {t})")


def _repeated(fd: FieldDescriptor, cfg: FuzzConfig, depth: int) -> st.SearchStrategy:
    one = _value(fd, cfg, depth, big=False)  # huge entries times a long list would be gigabytes
    short = st.lists(one, max_size=cfg.max_short)
    # a long list repeats a couple of drawn entries (10,000 distinct draws would take hypothesis seconds each)
    long = st.builds(lambda a, b, n: [a, b] * (n // 2) + [a] * (n % 2), one, one, st.sampled_from(cfg.long_lengths))
    options = [short, short, short, long] if depth == 0 else [short]
    if fd.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE) or fd.type in _VARINT_TYPES:
        options.append(short.map(lambda xs: ("packed", xs)))
    return st.one_of(options)


def message_values(desc: Descriptor, cfg: FuzzConfig, depth: int = 0) -> st.SearchStrategy:
    """{field name: value} for message ``desc``: each field present or absent, every present field drawn from
    its type's strategy (nested messages recursively)."""
    if not desc.fields:
        return st.just({})
    optional = {fd.name: (_repeated(fd, cfg, depth) if _is_repeated(fd) else _value(fd, cfg, depth))
                for fd in desc.fields}
    return st.fixed_dictionaries({}, optional=optional)


def _plausible(fd: FieldDescriptor, cfg: FuzzConfig) -> st.SearchStrategy:
    """A value a well-behaved client would send for ``fd`` (known ids, small k, recent timestamps, named
    enums), so that a request built from these, with one field fuzzed, gets past validation."""
    t, name = fd.type, fd.name
    if t == FieldDescriptor.TYPE_MESSAGE and fd.message_type.full_name == "prefmine.v1.Rules":
        return _plausible_rules()
    if t == FieldDescriptor.TYPE_MESSAGE:
        return plausible_values(fd.message_type, cfg)
    if t in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        if name.endswith("user_id") and cfg.known_users:
            return st.one_of(st.sampled_from(cfg.known_users), st.just("someone-new"))
        if "item_id" in name and cfg.known_items:
            return st.one_of(st.sampled_from(cfg.known_items), st.just("an-unknown-item"))
        if name in ("impression_id", "idempotency_key"):
            return st.one_of(st.just(""), st.uuids().map(str))
        return st.sampled_from(["home", "magazine", "news weekly", "cooking", "a"])
    if t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64):
        if name == "timestamp":
            return st.integers(int(cfg.now) - 86_400 * 365, int(cfg.now))
        return st.integers(1, 20)
    if t == FieldDescriptor.TYPE_ENUM:
        return st.sampled_from([v.number for v in fd.enum_type.values if v.number != 0])
    if t in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return st.sampled_from([0.0, 1.0, 2.0, 3.0, 4.0, 5.0]) if name == "rating" else st.floats(0, 10)
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    return _value(fd, cfg, 1, big=False)


@st.composite
def _plausible_rules(draw) -> dict:
    """Rules a well-behaved client sends: some filters and boosts, a price range, a pin, a diversity setting with
    what it needs (its fields depend on each other and on k, so field-by-field plausible values would rarely be
    valid)."""
    names = st.sampled_from(["Magazine Subscriptions", "News & Political Commentary", "Hearst Magazines", "a"])
    out = draw(st.fixed_dictionaries({}, optional={
        "categories": st.lists(names, min_size=1, max_size=2), "brands": st.lists(names, min_size=1, max_size=2),
        "kinds": st.lists(st.sampled_from(["product", "article"]), min_size=1, max_size=1),
        "include_unavailable": st.booleans(),
        "boosts": st.lists(st.fixed_dictionaries({"key": names.map(lambda n: f"category:{n}"),
                                                  "value": st.floats(-3, 3)}), min_size=1, max_size=2),
        "pins": st.lists(st.fixed_dictionaries({"item_id": st.just("an-unknown-item"), "position": st.just(0)}),
                         min_size=1, max_size=1),
        "kind_quota": st.lists(st.fixed_dictionaries({"key": st.sampled_from(["article", "video"]),
                                                      "value": st.integers(1, 3)}), min_size=1, max_size=1),
        "freshness_half_life_s": st.sampled_from([3600.0, 604800.0])}))
    if draw(st.booleans()):
        lo = draw(st.floats(0, 10))
        out.update({"price_min": lo, "price_max": draw(st.floats(lo, 20))})
    diversity = draw(st.sampled_from([0, 1, 2]))
    out["diversity"] = diversity
    if diversity == 1:
        out["mmr_lambda"] = draw(st.floats(0, 1))
    elif diversity == 2:
        out["category_cap"] = draw(st.integers(1, 3))
    return out


def plausible_values(desc: Descriptor, cfg: FuzzConfig) -> st.SearchStrategy:
    """{field name: value} with every field plausible (repeated fields: 0..3 entries)."""
    return st.fixed_dictionaries({fd.name: st.lists(_plausible(fd, cfg), max_size=3) if _is_repeated(fd)
                                  else _plausible(fd, cfg) for fd in desc.fields})


def _wire_garbage(desc: Descriptor, valid: bytes) -> st.SearchStrategy:
    """Bytes that are not a well-formed ``desc``: random bytes, a truncated encoding, a field number the message
    does not have (which must be ignored), a known field with the wrong wire type."""
    numbers = [fd.number for fd in desc.fields] or [1]
    return st.one_of(
        st.binary(max_size=64),
        st.integers(0, max(len(valid) - 1, 0)).map(lambda n: valid[:n] + b"\x0a\xff"),
        st.builds(lambda n, p: valid + length_delimited(n, p), st.integers(100, 2**29 - 1), st.binary(max_size=16)),
        st.builds(lambda n, wt: valid + tag(n, wt) + b"\x01\x02\x03\x04\x05\x06\x07\x08",
                  st.sampled_from(numbers), st.sampled_from([0, 1, 3, 4, 5, 6, 7])),
    )


def requests_for(rpc: str, cfg: FuzzConfig | None = None) -> st.SearchStrategy:
    """Strategy of ``FuzzRequest`` for one RPC of the Recommender service (its request message's descriptor)."""
    cfg = cfg or FuzzConfig()
    desc = SERVICE.methods_by_name[rpc].input_type
    fields = message_values(desc, cfg).map(lambda v: FuzzRequest(rpc, encode(desc, v)))

    @st.composite
    def garbage(draw):
        base = draw(fields).data
        return FuzzRequest(rpc, draw(_wire_garbage(desc, base)), wire_garbage=True)

    @st.composite
    def mutated(draw):  # a plausible request with one field (or none) drawn from the fuzz strategies instead
        values = dict(draw(plausible_values(desc, cfg)))
        fuzzed = draw(message_values(desc, cfg))
        if fuzzed and desc.fields:
            name = draw(st.sampled_from(sorted(fuzzed)))
            values[name] = fuzzed[name]
        return FuzzRequest(rpc, encode(desc, values))

    @st.composite
    def either(draw):
        pick = draw(st.sampled_from(range(cfg.raw_share)))
        return draw(garbage()) if pick == 0 else draw(mutated()) if pick % 2 else draw(fields)

    return either()


# -- drawing outside a test ---------------------------------------------------------------------------------------
def for_each_example(strategy: st.SearchStrategy, n: int, fn: Callable, seed_: int = 0) -> int:
    """Draw up to ``n`` examples of ``strategy`` (seeded: the same seed draws the same examples) and call ``fn``
    on each as it is drawn; returns how many were drawn. A plain ``@given`` run without shrinking or an example
    database, so it works in a script; an exception from ``fn`` stops the run and propagates (unshrunk)."""
    count = 0

    @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate], derandomize=False,
              suppress_health_check=list(HealthCheck), print_blob=False)
    @seed(seed_)
    @given(strategy)
    def run(example):
        nonlocal count
        count += 1
        fn(example)

    run()
    return count


# -- the invariant on rejections -------------------------------------------------------------------------------
_PATH = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\[\d+\])?(?:\.[A-Za-z_][A-Za-z0-9_]*(?:\[\d+\])?)*)(?=[\s:,]|$)")


def named_field(desc: Descriptor, details: str) -> str | None:
    """The field path the details start with (``events[3].type``), if it is a real path of message ``desc``."""
    m = _PATH.match(details or "")
    if not m:
        return None
    d: Descriptor | None = desc
    for part in m.group(1).split("."):
        name = part.split("[", 1)[0]
        if d is None or name not in d.fields_by_name:
            return None
        fd = d.fields_by_name[name]
        if "[" in part and not _is_repeated(fd):
            return None
        d = fd.message_type if fd.type == FieldDescriptor.TYPE_MESSAGE else None
    return m.group(1)


def well_formed(desc: Descriptor, data: bytes) -> bool:
    """Whether ``data`` is well-formed protobuf wire format for ``desc``: every tag and length complete, field
    numbers in 1..2**29-1, each known sub-message well-formed in turn, no groups. UTF-8 is not checked (a string that is
    not UTF-8 is a bad field value, which the server must name)."""
    i, n = 0, len(data)

    def read_varint() -> int | None:
        nonlocal i
        value, shift = 0, 0
        while i < n and shift < 70:
            b = data[i]
            i += 1
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
        return None

    while i < n:
        key = read_varint()
        if key is None or not 0 < key >> 3 <= MAX_FIELD_NUMBER or key >> 32:
            return False
        number, wire_type = key >> 3, key & 7
        fd = desc.fields_by_number.get(number)
        if wire_type == 0:
            if read_varint() is None:
                return False
        elif wire_type in (1, 5):
            i += 8 if wire_type == 1 else 4
            if i > n:
                return False
        elif wire_type == 2:
            size = read_varint()
            if size is None or i + size > n:
                return False
            if fd is not None and fd.type == FieldDescriptor.TYPE_MESSAGE and not well_formed(
                    fd.message_type, data[i:i + size]):
                return False
            i += size
        else:
            return False
    return True


def rejection_names_field(rpc: str, data: bytes, details: str) -> bool:
    """The invariant on INVALID_ARGUMENT: the details name a field of the request; only bytes that do not parse
    as the message at all may instead be answered "request is not a valid <Message>"."""
    desc = SERVICE.methods_by_name[rpc].input_type
    if named_field(desc, details):
        return True
    return details.startswith(f"request is not a valid {desc.name}") and not well_formed(desc, data)
