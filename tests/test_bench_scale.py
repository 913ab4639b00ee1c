"""bench scale's model: fitted from engine runs, it must give back the costs that made them."""

import math

import pytest

from drizzle_ml.launch.bench_scale import MEASURED_GROUPS, fit, predict, rounds

WORK, R0, R1, C0, CW, D = 40e-6, 5e-6, 3e-6, 200e-6, 50e-6, 20e-6


def _engine(w: int) -> dict:
    results = {f"group={k}": {"per_iter": WORK + R0 + R1 * rounds(w) + (C0 + CW * w) / k,
                              "compute_per_iter": 0.75 * WORK, "update_per_iter": 0.25 * WORK}
               for k in MEASURED_GROUPS}
    results["bsp"] = {"per_iter": 0.0, "driver_schedule_per_iter": D * w}
    return {"results": results}


def test_rounds_are_those_of_recursive_doubling():
    assert [rounds(w) for w in (1, 2, 3, 4, 5, 8, 15, 16, 1024)] == [0, 1, 2, 2, 3, 3, 4, 4, 10]


def test_fit_recovers_the_costs_and_predicts_unmeasured_sizes():
    params = fit({w: _engine(w) for w in (1, 2, 4, 8)}, features=10)
    for key, value in {"work": WORK, "r0": R0, "r1": R1, "c0": C0, "cw": CW, "bsp_driver": D}.items():
        assert params[key] == pytest.approx(value, rel=1e-6, abs=1e-12), key
    link = {"latency": 2e-6, "bandwidth": 1e9}
    expected = WORK + R0 + R1 * 4 + (C0 + CW * 15) / 100
    assert predict(params, link, 15, "group", 100) == pytest.approx(expected, rel=1e-6)
    assert predict(params, link, 15, "bsp") == pytest.approx(WORK + 2 * (2e-6 + 88 / 1e9) + D * 15, rel=1e-6)


def test_fit_never_makes_a_cost_negative():
    # a noisy reduction that shrinks with W: no negative slope, the mean instead
    engines = {w: _engine(w) for w in (2, 4)}
    for k in MEASURED_GROUPS:
        engines[4]["results"][f"group={k}"]["per_iter"] -= 3 * R1
    params = fit(engines, features=10)
    assert params["r1"] >= 0 and params["r0"] >= 0
    assert not math.isnan(predict(params, {"latency": 1e-6, "bandwidth": 1e9}, 64, "group", 10))
