"""tario against Python's ``tarfile``, under Hypothesis: random and mutated archives (the
generators and checks of ``tools/fuzz_tario.py``, which runs the same for longer).

On every input tario returns members or raises a counted error (TarFormatError,
TarTruncatedError), within an alarm per input and under RLIMIT_AS (the whole run is a child
process); its span and stream parsers agree; wherever ``tarfile`` reads an archive to its
end-of-archive marker, tario gives the same members (names, bytes, offsets) or refuses the
archive after a prefix of them; an unmutated archive is read exactly as ``tarfile`` reads it.
"""

from __future__ import annotations

import json

from bounded import run_child

EXAMPLES = 600  # about 10 s of one core

CHILD = r"""
import collections, json, sys
import fuzz_tario
from hypothesis import HealthCheck, given, settings, strategies as st

limit_memory()
outcomes = collections.Counter()


@settings(
    max_examples=int(sys.argv[1]),
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
@given(st.data())
def differential(data):
    data, plain, valid, limit = fuzz_tario.make_input(fuzz_tario.HypothesisDraw(data))
    outcomes[fuzz_tario.check(data, plain, valid, limit, seconds=10)] += 1


differential()
print(json.dumps(outcomes))
"""


def test_tario_reads_what_tarfile_reads_and_nothing_hangs():
    out = run_child(CHILD, str(EXAMPLES), timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    outcomes = json.loads(out.stdout.strip().splitlines()[-1])
    # the inputs reach every kind of outcome the property talks about
    assert outcomes.get("same members", 0) >= EXAMPLES // 4, outcomes
    assert outcomes.get("both fail", 0) >= EXAMPLES // 20, outcomes
    assert sum(n for k, n in outcomes.items() if k.startswith("tario stricter")) >= 10, outcomes
