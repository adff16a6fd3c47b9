"""The shared test helpers themselves: assert_close / assert_tree_close fail where they must, with a useful message,
on every backend's arrays; child_env lets a child import the package."""
from __future__ import annotations

import re

import numpy as np
import pytest

from support import assert_close, assert_tree_close, child_env, finish, start


def tree(backend, **overrides):
    host = {"w": np.array([[1.0, -2.0], [3.0, 1e-3]], np.float32), "b": np.array([0.5, 0.0], np.float32)}
    host.update(overrides)
    return {name: backend.asarray(value) for name, value in host.items()}


def test_equal_trees_pass_on_every_backend(backend):
    assert_tree_close(tree(backend), tree(backend), rtol=0, atol=0)
    assert_tree_close(tree(backend), {k: backend.to_numpy(v) for k, v in tree(backend).items()}, rtol=0, atol=0)


@pytest.mark.parametrize("change, message", [
    ({"extra": np.zeros(1, np.float32)}, r"names differ: missing \[\], unexpected \['extra'\]"),
    ({"b": np.zeros(3, np.float32)}, r"^b: shape \(3,\), desired \(2,\)"),
    ({"b": np.array([0, 1], np.int32)}, r"^b: dtype int32, desired float32"),
    ({"w": np.array([[1.0, -2.0], [3.0, 2e-3]], np.float32)},
     r"^w: 1 of 4 values differ beyond atol=1e-06, rtol=1e-05; among them max abs error 0\.001 at \(1, 1\) "
     r"\(actual 0\.002\d*, desired 0\.001\d*\); max rel error 1"),
    ({"w": np.array([[1.0, np.nan], [3.0, 1e-3]], np.float32)}, r"^w: 1 of 4 values differ.*at \(0, 1\)"),
])
def test_a_mismatch_names_the_entry_and_its_error(backend, change, message):
    with pytest.raises(AssertionError, match=message):
        assert_tree_close(tree(backend, **change), tree(backend), rtol=1e-5, atol=1e-6)


def test_tolerances_are_those_asked_for():
    desired = np.array([100.0, 1.0, 0.0])
    assert_close(desired + [5e-4, 5e-6, 0.0], desired, rtol=1e-5, atol=0)            # |d| * rtol
    with pytest.raises(AssertionError, match=r"array: 1 of 3 values differ"):
        assert_close(desired + [0.0, 0.0, 1e-9], desired, rtol=1e-5, atol=0)          # zero needs atol
    assert_close(desired + [0.0, 0.0, 5e-4], desired, rtol=0, atol=0, scaled_atol=1e-5)   # 1e-5 * max|d| = 1e-3
    with pytest.raises(AssertionError, match=r"atol=0\.001"):
        assert_close(desired + [0.0, 0.0, 2e-3], desired, rtol=0, atol=0, scaled_atol=1e-5)
    nan = np.array([np.nan, 1.0])
    assert_close(nan, nan, rtol=0, atol=0, equal_nan=True)
    with pytest.raises(AssertionError, match=re.escape("array: 1 of 2 values differ")):
        assert_close(nan, nan, rtol=0, atol=0)
    with pytest.raises(AssertionError, match=r"dtype"):
        assert_close(np.ones(2, np.float32), np.ones(2), rtol=0, atol=0)
    assert_close(np.ones(2, np.float32), np.ones(2), rtol=0, atol=0, check_dtype=False)


def test_a_child_imports_the_package_from_this_checkout():
    code, out, err = finish(start(child_env(), "-c", "import minibert, backends; print(minibert.__file__)"))
    assert code == 0, err
    assert out.strip().startswith(str(__import__("support").ROOT / "minibert"))
