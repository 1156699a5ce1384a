"""The shared views behave like the list, tuple and dict they stand in for.

Property-style: seeded random sequences of operations run on a real container and on its
view side by side, and every result and the whole state are compared after each step. No
worker processes here (tests/test_shared_dataset.py has those).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import decimal
import enum
import fractions
import os
import pathlib
import pickle
import random
import uuid
from collections import namedtuple

import numpy as np
import pytest

from loader import SharedDict, SharedList, SharedTuple
from loader.ipc.image import ImageBuilder, ImageGoneError
from loader.ipc.packing import NotPlain, key_hash, lookup_hash, pack_mapping, pack_sequence

from helpers import frozen_heap  # noqa: F401 (autouse fixture)

SEEDS = range(4)
STEPS = 300  # operations per seed and container

Pair = namedtuple("Pair", "a b")


@dataclasses.dataclass
class Box:
    x: int
    y: str


class Color(enum.Enum):
    RED = 1


class ByIdentity:
    """Compared by identity: not a plain value."""


def _value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(9 if depth < 2 else 5)
    if kind == 0:
        return rng.randrange(-10**6, 10**6)
    if kind == 1:
        return rng.random()
    if kind == 2:
        return "".join(rng.choice("abcé€🙂") for _ in range(rng.randrange(6)))
    if kind == 3:
        return rng.choice([None, True, False, b"\x93bytes", 2**70])
    if kind == 4:
        return rng.choice([Pair(1, "x"), Box(3, "y"), Color.RED, pathlib.Path("/a/b"),
                           datetime.date(2020, 1, 2), np.int64(7), complex(1, 2)])
    if kind == 5:
        return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 6:
        return tuple(_value(rng, depth + 1) for _ in range(rng.randrange(4)))
    if kind == 7:
        return {str(i): _value(rng, depth + 1) for i in range(rng.randrange(4))}
    return {rng.randrange(100), rng.randrange(100)}


def _key(rng: random.Random):
    kind = rng.randrange(6)
    if kind == 0:
        return rng.randrange(50)
    if kind == 1:
        return f"k{rng.randrange(50)}"
    if kind == 2:
        return (rng.randrange(5), f"t{rng.randrange(5)}")
    if kind == 3:
        return float(rng.randrange(50)) + rng.choice([0.0, 0.5])
    if kind == 4:
        return rng.choice([None, b"b1", b"b2", True, False])
    return f"long-key-{rng.randrange(10**6)}"


# ---------------------------------------------------------------- sequences


def _list_op(rng: random.Random, n: int, structural: bool = True):
    """A (name, function) applied alike to a list and a SharedList; without
    ``structural``, only reads and item assignments (a SharedList's overlay)."""
    i = rng.randrange(-n - 2, n + 2) if n else rng.randrange(-2, 3)
    j = rng.randrange(-n - 2, n + 2) if n else 0
    step = rng.choice([None, 1, 2, -1, -3])
    value = _value(rng)
    ops = [
        ("getitem", lambda s: s[i]),
        ("slice", lambda s: s[i:j:step]),
        ("len", len),
        ("list", list),
        ("reversed", lambda s: list(reversed(s))),
        ("contains", lambda s: value in s),
        ("index", lambda s: s.index(value)),
        ("count", lambda s: s.count(value)),
        ("bool", bool),
        ("eq-list", lambda s: s == [value]),
        ("add", lambda s: s + [value]),
        ("radd", lambda s: [value] + s),
        ("mul", lambda s: s * 2),
        ("setitem", lambda s: s.__setitem__(i, value)),
        ("setitem", lambda s: s.__setitem__(i, value)),
        ("append", lambda s: s.append(value)),
        ("insert", lambda s: s.insert(i, value)),
        ("delitem", lambda s: s.__delitem__(i)),
        ("pop", lambda s: s.pop(i)),
        ("extend", lambda s: s.extend([value, value])),
        ("iadd", lambda s: s.__iadd__([value])),
        ("remove", lambda s: s.remove(value)),
        ("reverse", lambda s: s.reverse()),
        ("slice-set", lambda s: s.__setitem__(slice(i, j), [value])),
        ("sort", lambda s: s.sort(key=repr)),
    ]
    if not structural:
        return rng.choice(ops[:15])
    return rng.choice(ops[:13] * 3 + ops[13:])  # mostly reads, as a dataset does


def _outcome(fn, obj):
    try:
        return "ok", fn(obj)
    except Exception as exc:
        return "raised", type(exc)


@pytest.mark.parametrize("seed", SEEDS)
def test_list_view_matches_list(seed):
    rng = random.Random(seed)
    items = [_value(rng) for _ in range(rng.randrange(0, 60))]
    real, view = list(items), SharedList(items)
    for step in range(STEPS):
        # first the overlay (reads and item assignments), then the view's own list
        name, fn = _list_op(rng, len(real), structural=step >= STEPS // 2)
        expected, got = _outcome(fn, real), _outcome(fn, view)
        if expected[0] == "ok" and got[0] == "ok" and isinstance(got[1], SharedList):
            got = ("ok", list(got[1]))  # in-place operators return the view itself
        if expected[0] == "ok" and expected[1] is real:
            expected = ("ok", list(real))
        assert got == expected, name
        assert len(view) == len(real) and list(view) == real and view == real, name


@pytest.mark.parametrize("seed", SEEDS)
def test_tuple_view_matches_tuple(seed):
    rng = random.Random(seed)
    items = tuple(_value(rng) for _ in range(rng.randrange(1, 60)))
    view = SharedTuple(items)
    assert view == items and items == view and not view != items
    assert hash(SharedTuple((1, "a", (2.5,)))) == hash((1, "a", (2.5,)))
    for _ in range(STEPS):
        name, fn = _list_op(rng, len(items))
        if name in ("add", "radd"):
            fn = (lambda s: s + (1,)) if name == "add" else (lambda s: (1,) + s)
        if name == "eq-list":
            fn = lambda s: s == (items[0],)  # noqa: E731
        expected, got = _outcome(fn, items), _outcome(fn, view)
        assert got == expected, name
    assert view == items


def test_list_and_tuple_views_compare_like_their_types():
    assert SharedList([1, 2]) != (1, 2) and SharedTuple([1, 2]) != [1, 2]
    assert SharedList([1, 2]) == SharedList([1, 2]) and SharedTuple([1]) == SharedTuple([1])
    assert SharedList([1, 2]) < [1, 3] and SharedTuple([1, 2]) >= (1, 2)
    with pytest.raises(TypeError):
        SharedList([1]) < (1,)  # noqa: B015
    with pytest.raises(TypeError, match="unhashable"):
        hash(SharedList([1]))
    with pytest.raises(TypeError, match="tuple.*item assignment|does not support"):
        SharedTuple([1])[0] = 2
    with pytest.raises(TypeError, match="list indices must be integers or slices, not str"):
        SharedList([1])["a"]
    with pytest.raises(IndexError, match="list index out of range"):
        SharedList([1])[1]
    assert SharedList([1, 2, 3])[np.int64(1)] == 2


def test_an_element_read_twice_is_two_equal_objects():
    view = SharedList([{"a": [1, 2]}] * 2000)
    first, again = view[0], view[0]
    assert first == again and first is not again
    first["a"].append(3)  # changes the copy that was read, not the view
    assert view[0] == {"a": [1, 2]}
    view[0] = first  # an assignment is kept, and is the same object on every read
    assert view[0] is first


def test_packed_numbers_keep_their_types():
    ints, floats = SharedList(range(5000)), SharedTuple([0.5 * i for i in range(5000)])
    assert type(ints[7]) is int and ints[7] == 7 and ints[-1] == 4999
    assert type(floats[3]) is float and floats[3] == 1.5
    assert list(SharedList([True, False, 1])) == [True, False, 1]
    assert [type(x) for x in SharedList([True, 1])] == [bool, int]
    assert SharedList([2**80, 1])[0] == 2**80  # beyond int64: pickled, not packed
    scalars = [np.uint64(2**64 - 1), np.float16(0.1), np.complex64(1 + 2j), np.bool_(True),
               np.int8(-3), np.float32(np.nan), np.float64(-0.0), np.datetime64("2020-01")]
    for got, want in zip(SharedList([{"x": s} for s in scalars] * 200), scalars * 200):
        got = got["x"]
        assert type(got) is type(want) and got.tobytes() == want.tobytes()


def test_views_pickle_and_copy_with_their_writes():
    view = SharedList(range(3000))
    view[5] = "five"
    clone = pickle.loads(pickle.dumps(view))
    assert clone[5] == "five" and clone[6] == 6 and clone == view
    deep = copy.deepcopy(view)
    deep.append("end")
    assert deep[-1] == "end" and len(view) == 3000
    mapping = SharedDict({i: str(i) for i in range(3000)})
    mapping["new"] = 1
    del mapping[0]
    again = pickle.loads(pickle.dumps(mapping))
    assert again == mapping and "new" in again and 0 not in again


# ---------------------------------------------------------------- mappings


def _dict_op(rng: random.Random, keys: list):
    key = rng.choice(keys) if keys and rng.random() < 0.7 else _key(rng)
    value = _value(rng)
    other = {_key(rng): _value(rng) for _ in range(2)}
    ops = [
        ("getitem", lambda d: d[key]),
        ("get", lambda d: d.get(key, "default")),
        ("contains", lambda d: key in d),
        ("len", len),
        ("keys", lambda d: list(d.keys())),
        ("values", lambda d: list(d.values())),
        ("items", lambda d: list(d.items())),
        ("iter", list),
        ("reversed", lambda d: list(reversed(d))),
        ("key-in-keys", lambda d: key in d.keys()),
        ("items-in", lambda d: (key, value) in d.items()),
        ("eq", lambda d: d == {key: value}),
        ("or", lambda d: d | other),
        ("ror", lambda d: other | d),
        ("copy", lambda d: d.copy()),
        ("setitem", lambda d: d.__setitem__(key, value)),
        ("setitem", lambda d: d.__setitem__(key, value)),
        ("delitem", lambda d: d.__delitem__(key)),
        ("pop", lambda d: d.pop(key)),
        ("pop-default", lambda d: d.pop(key, None)),
        ("popitem", lambda d: d.popitem()),
        ("setdefault", lambda d: d.setdefault(key, value)),
        ("update", lambda d: d.update(other)),
        ("ior", lambda d: d.__ior__(other)),
    ]
    if rng.random() < 0.01:
        return "clear", lambda d: d.clear()
    return rng.choice(ops[:15] * 3 + ops[15:])


@pytest.mark.parametrize("seed", SEEDS)
def test_dict_view_matches_dict(seed):
    rng = random.Random(seed)
    real = {_key(rng): _value(rng) for _ in range(rng.randrange(0, 80))}
    view = SharedDict(real)
    real = dict(real)
    for _ in range(STEPS):
        name, fn = _dict_op(rng, list(real))
        expected, got = _outcome(fn, real), _outcome(fn, view)
        if got[0] == "ok" and got[1] is view:
            got = ("ok", real)  # |= returns the view itself
        assert got == expected, name
        assert list(view.items()) == list(real.items()) and view == real, name
        assert len(view) == len(real), name


def test_dict_lookups_follow_python_equality():
    view = SharedDict({1: "one", "a": "A", (2, "b"): "tuple", 2.5: "float", None: "none",
                       b"x": "bytes", **{f"k{i}": i for i in range(2000)}})
    assert view[1.0] == view[True] == view[np.int64(1)] == "one"
    assert view[np.float64(2.5)] == "float" and view[(2, "b")] == "tuple"
    assert view[None] == "none" and view[b"x"] == "bytes" and view["k1999"] == 1999
    assert 2 not in view and "b" not in view and view.get(b"a") is None

    class Key(str):
        pass

    assert view[Key("a")] == "A"
    with pytest.raises(TypeError, match="unhashable"):
        view[[1]]
    with pytest.raises(KeyError):
        view["nope"]
    assert key_hash("é") == lookup_hash(Key("é")) and key_hash(1) == key_hash(1.0)


def test_dict_view_refuses_keys_without_a_stable_hash():
    with pytest.raises(TypeError, match="no stable hash"):
        SharedDict({frozenset({1}): 1})
    with pytest.raises(TypeError, match="no stable hash"):
        SharedDict({float("nan"): 1})


# ---------------------------------------------------------------- arrays, packing rules


@pytest.mark.parametrize("shapes", [[(64, 64, 4)] * 4, [(64, 64, 4), (65, 64, 4)] * 2,
                                    [(3,)] * 4])
def test_arrays_come_back_zero_copy_and_writable(shapes):
    """Same-shaped arrays (any size) and arrays of 64 KiB or more are views."""
    images = SharedList([np.full(shape, i, np.float32) for i, shape in enumerate(shapes)])
    a, b = images[2], images[2]
    assert np.shares_memory(a, b)  # both are views of the one mapping: no copy was made
    assert a.flags.writeable and not a.flags.owndata and a.shape == shapes[2]
    a.flat[0] = -1.0  # this process's private page; its later reads see it, as in a copy
    assert images[2].flat[0] == -1.0 and images[1].flat[0] == 1.0 and (images[3] == 3).all()


def test_small_arrays_inside_items_are_copies():
    items = SharedList([{"a": np.arange(3)}, {"a": np.arange(4)}] * 2)
    assert not np.shares_memory(items[0]["a"], items[0]["a"])


def test_strict_packing_takes_plain_values_only():
    builder = ImageBuilder()
    try:
        plain = [{"p": pathlib.Path("x"), "pair": Pair(1, 2), "box": Box(1, "a"),
                  "color": Color.RED, "when": datetime.datetime(2020, 1, 1),
                  "n": np.float32(1.5), "a": np.arange(4), "t": int,
                  "d": decimal.Decimal("1.5"), "f": fractions.Fraction(1, 3),
                  "u": uuid.UUID(int=5), "dt": datetime.timedelta(1)}] * 10
        pack_sequence(builder, plain, strict=True, oob=True)
        for bad in ([ByIdentity()], [lambda: 1], [{"nested": [ByIdentity()]}],
                    [np.array([object()], dtype=object)]):
            with pytest.raises(NotPlain):
                pack_sequence(builder, bad * 10, strict=True, oob=True)
        with pytest.raises(NotPlain, match="large arrays"):
            pack_sequence(builder, [np.zeros(1 << 17, np.uint8)], strict=True, oob=False)
        with pytest.raises(NotPlain, match="no stable hash"):
            pack_mapping(builder, {frozenset(): 1}, strict=True, oob=True)
        assert pack_sequence(builder, [ByIdentity()], strict=False, oob=True)["n"] == 1
    finally:
        builder.abort()


def test_unpicklable_item_is_named():
    with pytest.raises(TypeError, match="item 2 cannot be pickled"):
        SharedList([1, 2, lambda: 3])


def test_a_view_whose_image_is_gone_says_so():
    view = SharedList(range(2000))
    blob = pickle.dumps(view)
    fd = view._where[0].fd
    del view  # the image's only holder: its descriptor closes
    assert not os.path.exists(f"/proc/self/fd/{fd}") or \
        "loader" not in os.readlink(f"/proc/self/fd/{fd}")
    with pytest.raises(ImageGoneError, match="is gone"):
        pickle.loads(blob)
