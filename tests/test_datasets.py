"""Datasets: ports of torch's dataset tests plus differential checks against torch itself."""

import warnings

import numpy as np
import pytest
import torch
import torch.utils.data as tud

from loader.dataset import (
    ChainDataset,
    ConcatDataset,
    Dataset,
    IterableDataset,
    StackDataset,
    Subset,
    TensorDataset,
    is_iterable_dataset,
    random_split,
)

from helpers import raised, same_error


class DuckDataset:
    """A user's map-style dataset that subclasses nothing."""

    def __init__(self, values):
        self.values = list(values)

    def __getitem__(self, i):
        return self.values[i]

    def __len__(self):
        return len(self.values)


class TorchMapDataset(tud.Dataset):
    def __init__(self, values):
        self.values = list(values)

    def __getitem__(self, i):
        return self.values[i]

    def __len__(self):
        return len(self.values)


class CountingStream(IterableDataset):
    def __init__(self, n):
        self.n = n

    def __iter__(self):
        return iter(range(self.n))

    def __len__(self):
        return self.n


class TorchStream(tud.IterableDataset):
    def __init__(self, values):
        self.values = list(values)

    def __iter__(self):
        return iter(self.values)

    def __len__(self):
        return len(self.values)


class BatchedDataset(Dataset):
    """Records every ``__getitems__`` call; answers ``10 * i``."""

    def __init__(self, n, short_by=0):
        self.n, self.short_by, self.calls = n, short_by, []

    def __getitem__(self, i):
        return 10 * i

    def __getitems__(self, indices):
        self.calls.append(list(indices))
        return [10 * i for i in indices][: len(indices) - self.short_by]

    def __len__(self):
        return self.n


# --- base classes -----------------------------------------------------------------------


def test_dataset_getitem_is_abstract_with_torch_message():
    assert same_error(lambda: Dataset()[0], lambda: tud.Dataset()[0])[0] is NotImplementedError


def test_dataset_has_no_default_len():
    with pytest.raises(TypeError):
        len(Dataset())


def test_generic_subscription():
    for cls in (Dataset, IterableDataset, Subset, ConcatDataset):
        assert cls[int].__origin__ is cls


def test_dataset_add_concatenates():
    a, b = TensorDataset(np.arange(3)), TensorDataset(np.arange(3, 5))
    joined = a + b
    assert isinstance(joined, ConcatDataset)
    assert [joined[i][0] for i in range(len(joined))] == [0, 1, 2, 3, 4]


def test_iterable_dataset_iter_is_abstract_like_torch():
    assert raised(IterableDataset)[0] is raised(tud.IterableDataset)[0] is TypeError


def test_iterable_dataset_add_chains():
    chained = CountingStream(2) + CountingStream(3)
    assert isinstance(chained, ChainDataset)
    assert list(chained) == [0, 1, 0, 1, 2]


def test_is_iterable_dataset_recognises_ours_and_torchs():
    assert is_iterable_dataset(CountingStream(1))
    assert is_iterable_dataset(TorchStream([1]))
    assert not is_iterable_dataset([1, 2])
    assert not is_iterable_dataset(TensorDataset(np.arange(2)))
    assert not is_iterable_dataset(TorchMapDataset([1]))


# --- TensorDataset (TestTensorDataset) ------------------------------------------------------


def test_tensor_dataset_len():
    source = TensorDataset(np.random.randn(15, 10, 2, 3, 4, 5), np.random.randn(15))
    assert len(source) == 15


def test_tensor_dataset_getitem():
    t = np.random.randn(15, 10, 2, 3, 4, 5)
    labels = np.random.randn(15, 10)
    source = TensorDataset(t, labels)
    for i in range(15):
        np.testing.assert_array_equal(t[i], source[i][0])
        np.testing.assert_array_equal(labels[i], source[i][1])


def test_tensor_dataset_getitem_1d():
    t = np.random.randn(15)
    labels = np.random.randn(15)
    source = TensorDataset(t, labels)
    assert all(source[i] == (t[i], labels[i]) for i in range(15))


def test_tensor_dataset_single_and_many_arrays():
    t = np.random.randn(15, 10)
    assert TensorDataset(t)[3][0].tolist() == t[3].tolist()
    arrays = [np.random.randn(5, 3), np.arange(5), np.random.randn(5, 2, 2)]
    source = TensorDataset(*arrays)
    for i in range(5):
        item = source[i]
        assert isinstance(item, tuple) and len(item) == 3
        for a, part in zip(arrays, item):
            np.testing.assert_array_equal(a[i], part)


def test_tensor_dataset_size_mismatch_like_torch():
    kind, message = same_error(
        lambda: TensorDataset(np.zeros(3), np.zeros(4)),
        lambda: tud.TensorDataset(torch.zeros(3), torch.zeros(4)),
    )
    assert kind is AssertionError and message == "Size mismatch between tensors"


def test_tensor_dataset_rejects_0d_with_index_error_like_torch():
    assert raised(lambda: TensorDataset(np.float64(1.0)))[0] is IndexError
    assert raised(lambda: tud.TensorDataset(torch.tensor(1.0)))[0] is IndexError


def test_tensor_dataset_takes_torch_tensors_and_lists():
    t = torch.arange(6).reshape(3, 2)
    source = TensorDataset(t, [7, 8, 9])
    assert len(source) == 3
    row, label = source[1]
    assert torch.equal(row, t[1]) and label == 8


def test_tensor_dataset_matches_torch_for_fancy_indices():
    data = np.arange(20).reshape(10, 2)
    ours = TensorDataset(data, np.arange(10))
    theirs = tud.TensorDataset(torch.from_numpy(data), torch.arange(10))
    for index in (0, -1, [1, 3, 5], slice(2, 8, 3)):
        for mine, ref in zip(ours[index], theirs[index]):
            assert np.asarray(mine).tolist() == ref.tolist()


# --- StackDataset (TestStackDataset) --------------------------------------------------------


@pytest.mark.parametrize(
    "args, kwargs",
    [
        ((), {}),  # test_empty
        (("a",), {"b": "c"}),  # test_mixed
        (([1, 2], [1]), {}),  # test_size_mismatch, tuple
        ((), {"a": [1, 2], "b": [1]}),  # test_size_mismatch, dict
    ],
)
def test_stack_dataset_errors_like_torch(args, kwargs):
    kind, _ = same_error(
        lambda: StackDataset(*args, **kwargs), lambda: tud.StackDataset(*args, **kwargs)
    )
    assert kind is ValueError


def test_stack_dataset_len_and_single():
    assert len(StackDataset(np.arange(5), np.arange(5))) == 5
    assert len(StackDataset(a=np.arange(4), b=np.arange(4))) == 4
    x = np.arange(10)
    assert [StackDataset(x)[i] for i in range(10)] == [(i,) for i in range(10)]


def test_stack_dataset_getitem_tuple_and_dict():
    x, y = np.random.randn(10, 3), np.arange(10)
    tuple_stack = StackDataset(TensorDataset(x), y)
    dict_stack = StackDataset(a=TensorDataset(x), b=y)
    for i in range(10):
        np.testing.assert_array_equal(tuple_stack[i][0][0], x[i])
        assert tuple_stack[i][1] == y[i]
        assert set(dict_stack[i]) == {"a", "b"}
        np.testing.assert_array_equal(dict_stack[i]["a"][0], x[i])


def test_stack_dataset_getitems_uses_childrens_getitems():
    batched, plain = BatchedDataset(4), DuckDataset("abcd")
    assert StackDataset(batched, plain).__getitems__([0, 2]) == [(0, "a"), (20, "c")]
    assert StackDataset(x=batched, y=plain).__getitems__([3, 1]) == [
        {"x": 30, "y": "d"},
        {"x": 10, "y": "b"},
    ]
    assert batched.calls == [[0, 2], [3, 1]]


def test_stack_dataset_getitems_matches_torch():
    ours = StackDataset(BatchedDataset(6), DuckDataset(range(6)))
    theirs = tud.StackDataset(BatchedDataset(6), DuckDataset(range(6)))
    assert ours.__getitems__([5, 0, 3]) == theirs.__getitems__([5, 0, 3])
    ours = StackDataset(p=BatchedDataset(6), q=DuckDataset(range(6)))
    theirs = tud.StackDataset(p=BatchedDataset(6), q=DuckDataset(range(6)))
    assert ours.__getitems__([1, 4]) == theirs.__getitems__([1, 4])


def test_stack_dataset_getitems_raises_index_error():
    stack = StackDataset(TensorDataset(np.random.randn(4)), BatchedDataset(4))
    with pytest.raises(IndexError):
        stack.__getitems__([0, 5])


@pytest.mark.parametrize("as_dict", [False, True])
def test_stack_dataset_getitems_size_mismatch_like_torch(as_dict):
    def build(cls):
        parts = (DuckDataset(range(4)), BatchedDataset(4, short_by=1))
        return cls(a=parts[0], b=parts[1]) if as_dict else cls(*parts)

    kind, message = same_error(
        lambda: build(StackDataset).__getitems__([0, 1, 2, 3]),
        lambda: build(tud.StackDataset).__getitems__([0, 1, 2, 3]),
    )
    assert kind is ValueError
    assert message == "Nested dataset's output size mismatch. Expected 4, got 3"


# --- ConcatDataset (TestConcatDataset) ----------------------------------------------------


def test_concat_two_singletons():
    result = ConcatDataset([[0], [1]])
    assert len(result) == 2
    assert result[0] == 0 and result[1] == 1


def test_concat_two_non_singletons():
    result = ConcatDataset([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]])
    assert len(result) == 10
    assert result[0] == 0 and result[5] == 5


def test_concat_two_non_singletons_with_empty():
    result = ConcatDataset([[0, 1, 2, 3, 4], [], [5, 6, 7, 8, 9]])
    assert len(result) == 10
    assert result[0] == 0 and result[5] == 5


def test_concat_raises_index_error():
    result = ConcatDataset([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]])
    with pytest.raises(IndexError):
        result[11]


def test_concat_add_dataset():
    d1 = TensorDataset(np.random.rand(7, 3, 28, 28), np.random.rand(7))
    d2 = TensorDataset(np.random.rand(7, 3, 28, 28), np.random.rand(7))
    d3 = TensorDataset(np.random.rand(7, 3, 28, 28), np.random.rand(7))
    result = d1 + d2 + d3
    assert len(result) == 21
    np.testing.assert_array_equal(d1[0][0], result[0][0])
    np.testing.assert_array_equal(d2[0][0], result[7][0])
    np.testing.assert_array_equal(d3[0][0], result[14][0])


@pytest.mark.parametrize("stream", [CountingStream(3), TorchStream([1, 2])])
def test_concat_rejects_iterable_datasets(stream):
    with pytest.raises(AssertionError, match="ConcatDataset does not support IterableDataset"):
        ConcatDataset([stream, [1, 2]])


def test_concat_errors_like_torch():
    assert same_error(lambda: ConcatDataset([]), lambda: tud.ConcatDataset([]))[0] is AssertionError
    assert same_error(
        lambda: ConcatDataset([[1], [2]])[-3], lambda: tud.ConcatDataset([[1], [2]])[-3]
    ) == (ValueError, "absolute value of index should not exceed dataset length")


def test_concat_matches_torch_on_every_index():
    parts = [list(range(3)), [], DuckDataset("xy"), TorchMapDataset([9, 8, 7, 6])]
    ours, theirs = ConcatDataset(parts), tud.ConcatDataset(parts)
    assert ours.cumulative_sizes == theirs.cumulative_sizes == [3, 3, 5, 9]
    assert ConcatDataset.cumsum(parts) == tud.ConcatDataset.cumsum(parts)
    assert [ours[i] for i in range(-9, 9)] == [theirs[i] for i in range(-9, 9)]
    assert raised(lambda: ours[9])[0] is raised(lambda: theirs[9])[0] is IndexError


def test_concat_deprecated_cummulative_sizes_warns():
    result = ConcatDataset([[1], [2, 3]])
    with pytest.warns(FutureWarning, match="renamed to `cumulative_sizes`"):
        assert result.cummulative_sizes == [1, 3]


# --- ChainDataset -------------------------------------------------------------------------


def test_chain_yields_in_order_and_sums_lengths():
    chained = ChainDataset([CountingStream(2), TorchStream("ab"), CountingStream(1)])
    assert list(chained) == [0, 1, "a", "b", 0]
    assert len(chained) == 5


def test_chain_checks_lazily_with_torch_message():
    ours = ChainDataset([CountingStream(2), [7, 8]])
    theirs = tud.ChainDataset([TorchStream([0, 1]), [7, 8]])
    assert same_error(lambda: list(ours), lambda: list(theirs)) == (
        AssertionError,
        "ChainDataset only supports IterableDataset",
    )
    assert same_error(lambda: len(ours), lambda: len(theirs))[0] is AssertionError


# --- Subset ---------------------------------------------------------------------------------


def test_subset_indexing_and_len_match_torch():
    for parent in (DuckDataset("abcdefg"), TorchMapDataset(range(7)), list(range(7))):
        ours, theirs = Subset(parent, [6, 0, 3]), tud.Subset(parent, [6, 0, 3])
        assert len(ours) == len(theirs) == 3
        assert [ours[i] for i in range(-3, 3)] == [theirs[i] for i in range(-3, 3)]
        assert ours.__getitems__([2, 0]) == theirs.__getitems__([2, 0])


def test_subset_getitem_with_list_indexes_parent_once():
    data = np.arange(10) * 10
    subset = Subset(TensorDataset(data), [9, 1, 4])
    np.testing.assert_array_equal(subset[[0, 2]][0], [90, 40])


def test_subset_getitems_delegates_to_parent_getitems():
    parent = BatchedDataset(10)
    subset = Subset(parent, [5, 6, 7])
    assert subset.__getitems__([2, 0]) == [70, 50]
    assert parent.calls == [[7, 5]]


def test_subset_getitems_without_parent_getitems_fetches_each():
    assert Subset(DuckDataset("abcd"), [3, 2]).__getitems__([0, 1]) == ["d", "c"]


def test_subset_subclass_overriding_getitem_is_not_bypassed():
    class Doubled(Subset):
        def __getitem__(self, idx):
            return 2 * super().__getitem__(idx)

    assert Doubled(BatchedDataset(5), [1, 2]).__getitems__([0, 1]) == [20, 40]


def test_slicing_of_subset_of_dataset():
    dataset = TensorDataset(np.array([1, 2, 3, 4, 5]))
    subset = Subset(dataset, [0, 1, 2, 3, 4])
    for key in (slice(None), slice(1, 2), slice(0, -1, 2)):
        np.testing.assert_array_equal(subset[key][0], dataset[key][0])
    subset1, _ = random_split(dataset, [3, 2], generator=0)
    for key in (slice(None), slice(0, 2), slice(0, -1, 2)):
        np.testing.assert_array_equal(subset1[key][0], dataset[subset1.indices[key]][0])


def test_slicing_of_subset_of_subset():
    dataset = TensorDataset(np.array([1, 2, 3, 4, 5]))
    subset_of_subset = Subset(Subset(dataset, [0, 1, 2, 3, 4]), [0, 1, 2, 3, 4])
    for key in (slice(None), slice(0, 2), slice(0, -1, 2)):
        np.testing.assert_array_equal(subset_of_subset[key][0], dataset[key][0])
    subset1, _ = random_split(dataset, [4, 1], generator=1)
    inner1, _ = random_split(subset1, [3, 1], generator=2)
    idx = [subset1.indices[i] for i in inner1.indices]
    np.testing.assert_array_equal(inner1[:][0], dataset[idx][0])
    np.testing.assert_array_equal(inner1[0:2][0], dataset[idx[0:2]][0])
    np.testing.assert_array_equal(inner1[0:-1:2][0], dataset[idx[0:-1:2]][0])


# --- random_split (TestDatasetRandomSplit) -----------------------------------------------


def test_random_split_lengths_must_equal_dataset_size():
    kind, message = same_error(
        lambda: random_split([1, 2, 3, 4], [1, 2]), lambda: tud.random_split([1, 2, 3, 4], [1, 2])
    )
    assert kind is ValueError
    assert message == "Sum of input lengths does not equal the length of the input dataset!"


def test_random_split_sizes():
    assert [len(s) for s in random_split([1, 2, 3, 4, 5, 6], [2, 4])] == [2, 4]
    assert [len(s) for s in random_split([1, 2, 3, 4, 5, 6], [0.5, 0.5])] == [3, 3]
    splits = random_split(list(range(106)), [0.1, 0.2, 0.3, 0.4])
    assert [len(s) for s in splits] == [11, 22, 31, 42]


@pytest.mark.parametrize(
    "n, fractions",
    [(106, [0.1, 0.2, 0.3, 0.4]), (10, [1 / 3] * 3), (7, [0.25] * 4), (3, [0.1, 0.1, 0.8])],
)
def test_random_split_fraction_lengths_match_torch(n, fractions):
    with warnings.catch_warnings(record=True) as ours_warned:
        warnings.simplefilter("always")
        ours = random_split(list(range(n)), fractions, generator=0)
    with warnings.catch_warnings(record=True) as torch_warned:
        warnings.simplefilter("always")
        theirs = tud.random_split(list(range(n)), fractions)
    assert [len(s) for s in ours] == [len(s) for s in theirs]
    assert [str(w.message) for w in ours_warned] == [str(w.message) for w in torch_warned]


def test_random_split_zero_length_split_warns():
    with pytest.warns(UserWarning, match="Length of split at index 1 is 0"):
        random_split([1, 2], [0.9, 0.1], generator=0)


def test_random_split_splits_are_mutually_exclusive():
    data = [5, 2, 3, 4, 1, 6]
    splits = random_split(data, [2, 4], generator=0)
    assert sorted(list(splits[0]) + list(splits[1])) == sorted(data)
    splits = random_split(data, [0.33, 0.67], generator=1)
    assert sorted(list(splits[0]) + list(splits[1])) == sorted(data)


def test_random_split_passes_python_int_keys():
    class CheckKeys(DuckDataset):
        def __getitem__(self, key):
            assert type(key) is int
            return super().__getitem__(key)

    dataset = CheckKeys(range(7))
    for split in random_split(dataset, [3, 4], generator=0):
        assert all(type(i) is int for i in split.indices)
        assert [split[i] for i in range(len(split))] == split.indices


@pytest.mark.parametrize(
    "make_generator",
    [lambda: 1, lambda: np.random.default_rng(1), lambda: torch.Generator().manual_seed(1)],
)
def test_random_split_reproducible_from_a_generator(make_generator):
    def split():
        return [s.indices for s in random_split(range(10), [3, 7], make_generator())]

    assert split() == split()
    assert sorted(split()[0] + split()[1]) == list(range(10))


def test_random_split_global_seeding_and_generator_isolation():
    torch.manual_seed(1)
    first = [s.indices for s in random_split(range(50), [25, 25])]
    state = torch.get_rng_state()
    second = [s.indices for s in random_split(range(50), [25, 25])]
    assert not torch.equal(state, torch.get_rng_state())  # no generator: global RNG advances
    assert first != second
    torch.manual_seed(1)
    assert [s.indices for s in random_split(range(50), [25, 25])] == first

    state = torch.get_rng_state()
    random_split(range(50), [25, 25], generator=torch.Generator().manual_seed(3))
    random_split(range(50), [25, 25], generator=3)
    assert torch.equal(state, torch.get_rng_state())  # own generator: global RNG untouched


@pytest.mark.parametrize(
    "lengths",
    [[0.2, 0.3], [1.3, -0.3], [0.5, 0.6], [0.8, 0.4, -0.2]],
)
def test_random_split_bad_fractions_like_torch(lengths):
    kind, _ = same_error(
        lambda: random_split(range(10), lengths), lambda: tud.random_split(range(10), lengths)
    )
    assert kind is ValueError


def test_random_split_fraction_range_message():
    with pytest.raises(ValueError, match="Fraction at index 0 is not between 0 and 1"):
        random_split(range(10), [1.3, -0.3])


def test_wrappers_accept_torch_and_duck_typed_datasets():
    parts = [TorchMapDataset(range(4)), DuckDataset(range(4, 6))]
    joined = ConcatDataset(parts)
    split = random_split(joined, [0.5, 0.5], generator=0)
    assert sorted(split[0].__getitems__(list(range(3))) + list(split[1])) == list(range(6))
    stacked = StackDataset(joined, Subset(TorchMapDataset("abcdef"), range(6)))
    assert stacked[5] == (5, "f")
