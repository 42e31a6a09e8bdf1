"""A conversion slowed down so a test can kill it mid-job: ``python slow_convert.py SOURCE OUTPUT
WORKERS [STORAGE_OPTIONS_JSON]``. Each row takes ``WDSTREAM_TEST_ROW_DELAY`` seconds more to
encode; ``WDSTREAM_TEST_CONVERT_ARGS`` (JSON) sets Config fields;
``WDSTREAM_TEST_APPEND=1`` makes it an append (``convert(..., append=True)``).

The slowdown is set at module level, so the pool's workers have it too: the forkserver preloads
``__main__`` (and ``spawn`` re-imports it) before it forks them; the conversion itself runs only
under ``__main__``."""

import json
import os
import sys
import time

import datasets

import wdstream.rows.encode as enc

datasets.config.SLEEP_TIME_ON_THREADS_SHUTDOWN = 0
DELAY = float(os.environ.get("WDSTREAM_TEST_ROW_DELAY", "0.05"))
_call = enc.RowEncoder.__call__


def _slow(self, row, key):
    time.sleep(DELAY)
    return _call(self, row, key)


enc.RowEncoder.__call__ = _slow

if __name__ == "__main__":
    from wdstream.write.convert import convert

    source, output, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
    options = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    print(f"DRIVER {os.getpid()}", flush=True)
    # WDSTREAM_TEST_CONVERT_ARGS: JSON of Config fields over the defaults below
    overrides = {
        "max_samples_per_shard": 3,
        **json.loads(os.environ.get("WDSTREAM_TEST_CONVERT_ARGS") or "{}"),
    }
    convert(
        source,
        output,
        workers=workers,
        quiet=True,
        storage_options=options,
        append=os.environ.get("WDSTREAM_TEST_APPEND") == "1",
        **overrides,
    )
    print("FINISHED", flush=True)
