"""The shared validation helpers: one cutoff, one wording, strict types."""

import numpy as np
import pytest

from hydranet._checks import check_bool, check_choice, check_int, check_number, closest, did_you_mean, unknown_name


def test_did_you_mean_suggests_close_names_only():
    assert did_you_mean("uwx", ["uw", "ew", "dwa"]) == " Did you mean 'uw'?"
    assert did_you_mean("pcgrd", ["pcgrad", "upgrad"]) == " Did you mean 'pcgrad'?"
    assert did_you_mean("zzz", ["uw", "ew"]) == ""
    assert closest("zzz", ["uw"]) is None


def test_unknown_name_lists_every_choice():
    message = str(unknown_name("balancer", "uwx", ["uw", "ew"]))
    assert "Unknown balancer 'uwx'. Did you mean 'uw'? Valid: ew, uw." == message


def test_check_int_refuses_bools_floats_and_out_of_range():
    assert check_int("n", np.int64(3), 1) == 3
    for bad in (True, 2.0, "3", 0):
        with pytest.raises(ValueError, match="n must be an integer >= 1"):
            check_int("n", bad, 1)
    with pytest.raises(ValueError, match=r"<= 5, got 6 \(a count\)"):
        check_int("n", 6, 0, 5, hint="a count")


def test_check_number_reads_yaml_strings_like_1e_3():
    # PyYAML (YAML 1.1) reads 1e-3 without a dot as the string "1e-3".
    assert check_number("lr", "1e-3", 0, strict=True) == pytest.approx(1e-3)
    assert check_number("lr", 2, 0) == 2.0
    for bad in ("fast", float("nan"), float("inf"), True, None, 0.0):
        with pytest.raises(ValueError, match="lr must be a finite number > 0"):
            check_number("lr", bad, 0, strict=True)


def test_check_bool_is_strict():
    assert check_bool("drop_last", np.bool_(True)) is True
    for bad in ("false", 0, 1, None):
        with pytest.raises(TypeError, match="drop_last must be True or False"):
            check_bool("drop_last", bad)


def test_check_choice_suggests():
    assert check_choice("mode", "min", ("min", "max")) == "min"
    with pytest.raises(ValueError, match="Did you mean 'max'"):
        check_choice("mode", "mxa", ("min", "max"))
