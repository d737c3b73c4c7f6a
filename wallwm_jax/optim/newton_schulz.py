"""Newton–Schulz orthogonalisation: X ≈ U·Vᵀ for X = U·S·Vᵀ, on stacks of matrices.

Each step applies the odd quintic p(X) = a·X + b·(XXᵀ)X + c·(XXᵀ)²X, which pushes every
singular value towards 1. Coefficients come as one (a, b, c) per step, from a named preset.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

Coeffs = tuple[float, float, float]

# Keller Jordan's quintic: one polynomial repeated; singular values end in about [0.68, 1.13].
QUINTIC: tuple[Coeffs, ...] = ((3.4445, -4.775, 2.0315),)

# Polar Express (Amsel et al. 2025, arXiv:2505.16932, Algorithm 1): one polynomial per step,
# each divided by the paper's safety factor 1.01 (a/1.01, b/1.01³, c/1.01⁵) except the last,
# which repeats for any further steps.
_POLAR_EXPRESS_RAW = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
)
POLAR_EXPRESS: tuple[Coeffs, ...] = tuple(
    (a / 1.01, b / 1.01**3, c / 1.01**5) for a, b, c in _POLAR_EXPRESS_RAW[:-1]
) + (_POLAR_EXPRESS_RAW[-1],)

NS_PRESETS: dict[str, tuple[Coeffs, ...]] = {"quintic": QUINTIC, "polar_express": POLAR_EXPRESS}
NS_DTYPES = ("bfloat16", "float32")


def ns_schedule(ns_coeffs: str | Coeffs | Sequence[Coeffs], ns_steps: int) -> tuple[Coeffs, ...]:
    """The (a, b, c) of each of `ns_steps` steps; a short list repeats its last entry."""
    if isinstance(ns_coeffs, str):
        if ns_coeffs not in NS_PRESETS:
            raise ValueError(f"ns_coeffs='{ns_coeffs}' is not a preset; expected one of "
                             f"{sorted(NS_PRESETS)} or (a, b, c) tuples")
        table = NS_PRESETS[ns_coeffs]
    elif len(ns_coeffs) == 3 and all(isinstance(c, (int, float)) for c in ns_coeffs):
        table = (tuple(float(c) for c in ns_coeffs),)
    else:
        table = tuple(tuple(float(c) for c in step) for step in ns_coeffs)
        if not table or any(len(step) != 3 for step in table):
            raise ValueError(f"ns_coeffs={ns_coeffs!r} must be a preset name, (a, b, c), "
                             "or a sequence of (a, b, c)")
    if not isinstance(ns_steps, int) or ns_steps < 1:
        raise ValueError(f"ns_steps={ns_steps!r} must be a positive int")
    return tuple(table[min(i, len(table) - 1)] for i in range(ns_steps))


def orthogonalize(x: jax.Array, schedule: Sequence[Coeffs], *, eps: float = 1e-7,
                  dtype: str = "bfloat16") -> jax.Array:
    """Approximate U·Vᵀ of each matrix in x: [..., m, n] (leading axes are a batch).

    x is divided by its Frobenius norm (at least `eps`) so every singular value is ≤ 1, then
    iterated on the wide orientation (transposed when m > n, so the Gram matrix XXᵀ is the
    small one). With dtype='bfloat16' the matmul inputs are bf16 and they accumulate in fp32;
    'float32' keeps everything in fp32. Returns x's shape, in x's dtype.
    """
    if x.ndim < 2:
        raise ValueError(f"orthogonalize needs [..., m, n], got shape {x.shape}")
    if dtype not in NS_DTYPES:
        raise ValueError(f"ns_dtype='{dtype}' must be one of {NS_DTYPES}")
    out_dtype = x.dtype
    tall = x.shape[-2] > x.shape[-1]
    x = x.astype(jnp.float32)
    if tall:
        x = jnp.swapaxes(x, -1, -2)
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=(-2, -1), keepdims=True))
    x = x / jnp.maximum(norm, eps)
    compute = jnp.dtype(dtype)
    precision = jax.lax.Precision.HIGHEST if dtype == "float32" else None

    def matmul(u, v):
        return jnp.matmul(u.astype(compute), v.astype(compute), precision=precision,
                          preferred_element_type=jnp.float32)

    x = x.astype(compute)
    for a, b, c in schedule:
        gram = matmul(x, jnp.swapaxes(x, -1, -2))           # [..., m, m], fp32
        poly = b * gram + c * matmul(gram, gram)            # fp32
        x = (a * x.astype(jnp.float32) + matmul(poly, x)).astype(compute)
    if tall:
        x = jnp.swapaxes(x, -1, -2)
    return x.astype(out_dtype)
