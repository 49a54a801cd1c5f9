"""The PyTorch Lightning example (docs/examples/lightning_digits.py): DTP under Lightning's automatic
optimisation trains SimpleVGG on the digits to within 1 point of `dtp-fast train --algo ldrl`."""
import sys
from pathlib import Path

import pytest

pytest.importorskip("lightning", reason="PyTorch Lightning is not installed (pip install lightning; the test "
                                        "extra and CI install it)")

from dtp_fast.api import make_run  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"


@pytest.mark.slow
def test_lightning_example_matches_the_default_run(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import lightning_digits

    accuracy = lightning_digits.main(progress=False)
    default = make_run("simple_vgg", "digits", algo="ldrl", progress=False, diagnostics=False).fit()
    assert abs(accuracy - default["test_accuracy"]) <= 0.01, (accuracy, default["test_accuracy"])
    sys.modules.pop("lightning_digits", None)
