"""Tests of ``rankkit_ext``. A package so that ``tests/ext/conftest.py`` is imported as
``ext.conftest`` and does not replace the ``conftest`` module (``tests/conftest.py``) that
``tests/test_rank.py`` and ``tests/test_softimpute.py`` import ``CPU_BACKENDS`` from."""
