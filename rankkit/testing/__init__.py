"""Reusable invariants for rankkit's algorithms (DESIGN.md style card, item 9).

Each submodule pairs a slow, obvious reference implementation with assertions that compare a
fast implementation against it at a tolerance derived from the dtype:

- :mod:`rankkit.testing.matrix`: the dict-based P_Ω(R) builder and ``assert_reward_matrix_equal``.
- :mod:`rankkit.testing.completion`: a dense NumPy soft-impute ALS with the same updates.
- :mod:`rankkit.testing.bounds`: re-checks of the rank lower bounds and a brute-force ε-rank search.
- :mod:`rankkit.testing.distributed`: process groups of threads or gloo processes for the
  sharded solvers' tests.
"""

# The submodules are the API (imported on use: distributed needs torch for its gloo groups).
__all__: list[str] = []
