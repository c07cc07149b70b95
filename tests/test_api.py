"""The public names of DESIGN.md resolve through the lazy loaders (rankkit._lazy.attach)."""

import pytest

import rankkit


@pytest.mark.parametrize("name", rankkit.__all__)
def test_every_public_core_name_resolves(name):
    value = getattr(rankkit, name)
    assert value is not None
    assert name in dir(rankkit)


def test_unknown_name_is_an_attribute_error_naming_it():
    with pytest.raises(AttributeError, match="no_such_name"):
        rankkit.no_such_name  # noqa: B018


def test_every_public_ext_name_resolves():
    pytest.importorskip("torch")
    import rankkit_ext

    missing = [n for n in rankkit_ext.__all__ if getattr(rankkit_ext, n, None) is None]
    assert missing == []
    # issue 13: scorers, metrics and reports have their own modules; none is called
    # "evaluate", so nothing collides with the training-set evaluation function
    for mod in ("scorers", "metrics", "report"):
        assert getattr(rankkit_ext, mod).__name__ == f"rankkit_ext.{mod}"
    assert rankkit_ext.evaluate_objective.__module__ == "rankkit_ext.training"
    with pytest.raises(AttributeError, match="evaluate"):
        rankkit_ext.evaluate  # noqa: B018
    from rankkit_ext import tsmc

    assert tsmc.similarity is rankkit_ext.metrics.similarity  # re-exported where it was
