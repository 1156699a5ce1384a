"""default_collate, default_convert and the collate map: torch's element and container
rules, checked against ``torch.utils.data`` itself. The numpy face (``collate_arrays``,
``convert_arrays``: numpy arrays where torch builds tensors, tensors where the samples hold
tensors) is checked case by case; the public functions, with torch in use as here, must
give exactly torch's tensors for the same cases."""

import collections
import types

import numpy as np
import pytest
import torch
import torch.utils.data as tud
from torch.utils.data._utils import collate as torch_collate

import loader
from loader.collate import (
    collate,
    collate_arrays,
    convert_arrays,
    default_collate,
    default_collate_fn_map,
    default_convert,
)

from helpers import CustomDict, CustomList, Opaque, Point, assert_same, raised

Batch = collections.namedtuple("Batch", ["data", "label", "values"])


class FrozenMapping(collections.abc.Mapping):
    """A read-only mapping: collate rebuilds it with ``type(elem)(dict)``."""

    def __init__(self, data):
        self._data = dict(data)

    def __getitem__(self, key):
        return self._data[key]

    def __iter__(self):
        return iter(self._data)

    def __len__(self):
        return len(self._data)


# --- default_collate against torch ------------------------------------------------------

NUMPY_SCALAR_TYPES = [np.float64, np.float32, np.float16, np.int64, np.int32, np.int16,
                      np.int8, np.uint8, np.uint16, np.uint32, np.uint64, np.bool_,
                      np.complex64, np.complex128]

COLLATE_CASES = {
    "ints": lambda: [1, 2, -1],
    "floats": lambda: [1.1, 2.3, -0.9],
    "bools": lambda: [True, False],
    "ints_then_bool": lambda: [1, True],
    "bool_then_int": lambda: [True, 1],
    "int_then_float": lambda: [1, 2.5],
    "bool_then_float": lambda: [True, 2.5],
    "int_then_complex": lambda: [1, 2j],
    "float_then_int": lambda: [1.5, 2],
    "int64_limits": lambda: [2**63 - 1, -(2**63)],
    "bytes": lambda: [b"a", b"b"],
    "array_float64": lambda: [np.ones((2, 3, 4)) * i for i in range(12)],
    "array_0d": lambda: [np.array(1.5), np.array(2.5)],
    "array_int8": lambda: [np.arange(3, dtype=np.int8), np.arange(3, dtype=np.int8)],
    "array_bool": lambda: [np.array([True, False]), np.array([False, False])],
    "array_non_contiguous": lambda: [np.arange(12.0).reshape(3, 4).T, np.ones((4, 3))],
    "arrays_int64_float32": lambda: [np.arange(3), np.ones(3, np.float32)],
    "arrays_int8_uint8": lambda: [np.arange(3, dtype=np.int8), np.arange(3, dtype=np.uint8)],
    "arrays_bool_float16": lambda: [np.ones(2, bool), np.ones(2, np.float16)],
    "arrays_float64_complex64": lambda: [np.ones(2), np.ones(2, np.complex64)],
    "scalars_f32_f64": lambda: [np.float32(1), np.float64(2)],
    "scalars_i16_i64": lambda: [np.int16(1), np.int64(2)],
    "scalars_f16_i64": lambda: [np.float16(1), np.int64(2)],
    "scalars_f32_python_float": lambda: [np.float32(1), 2.5],
    "scalars_int8_uint8": lambda: [np.int8(1), np.uint8(2)],
    "scalar_f64_is_float_subclass": lambda: [np.float64(1.5), np.float64(2.5)],
    "dict": lambda: [{"a": 1, "b": 2.0}, {"a": 3, "b": 4.0}],
    "nested_dict": lambda: [{"t": np.full((4, 2), i), "d": {"n": i, "s": str(i)}}
                            for i in range(3)],
    "dict_of_str": lambda: [{"a": "x"}, {"a": "y"}],
    "ordered_dict": lambda: [collections.OrderedDict(b=i, a=-i) for i in range(3)],
    "defaultdict": lambda: [collections.defaultdict(list, a=i) for i in range(3)],
    "custom_dict": lambda: [CustomDict(a=i, b=[i, i]) for i in range(3)],
    "empty_custom_dict": lambda: [CustomDict(), CustomDict()],
    "frozen_mapping": lambda: [FrozenMapping({"a": i}) for i in range(3)],
    "mapping_proxy": lambda: [types.MappingProxyType({"a": i}) for i in range(3)],
    "namedtuple": lambda: [Point(i, float(i)) for i in range(3)],
    "namedtuple_with_str": lambda: [Point(i, str(i)) for i in range(3)],
    "nested_namedtuple": lambda: [Batch(Point(i, -i), str(i), np.arange(3) * i)
                                  for i in range(4)],
    "tuple": lambda: [(i, float(i)) for i in range(3)],
    "tuple_with_str": lambda: [("a", 1), ("b", 2)],
    "list_with_str": lambda: [["a", 1], ["b", 2]],
    "list_with_bytes": lambda: [[b"a", 1], [b"b", 2]],
    "custom_list": lambda: [CustomList([1, 2, 3]), CustomList([4, 5, 6])],
    "range": lambda: [range(2), range(2)],
    "tuple_of_arrays": lambda: [(np.arange(4) + i, np.int64(i)) for i in range(5)],
    "list_in_dict_in_list": lambda: [[{"a": [i, i + 1]}] for i in range(3)],
    "tensors": lambda: [torch.arange(6).reshape(2, 3) + i for i in range(3)],
    "tensor_bfloat16": lambda: [torch.ones(2, dtype=torch.bfloat16)] * 3,
}
COLLATE_CASES.update({f"numpy_scalar_{t.__name__}": (lambda t=t: [t(1), t(0), t(1)])
                      for t in NUMPY_SCALAR_TYPES if t is not np.uint64})


def failures(cases, check):
    """Run ``check(name, factory)`` for every case; the failures, by case name. (One test
    for a whole table keeps the suite fast: the leak fixture costs a gc pass per test.)"""
    failed = {}
    for name, factory in cases.items():
        try:
            check(name, factory)
        except Exception as exc:  # noqa: BLE001  (report every case, whatever broke)
            failed[name] = f"{type(exc).__name__}: {str(exc).splitlines()[:1]}"
    return failed


def test_collate_arrays_matches_torch():
    """Same values, dtypes and containers as torch; arrays unless the samples hold tensors."""
    def check(name, factory):
        arrays = "torch" if name.startswith("tensor") else "numpy"
        assert_same(collate_arrays(factory()), tud.default_collate(factory()), arrays,
                    exact_tensor_type=False)

    assert failures(COLLATE_CASES, check) == {}


def test_default_collate_is_torchs_where_torch_is_in_use():
    """Called directly with torch imported (as here): exactly torch's result, tensors
    (of type torch.Tensor) where torch makes them, for every case of the table."""
    def check(name, factory):
        assert_same(default_collate(factory()), tud.default_collate(factory()), "torch")

    assert failures(COLLATE_CASES, check) == {}


def test_default_convert_is_torchs_where_torch_is_in_use():
    def check(name, factory):
        assert_same(default_convert(factory()), tud.default_convert(factory()), "torch")

    assert failures(CONVERT_CASES, check) == {}


def test_a_users_collate_fn_can_call_float_on_default_collate():
    """The pattern that broke: a collate_fn that post-processes default_collate's tensors."""
    def collate_fn(batch):
        x, y = default_collate(batch)
        return x.float() / 255, y

    batch = [(np.full(3, i, np.uint8), i) for i in range(4)]
    x, y = collate_fn(batch)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x, tud.default_collate(batch)[0].float() / 255)


def test_tensor_and_number_fields_collate_each_their_own_way():
    """A tensor field stacks into a tensor, an int field beside it into an array."""
    batch = [(torch.ones(2) * i, i) for i in range(3)]
    ours, theirs = collate_arrays(batch), tud.default_collate(batch)
    assert type(ours) is list
    assert_same(ours[0], theirs[0], "torch", exact_tensor_type=False)
    assert_same(ours[1], theirs[1], "numpy", exact_tensor_type=False)


def test_default_collate_dtype():
    """torch's test_default_collate_dtype: int -> int64, float -> float64, bool -> bool."""
    collated = collate_arrays([1, 2, -1])
    assert collated.dtype == np.int64 and collated.tolist() == [1, 2, -1]
    collated = collate_arrays([1.1, 2.3, -0.9])
    assert collated.dtype == np.float64 and collated.tolist() == [1.1, 2.3, -0.9]
    collated = collate_arrays([True, False])
    assert collated.dtype == np.bool_ and collated.tolist() == [True, False]
    arr = ["a", "b", "c"]
    assert collate_arrays(arr) is arr  # strings are passed through as the same list


def test_numpy_scalars_keep_their_dtype():
    for dtype in NUMPY_SCALAR_TYPES:
        batch = collate_arrays([dtype(1), dtype(0)])
        assert type(batch) is np.ndarray and batch.shape == (2,)
        assert batch.dtype == np.dtype(dtype), dtype


def test_numpy_arrays_stack_along_a_new_first_axis():
    """torch's test_numpy: (2, 3, 4) float64 samples -> a (12, 2, 3, 4) float64 batch."""
    samples = [np.ones((2, 3, 4)) * i for i in range(12)]
    batch = collate_arrays(samples)
    assert type(batch) is np.ndarray and batch.dtype == np.float64
    assert batch.shape == (12, 2, 3, 4)
    assert all((batch[i] == i).all() for i in range(12))
    samples[0][:] = 99  # the batch is a copy, not a view of a sample
    assert (batch[0] == 0).all()


def test_default_collate_mapping_keep_type():
    collated = collate_arrays([CustomDict(), CustomDict()])
    assert type(collated) is CustomDict and collated == CustomDict()
    collated = collate_arrays([collections.defaultdict(int, a=1)] * 2)
    assert type(collated) is collections.defaultdict and collated.default_factory is int


def test_default_collate_sequence_keep_type():
    collated = collate_arrays([CustomList([1, 2, 3]), CustomList([4, 5, 6])])
    assert type(collated) is CustomList
    assert [c.tolist() for c in collated] == [[1, 4], [2, 5], [3, 6]]


def test_default_collate_sequence_dont_keep_type():
    collated = collate_arrays([range(2), range(2)])
    assert type(collated) is list and [c.tolist() for c in collated] == [[0, 0], [1, 1]]


def test_tuples_become_lists_but_their_str_fields_stay_tuples():
    """torch's quirk, kept: a tuple sample becomes a list, and a str (or bytes) field of a
    tuple, list or namedtuple comes back as the tuple zip() built."""
    collated = collate_arrays([("a", 1), ("b", 2)])
    assert type(collated) is list and collated[0] == ("a", "b")
    collated = collate_arrays([Point(1, "a"), Point(2, "b")])
    assert type(collated) is Point and collated.y == ("a", "b")
    collated = collate_arrays([{"s": "a"}, {"s": "b"}])
    assert collated["s"] == ["a", "b"]  # a mapping's field is a list


def test_mixed_number_types_follow_torch_promotion():
    """Ints with floats give torch's default float32, not numpy's float64, and an integer
    array stacked with a float32 one gives float32; nothing is truncated."""
    collated = collate_arrays([1, 2.5])
    assert collated.dtype == np.float32 and collated.tolist() == [1.0, 2.5]
    collated = collate_arrays([np.arange(2), np.array([0.5, 1.5], np.float32)])
    assert collated.dtype == np.float32 and collated.tolist() == [[0, 1], [0.5, 1.5]]


def test_default_collate_bad_numpy_types():
    arr = np.array(["a", "b", "c"])
    assert collate_arrays(arr) is arr  # a str array as the batch itself: a no-op
    for bad in (np.array([[["a", "b", "c"]]]), np.array([object(), object(), object()]),
                np.array([[[object(), object(), object()]]], dtype=object)):
        assert raised(default_collate, bad) == raised(tud.default_collate, bad)
        assert raised(default_collate, bad)[0] is TypeError


def test_default_collate_numpy_memmap(tmp_path):
    arr = np.array([[0, 1], [2, 3], [4, 5], [6, 7]])
    path = tmp_path / "memmap.bin"
    writer = np.memmap(path, dtype=arr.dtype, mode="w+", shape=arr.shape)
    writer[:] = arr
    writer.flush()
    del writer
    reader = np.memmap(path, dtype=arr.dtype, mode="r", shape=arr.shape)
    batch = collate_arrays(list(reader))
    assert type(batch) is np.ndarray and batch.tolist() == arr.tolist()
    del reader


def test_default_collate_bad_sequence_type():
    batch = [["X"], ["X", "X"]]
    for b in (batch, batch[::-1]):
        assert raised(default_collate, b) == raised(tud.default_collate, b)
        assert raised(default_collate, b) == (
            RuntimeError, "each element in list of batch should be of equal size")


ERROR_CASES = {
    "none": lambda: [None, None],
    "object": lambda: [object()],
    "nested_object": lambda: [{"a": [object()]}],
    "datetime_scalar": lambda: [np.datetime64("2020-01-01")] * 2,
    "str_arrays": lambda: [np.array(["a"]), np.array(["b"])],
    "bytes_arrays": lambda: [np.array([b"a"]), np.array([b"b"])],
    "object_arrays": lambda: [np.array([None], dtype=object)] * 2,
    "array_shapes_differ": lambda: [np.zeros(2), np.zeros(3)],
    "array_shapes_differ_later": lambda: [np.zeros((2, 2))] * 3 + [np.zeros((2, 1))],
    "tensor_shapes_differ": lambda: [torch.zeros(2), torch.zeros(3)],
    "tensor_then_array": lambda: [torch.zeros(1), np.zeros(1)],
    "ragged_tuples": lambda: [(1,), (1, 2)],
    "sparse_tensors": lambda: [torch.zeros(2).to_sparse()] * 2,
    "dict_missing_key": lambda: [{"a": 1}, {"b": 1}],
}


def test_default_collate_errors_match_torch():
    def check(name, factory):
        assert raised(default_collate, factory()) == raised(tud.default_collate, factory())

    assert failures(ERROR_CASES, check) == {}


def test_collate_error_names_the_type():
    assert raised(default_collate, [None]) == (
        TypeError, "default_collate: batch must contain tensors, numpy arrays, numbers, "
                   "dicts or lists; found <class 'NoneType'>")


def test_default_collate_in_main_process_uses_plain_memory():
    """Outside a worker no allocator is installed: batches are ordinary, writable arrays."""
    batch = collate_arrays([np.zeros(3), np.ones(3)])
    assert batch.flags.writeable and batch.flags.owndata and batch.base is None


# --- deliberate differences -------------------------------------------------------------


def test_dtypes_torch_cannot_hold_are_collated_by_numpy():
    """torch refuses datetime64 and longdouble arrays (TypeError); numpy can stack them."""
    days = [np.array(["2020-01-01"], dtype="datetime64[D]")] * 2
    with pytest.raises(TypeError):
        tud.default_collate(days)
    batch = collate_arrays(days)
    assert batch.dtype == np.dtype("datetime64[D]") and batch.shape == (2, 1)


def test_uint64_scalars_collate():
    """torch.as_tensor cannot take a list of numpy uint64 scalars (TypeError); numpy can."""
    assert raised(tud.default_collate, [np.uint64(1), np.uint64(2)])[0] is TypeError
    batch = collate_arrays([np.uint64(1), np.uint64(2**64 - 1)])
    assert batch.dtype == np.uint64 and batch.tolist() == [1, 2**64 - 1]


def test_int_beyond_int64_is_refused():
    """torch raises ValueError ("Overflow when unpacking long long"); we raise numpy's
    OverflowError: either way nothing is silently wrapped."""
    assert raised(tud.default_collate, [2**64, 1])[0] is ValueError
    assert raised(default_collate, [2**64, 1])[0] is OverflowError


# --- default_convert --------------------------------------------------------------------

CONVERT_CASES = {
    "int": lambda: 1,
    "float": lambda: 1.5,
    "bool": lambda: True,
    "str": lambda: "s",
    "bytes": lambda: b"b",
    "none": lambda: None,
    "object_scalar_kept": lambda: 3 + 4j,
    "np_float32": lambda: np.float32(1.5),
    "np_int64": lambda: np.int64(3),
    "np_bool": lambda: np.bool_(True),
    "np_uint8": lambda: np.uint8(7),
    "np_str": lambda: np.str_("a"),
    "array": lambda: np.array([1, 2]),
    "array_0d": lambda: np.array(3),
    "array_complex": lambda: np.array([1 + 2j]),
    "tuple": lambda: (1, np.int32(2)),
    "namedtuple": lambda: Point(np.array([1]), "a"),
    "namedtuple_of_ints": lambda: Point(1, 2),
    "dict": lambda: {"a": (1, 2), "b": np.float64(1)},
    "ordered_dict": lambda: collections.OrderedDict(a=np.int8(1)),
    "custom_dict": lambda: CustomDict({"a": 1, "b": np.arange(2)}),
    "frozen_mapping": lambda: FrozenMapping({"a": np.int16(1)}),
    "list": lambda: [np.int8(1), "x", [np.float16(2)]],
    "custom_list": lambda: CustomList([1, np.int64(2), 3]),
    "range": lambda: range(3),
    "tensor": lambda: torch.arange(3),
}


def test_convert_arrays_matches_torch():
    def check(name, factory):
        arrays = "torch" if name == "tensor" else "numpy"
        assert_same(convert_arrays(factory()), tud.default_convert(factory()), arrays,
                    exact_tensor_type=False)

    assert failures(CONVERT_CASES, check) == {}


def test_default_convert_passes_things_through():
    for data in (np.array(["a", "b"]), np.array([None], dtype=object), torch.ones(2), "s", 7):
        assert convert_arrays(data) is data
        assert tud.default_convert(data) is data


def test_default_convert_keeps_and_drops_container_types():
    data = CustomDict({"a": 1, "b": 2})
    assert type(convert_arrays(data)) is CustomDict and convert_arrays(data) == data
    data = CustomList([1, 2, 3])
    assert type(convert_arrays(data)) is CustomList and convert_arrays(data) == data
    assert convert_arrays(range(2)) == [0, 1] and type(convert_arrays(range(2))) is list
    assert convert_arrays((1, 2)) == [1, 2]


def test_default_convert_numpy_scalars_become_0d_arrays():
    converted = convert_arrays(np.float32(1.5))
    assert type(converted) is np.ndarray and converted.shape == () and converted.dtype == np.float32


def test_default_convert_memmap_becomes_a_plain_array(tmp_path):
    mm = np.memmap(tmp_path / "m.bin", dtype=np.float32, mode="w+", shape=(3,))
    mm[:] = [1, 2, 3]
    converted = convert_arrays(mm)
    assert type(converted) is np.ndarray and converted.tolist() == [1, 2, 3]
    assert torch.equal(torch.from_numpy(converted), tud.default_convert(mm))
    del mm, converted


def test_default_convert_leaves_dtypes_torch_cannot_hold():
    """torch raises TypeError for these; we have no reason to refuse a numpy value."""
    for data in (np.datetime64("2020-01-01"), np.array(["2020-01-01"], dtype="datetime64[D]")):
        with pytest.raises(TypeError):
            tud.default_convert(data)
        assert convert_arrays(data) is data


# --- the collate map: torch's extension point -------------------------------------------


def collate_opaque(batch, *, collate_fn_map=None):
    return ("opaque", [b.value for b in batch], collate_fn_map is not None)


def test_default_map_has_torchs_keys_in_torchs_order():
    keys = [k for k in default_collate_fn_map if k is not torch.Tensor]
    torch_keys = [k for k in torch_collate.default_collate_fn_map if k is not torch.Tensor]
    assert keys == torch_keys
    assert loader.default_collate_fn_map is default_collate_fn_map
    assert loader.default_collate is default_collate and loader.default_convert is default_convert


def test_extending_default_collate_fn_map(monkeypatch):
    """A registered type is collated by its function, at any depth, and so are subclasses
    (found by isinstance); torch's map, extended alike, gives the same result."""

    class SubOpaque(Opaque):
        pass

    monkeypatch.setitem(default_collate_fn_map, Opaque, collate_opaque)
    monkeypatch.setitem(torch_collate.default_collate_fn_map, Opaque, collate_opaque)
    for batch in ([Opaque(1), Opaque(2)], [SubOpaque(1), SubOpaque(2)],
                  [{"o": Opaque(1), "n": 1}, {"o": Opaque(2), "n": 2}]):
        assert_same(collate_arrays(batch), tud.default_collate(batch), "numpy",
                    exact_tensor_type=False)
    assert collate_arrays([Opaque(1), Opaque(2)]) == ("opaque", [1, 2], True)


def test_overriding_a_default_entry(monkeypatch):
    monkeypatch.setitem(default_collate_fn_map, int, lambda batch, *, collate_fn_map: sum(batch))
    assert collate_arrays([[1, 2], [3, 4]]) == [4, 6]


def test_unregistered_type_still_fails_after_the_map_is_restored():
    assert Opaque not in default_collate_fn_map
    with pytest.raises(TypeError, match="found <class '.*Opaque'>"):
        collate_arrays([Opaque(1)])


def test_collate_with_a_custom_map():
    """``collate(batch, collate_fn_map=...)`` uses only that map; containers still recurse."""
    seen = []

    def collate_int(batch, *, collate_fn_map):
        seen.append(collate_fn_map)
        return list(batch)

    custom = {int: collate_int}
    assert collate([(1, 2), (3, 4)], collate_fn_map=custom) == [[1, 3], [2, 4]]
    assert seen == [custom, custom]
    assert raised(collate, [1.5], collate_fn_map=custom) == raised(
        torch_collate.collate, [1.5], collate_fn_map=custom)
    assert raised(collate, [1, 2]) == raised(torch_collate.collate, [1, 2])  # no map at all
