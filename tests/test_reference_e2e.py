"""The default sequence (``synth-shift``, tiny-clip-synth) end to end against its committed references, exactly.

The fast sequence's full runs are compared in ``tests/test_run.py`` (``test_synth_records_equal_the_committed_
references``, on the ``full_runs`` fixture it already pays for). These two runs cost about 30 s each alone on 2
quiet cores and minutes on a shared machine, so they are marked slow: ``make test-all`` runs them.

Unlike ``make regress`` (tolerance 0.5 points, for runs on other machines), every matrix cell and summary value
must be reproduced to 1e-6: a planted wiring bug (λ ignored, ignore pixels scored, a wrong threshold reaching
the fusion) moves some of them by far less than half a point.
"""

from __future__ import annotations

import pytest
from fixtures.references import assert_reproduces, load_reference

from bench.run import build_config, run


@pytest.mark.slow
@pytest.mark.parametrize("method", ["knn", "zeroshot"])
def test_synth_shift_record_equals_the_committed_reference(tmp_path, method):
    """Guards, on the sequence where the base model knows something (so λ and the threshold decide between a real
    P_base and P_ret): the fusion weight λ or threshold ignored, ignore pixels scored, the memory not used or
    not accumulated, and any other change of a number. Regenerate with ``make reference`` after an intended one."""
    cfg, spec = build_config(["SEQ=synth-shift", f"METHOD={method}", f"output_dir={tmp_path}", "progress=false"])
    assert_reproduces(run(cfg, spec), load_reference("synth-shift", method))
