"""What the server takes of the final evaluation: finite metrics only, and an
assembled model only where the sites' weights agree with the federation's average."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from mmvm.federation.handover import assemble, checked_metrics
from mmvm.federation.local import LocalTransport
from tests.support.federate import federate, make_sites, plain_endpoints, split


def test_metrics_that_are_not_finite_numbers_are_left_out_and_said():
    kept, problems = checked_metrics({"probe/m0": 0.5, "rows": 12, "recon": float("nan"),
                                      "coherence": "0.9", "flag": True, 7: 1.0,
                                      "x" * 300: 1.0})
    assert kept == {"probe/m0": 0.5, "rows": 12}
    assert len(problems) == 5 and "metric 'recon' = 'nan' is not a finite number" in problems


def _arrays(value: float) -> dict[str, np.ndarray]:
    return {"encoders.m0.w": np.full((2, 2), value, np.float32),
            "encoders.m0.bn.num_batches_tracked": np.array(3 + value, np.int64)}


SITES = {"k0": ("a", ("m0",)), "k1": ("b", ("m0",)), "k2": ("c", ("m1",))}
M1 = {"encoders.m1.w": np.ones(3, np.float32)}


def test_a_shared_modality_is_the_average_every_holder_loaded():
    """float64 means as the server computed them equal what a float32 model loaded."""
    mean = {"m0": {"encoders.m0.w": np.full((2, 2), 0.1, np.float64)}}
    handed = {"k0": {"m0": _arrays(np.float32(0.1))}, "k1": {"m0": _arrays(np.float32(0.1))},
              "k2": {"m1": M1}}
    state, why = assemble(SITES, handed, {"m0": ["k0", "k1"]}, mean)
    assert why is None and np.array_equal(state["encoders.m0.w"], np.full((2, 2), 0.1,
                                                                           np.float32))
    assert set(state) == {"encoders.m0.w", "encoders.m0.bn.num_batches_tracked",
                          "encoders.m1.w"}


@pytest.mark.parametrize("averaged", [True, False])
def test_a_holder_that_hands_in_other_weights_of_a_shared_modality_is_refused(averaged):
    """The last holder to answer used to decide a shared modality's weights alone;
    without an average, holders that disagree make no single model either."""
    mean = {"m0": {"encoders.m0.w": np.full((2, 2), 0.1, np.float32)}} if averaged else {}
    handed = {"k0": {"m0": _arrays(0.1)}, "k1": {"m0": _arrays(0.7)}}
    state, why = assemble(SITES, handed, {"m0": ["k0", "k1"]}, mean)
    if averaged:
        assert state == {} and why == ("site b handed in weights of shared modality 'm0' "
                                       "other than the average every holder loaded "
                                       "(encoders.m0.w)")
    else:  # nobody to blame: no average was ever formed
        assert state == {} and why == ("shared modality 'm0' was never averaged, and its "
                                       "holders a and b keep different weights: no single "
                                       "model")


@pytest.mark.parametrize("dtype", [np.int64, np.bool_, np.float16])
def test_a_shared_tensor_handed_in_as_another_dtype_is_compared_all_the_same(dtype):
    """An integer array of 7s for a float parameter used to skip the comparison (only
    float arrays were compared) and be cast into the model; float16 of the same
    values is a fine representation only if the values agree."""
    mean = {"m0": {"encoders.m0.w": np.full((2, 2), 0.1, np.float32)}}
    forged = {**_arrays(0.1), "encoders.m0.w": np.full((2, 2), 7, dtype)}
    handed = {"k0": {"m0": _arrays(0.1)}, "k1": {"m0": forged}}
    state, why = assemble(SITES, handed, {"m0": ["k0", "k1"]}, mean)
    assert state == {} and why.endswith("(encoders.m0.w)") and "site b" in why


def test_holders_that_agree_without_an_average_make_a_model():
    handed = {"k0": {"m0": _arrays(0.3)}, "k1": {"m0": _arrays(0.3)}}
    state, why = assemble(SITES, handed, {"m0": ["k0", "k1"]}, {})
    assert why is None and np.array_equal(state["encoders.m0.w"], _arrays(0.3)["encoders.m0.w"])


def test_parameters_of_another_sites_modality_are_refused():
    handed = {"k0": {"m0": _arrays(0.1)}, "k2": {"m1": M1, "m0": _arrays(0.1)}}
    assert assemble(SITES, handed, {"m0": ["k0", "k1"]}, {})[1] == (
        "site c handed in parameters of 'm0', not its own")


def test_a_tampering_site_leaves_the_run_without_a_model_and_with_its_name(
        tiny_polymnist, tiny_config, tmp_path):
    """Horizontal layout: every site holds every modality. One site's evaluation reply
    carries a shifted tensor and a NaN metric: the run ends, written, with no assembled
    model and both problems named; the honest run assembles the averaged weights."""
    torch.set_num_threads(1)
    cfg = tiny_config(tiny_polymnist, epochs=1)
    specs, root = split(tiny_polymnist, tmp_path, "horizontal")
    sites = make_sites(cfg, specs, root)
    liar = sorted(sites)[-1]

    class Tamper(LocalTransport):
        def exchange(self, requests, wait=None, need=1):
            out = super().exchange(requests, wait, need)
            r = out.get(liar)
            if r is not None and getattr(r, "kind", "") == "evaluate":
                m, arrays = next(iter(r.model.items()))
                name = next(n for n, v in arrays.items() if v.dtype.kind == "f")
                model = {**r.model, m: {**arrays, name: arrays[name] + 1.0}}
                out[liar] = dataclasses.replace(r, model=model,
                                                metrics={**r.metrics, "probe/m0": np.nan})
            return out

    honest = federate(cfg, plain_endpoints(sites), collect_model=True)
    assert honest.model_refused is None and honest.model_state
    sites = make_sites(cfg, specs, root)
    endpoints = plain_endpoints(sites)
    res = federate(cfg, endpoints, Tamper(endpoints), collect_model=True)
    name = sites[liar].name
    assert res.model_state is None
    assert res.model_refused.startswith(f"site {name} handed in weights of shared modality")
    assert "other than the average every holder loaded" in res.model_refused
    assert res.evaluation_errors == {name: "metric 'probe/m0' = 'nan' is not a finite "
                                           "number (left out)"}
    assert "probe/m0" not in res.evaluation[liar]


def test_a_probe_accuracy_outside_0_1_is_left_out():
    """1e300 would make the run's probe_mean 1e295."""
    kept, problems = checked_metrics({"probe/m0": 1e300, "majority/m0": -0.1,
                                      "probe/m1": 1.0})
    assert kept == {"probe/m1": 1.0} and len(problems) == 2
    assert "metric 'probe/m0' = 1e+300 is not a fraction in [0, 1]" in problems
