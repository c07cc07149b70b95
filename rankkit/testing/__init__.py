"""Reusable invariants for rankkit's algorithms (DESIGN.md style card, item 9).

Each submodule pairs a slow, obvious reference implementation with assertions that compare a
fast implementation against it at a tolerance derived from the dtype:

- :mod:`rankkit.testing.matrix`: the dict-based P_Ω(R) builder and ``assert_reward_matrix_equal``.
- :mod:`rankkit.testing.completion`: a dense NumPy soft-impute ALS with the same updates.
- :mod:`rankkit.testing.bounds`: re-checks of the rank lower bounds and a brute-force ε-rank search.
"""
