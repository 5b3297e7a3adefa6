"""Type stubs of the compiled module ``bilevel._bilevel`` (the Rust bindings).

Arrays are float64 NumPy arrays on the way out; every ``ArrayLike`` argument is read as float64
(booleans, integers, real floats, object arrays of numbers; complex values, text and other
objects raise ``InvalidInputError`` naming the argument). Checked against the built module by ``python -m mypy.stubtest bilevel._bilevel`` in CI.
"""

from typing import Any, Literal, Sequence, Union, final

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "__version__", "QuadraticLayer", "Activation", "Network", "QpBatch", "qp_solve",
    "SparseQpBatch", "_sparse_qp_solve", "verify", "verify_ids", "error_classes",
]

__version__: str

_Array = NDArray[np.float64]
# A SciPy sparse matrix or array (anything with ``tocoo()``); SciPy is optional.
_SparseMatrix = Any
#: ``"limit"`` (Prop. 2, one-sided), ``("contrastive", beta)`` or ``("centered", beta)`` (Def. 1).
_Mode = Union[Literal["limit"], tuple[str, float], None]
#: A loss: an array ``g`` (linear ``gᵀz``), ``("squared", target)``, or a dict
#: ``{"kind": "linear" | "squared" | "gradient", ...}`` as in ``bilevel derive``'s JSON.
_LossSpec = Union[ArrayLike, tuple[str, ArrayLike], dict[str, Any]]

@final
class QuadraticLayer:
    """``z*(θ) = argmin_z ½zᵀQz − zᵀ(Bθ + c)`` s.t. ``Az ≥ b``, ``A_eq z = b_eq``."""

    def __new__(
        cls,
        Q: ArrayLike | _SparseMatrix,
        c: ArrayLike,
        B: ArrayLike | _SparseMatrix | None = None,
        A: ArrayLike | _SparseMatrix | None = None,
        b: ArrayLike | None = None,
        A_eq: ArrayLike | _SparseMatrix | None = None,
        b_eq: ArrayLike | None = None,
        *,
        backend: str | None = None,
        feasibility_tol: float = 1e-9,
        multiplier_tol: float = 1e-9,
    ) -> QuadraticLayer: ...
    @property
    def n(self) -> int: ...
    @property
    def p(self) -> int: ...
    @property
    def m(self) -> int: ...
    @property
    def k(self) -> int: ...
    @property
    def backend(self) -> str: ...
    @property
    def Q(self) -> Any: ...
    @property
    def B(self) -> Any: ...
    @property
    def c(self) -> _Array: ...
    def solve(self, theta: ArrayLike, *, threads: int | None = None) -> Any: ...
    def derive(
        self,
        theta: ArrayLike,
        loss: _LossSpec | None = None,
        *,
        direction: ArrayLike | None = None,
        betas: Sequence[float] = ...,
        gradients: Sequence[str] = ...,
        threads: int | None = None,
    ) -> Any: ...
    def vjp(self, theta: ArrayLike, g: ArrayLike, *, threads: int | None = None) -> _Array: ...
    def jvp(self, theta: ArrayLike, v: ArrayLike, *, threads: int | None = None) -> _Array: ...
    def surrogate(
        self, theta: ArrayLike, loss: _LossSpec, beta: float, kind: str = "contrastive"
    ) -> dict[str, Any]: ...
    def _rust_vjp_seconds(
        self, theta: ArrayLike, g: ArrayLike, repeats: int = 100, threads: int | None = None
    ) -> float: ...

@final
class Activation:
    """A closed-form layer: ``"relu"``, ``"hard_sigmoid"``, ``"hard_tanh"``,
    ``("box", lo, hi)`` or ``"softmax"``."""

    def __new__(cls, name: str | tuple[str, float, float]) -> Activation: ...
    def __call__(self, u: ArrayLike) -> _Array: ...
    def vjp(self, u: ArrayLike, g: ArrayLike) -> _Array: ...
    def fenchel_vjp(self, u: ArrayLike, g: ArrayLike, beta: float) -> _Array: ...
    def derivative(self, u: ArrayLike) -> _Array: ...

@final
class Network:
    """A feed-forward network read as the deeply nested program of Eq. 21."""

    def __new__(
        cls,
        weights: Sequence[ArrayLike],
        biases: Sequence[ArrayLike],
        activations: Sequence[str | tuple[str, float, float]],
    ) -> Network: ...
    @property
    def widths(self) -> list[int]: ...
    def forward(self, x: ArrayLike) -> list[_Array]: ...
    @staticmethod
    def default_settings() -> dict[str, Any]: ...
    def gradient(
        self,
        method: str,
        beta: float | Sequence[float],
        x: ArrayLike,
        target: ArrayLike,
        loss: str = "squared",
        settings: dict[str, Any] | None = None,
    ) -> dict[str, Any]: ...

@final
class QpBatch:
    """The solved items of :func:`qp_solve`, kept for their gradients."""

    def gradients(self, grad_z: ArrayLike, mode: _Mode = None) -> dict[str, Any]: ...
    def status(self) -> list[dict[str, Any]]: ...
    def __len__(self) -> int: ...

def qp_solve(
    Q: ArrayLike,
    p: ArrayLike,
    G: ArrayLike,
    h: ArrayLike,
    A: ArrayLike,
    b: ArrayLike,
    *,
    threads: int | None = None,
    feasibility_tol: float = 1e-9,
    multiplier_tol: float = 1e-9,
) -> tuple[_Array, QpBatch]: ...
@final
class SparseQpBatch:
    """The solved sparse items of one :func:`_sparse_qp_solve` call, kept for their gradients."""

    def gradients(
        self, grad_z: ArrayLike, condition: bool = False, mode: _Mode = None
    ) -> list[dict[str, Any]]: ...
    def status(self) -> list[dict[str, Any]]: ...
    def __len__(self) -> int: ...

_Parts = tuple[int, int, ArrayLike, ArrayLike, ArrayLike]

def _sparse_qp_solve(
    items: Sequence[tuple[_Parts, ArrayLike, _Parts, ArrayLike, _Parts, ArrayLike]],
    tol: tuple[float, float],
    threads: int | None = None,
) -> tuple[_Array, SparseQpBatch]: ...
def verify(seed: int = 0, ids: Sequence[str] | None = None) -> list[dict[str, Any]]: ...
def verify_ids() -> list[str]: ...
def error_classes() -> list[str]: ...
