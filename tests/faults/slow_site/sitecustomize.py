"""Put this folder on PYTHONPATH of processes a test cannot patch (Ray workers) to slow the
converter down: with WDSTREAM_TEST_ROW_DELAY set, each row takes that many seconds more to
encode, so a test can act (kill, remove a node) while partitions are under way."""

import os

_DELAY = float(os.environ.get("WDSTREAM_TEST_ROW_DELAY") or 0)
if _DELAY > 0:
    import time

    import wdstream.rows.encode as _enc

    _call = _enc.RowEncoder.__call__

    def _slow(self, row, key):
        time.sleep(_DELAY)
        return _call(self, row, key)

    _enc.RowEncoder.__call__ = _slow
