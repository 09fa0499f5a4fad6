"""prm_jax: process supervision (Let's Verify Step by Step) in JAX."""

__version__ = "0.1.0"
