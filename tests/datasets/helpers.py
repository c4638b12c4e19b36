"""Helpers for the data-set tests: reading whole stores and comparing them bit for bit."""
import zarr

import relprop.datasets as datasets


def read_store(path) -> dict:
    """Every array of a store as numpy, by its path in the group (extra/mask, ...)."""
    group = zarr.open_group(str(path), mode="r")
    found = {}
    for name, array in group.arrays():
        found[name] = array[:]
    for name, subgroup in group.groups():
        if name != "analysis":
            for inner, array in subgroup.arrays():
                found[f"{name}/{inner}"] = array[:]
    return found


def assert_same_store(a, b):
    """Bit for bit: the same arrays with the same bytes, the same run attributes and skipped samples."""
    first, second = read_store(a), read_store(b)
    assert sorted(first) == sorted(second)
    for name in first:
        x, y = first[name], second[name]
        assert x.dtype == y.dtype and x.shape == y.shape, name
        if x.dtype.kind in "fiub":
            assert x.tobytes() == y.tobytes(), f"{name} differs"
        else:
            assert x.tolist() == y.tolist(), f"{name} differs"
    attributes = [{k: v for k, v in datasets.open_store(p).attrs.items() if k != "created"} for p in (a, b)]
    assert attributes[0] == attributes[1]
