"""The docstring examples of the framework adapters run and print what they say, and every
public function of `bilevel.torch` and `bilevel.jax` has one."""

import doctest
import importlib
import os

import pytest

REQUIRED = {"torch": "BILEVEL_REQUIRE_TORCH", "jax": "BILEVEL_REQUIRE_JAX"}


@pytest.mark.parametrize("name", ["torch", "jax"])
def test_every_public_function_has_an_example_that_runs(name):
    if os.environ.get(REQUIRED[name]):
        importlib.import_module(name)  # CI: a missing framework is a failure, not a skip
    else:
        pytest.importorskip(name)
    module = importlib.import_module(f"bilevel.{name}")
    missing = [f for f in module.__all__ if ">>>" not in (getattr(module, f).__doc__ or "")]
    assert not missing, f"bilevel.{name}: no example in the docstring of {missing}"
    result = doctest.testmod(module, report=True)
    assert result.attempted >= 3 * len(module.__all__)
    assert result.failed == 0, f"{result.failed} docstring examples of bilevel.{name} failed"
