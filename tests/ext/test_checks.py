"""rankkit_ext._checks.check_step_values against the obvious element-wise check."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from rankkit_ext._checks import check_step_values  # noqa: E402

cell = st.sampled_from([0.0, 1.5, -2.0, 3e38, -3e38, math.nan, math.inf, -math.inf])


@given(st.integers(1, 4).flatmap(lambda n: st.tuples(
    st.lists(st.lists(cell, min_size=3, max_size=3), min_size=n, max_size=n),
    st.lists(st.booleans(), min_size=n, max_size=n))),
    st.booleans(), st.sampled_from([torch.float32, torch.float64]))
def test_raises_exactly_when_a_live_cell_is_bad_and_names_the_first(case, allow_neg_inf, dtype):
    rows, live = case
    x, alive = torch.tensor(rows, dtype=dtype), torch.tensor(live)
    first = next(((i, j) for i, row in enumerate(rows) for j, v in enumerate(row)
                  if live[i] and (math.isnan(v) or v == math.inf
                                  or (v == -math.inf and not allow_neg_inf))), None)
    if first is None:  # the row-sum screen may see overflow (3e38 + 3e38) but never raises
        check_step_values(x, alive, "twist log ψ", 3, allow_neg_inf=allow_neg_inf)
        return
    with pytest.raises(ValueError, match=rf"at step 3, particle {first[0]}, token {first[1]}:"):
        check_step_values(x, alive, "twist log ψ", 3, allow_neg_inf=allow_neg_inf)
