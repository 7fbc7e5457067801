"""harness.compare: the seeds table and the method names, checked before Ray starts."""
from __future__ import annotations

import math

import pytest

from harness.compare import VARIANTS, main, mean_std, table


def test_table_mean_and_sample_std_over_seeds_by_hand():
    rows = {"cmd-official": [{"probe_top1": 0.2, "knn_top1": 0.5}, {"probe_top1": 0.4, "knn_top1": 0.5}],
            "dino": [{"probe_top1": 0.3}]}
    assert mean_std([0.2, 0.4]) == pytest.approx((0.3, math.sqrt(0.02)))  # ((0.1^2 + 0.1^2) / (2 - 1)) ^ 0.5
    lines = table(rows).splitlines()
    assert lines[2].startswith("| cmd-official | 2 | 0.300 ± 0.141 | 0.500 ± 0.000 |")
    assert lines[3].startswith("| dino | 1 | 0.300 | nan |")  # one seed: no spread shown


def test_both_mil_forms_are_methods_and_bad_arguments_are_one_line(capsys):
    assert VARIANTS["cmd-official"] == ("loss.method=cmd", "loss.mil_form=official")
    assert VARIANTS["cmd-proper_kl"] == ("loss.method=cmd", "loss.mil_form=proper_kl")
    assert main(["--methods", "dino,cmd-nope"]) == 2
    assert "unknown method 'cmd-nope'" in capsys.readouterr().err
    assert main(["--seeds", "0"]) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err
