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


def test_the_compiled_modules_examples_run():
    """The examples in the docstrings of `bilevel`'s classes and functions (written in the Rust
    bindings' doc comments) run and print what they say; the main entry points have one."""
    import inspect

    import bilevel
    parser, runner = doctest.DocTestParser(), doctest.DocTestRunner()
    with_examples = []
    for name in bilevel.__all__:
        obj = getattr(bilevel, name)
        if inspect.ismodule(obj) or (inspect.isclass(obj) and issubclass(obj, BaseException)):
            continue
        docs = [(name, getattr(obj, "__doc__", None))]
        if inspect.isclass(obj):
            docs += [(f"{name}.{m}", getattr(v, "__doc__", None)) for m, v in vars(obj).items()
                     if not m.startswith("_")]
        for label, doc in docs:
            if doc and ">>>" in doc:
                with_examples.append(label)
                runner.run(parser.get_doctest(doc, {}, label, None, 0))
    for entry in ["QuadraticLayer", "Activation", "Network", "qp_solve"]:
        assert entry in with_examples, f"bilevel.{entry} has no example"
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed"
    assert result.attempted >= 20
