"""The error budget and the calibration of q's settings (diractrap.calibration), against direct computations, the
closed form of a Gaussian prior's ODE estimate, and the demo network on images that are not demo crops.

The Gaussian prior makes the solver part checkable exactly: for given probes the ODE estimate converges to
:func:`gaussian_flow_potential`, so the calibration's "solver" error (candidate against the reference, same probes)
must match the candidate's error against that closed form, up to the reference's own (tiny) solver error.
"""

import json
import math
import runpy
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from diractrap.calibration import (REFERENCE, AuditError, CalibrationError, ErrorBudget, Ladder, audit, blurred_grid,
                                   assess, calibrate, check_audits, choose, cost_model, read_calibration, solve_ladder)
from diractrap.potential import PotentialOptions, gaussian_flow_potential, make_probes, potential
from diractrap.sweeps import COLUMNS
from conftest import ROOT
from test_potential import astronaut, power_law

pytestmark = pytest.mark.usefixtures("one_thread")

GRID = [0.0, 0.5, 1.0, 2.0]  # Gaussian blur std in pixels, K = 9


# ---------------------------------------------------------------------------------------------------------------
# The budget's arithmetic, against loops written out
# ---------------------------------------------------------------------------------------------------------------


def direct_parts(ref, cand, cand32, M, quantity, coverage):
    """The three parts by explicit loops over images, thetas and probes (the definition in the module docstring)."""
    I, T, Mr = ref.shape
    out = {k: np.zeros((I, T - 1)) for k in ("solver", "precision", "hutchinson")}
    for i in range(I):
        for k in range(1, T):
            base = 0 if quantity == "differences" else k - 1
            d_ref = [ref[i, k, m] - ref[i, base, m] for m in range(Mr)]
            d_32 = [cand32[i, k, m] - cand32[i, base, m] for m in range(M)]
            d_c = [cand[i, k, m] - cand[i, base, m] for m in range(M)]
            out["solver"][i, k - 1] = abs(sum(a - b for a, b in zip(d_32, d_ref[:M])) / M)
            out["precision"][i, k - 1] = abs(sum(a - b for a, b in zip(d_c, d_32)) / M)
            mean = sum(d_ref) / Mr
            sd = math.sqrt(sum((d - mean) ** 2 for d in d_ref) / (Mr - 1))
            out["hutchinson"][i, k - 1] = coverage * sd / math.sqrt(M)
    return out


@pytest.mark.parametrize("quantity", ["differences", "steps"])
@pytest.mark.parametrize("M", [1, 2])
def test_budget_parts_match_a_direct_computation(quantity, M):
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(3, 5, 8)) * 10 - np.arange(5)[None, :, None] * 100
    cand32 = ref + rng.normal(size=ref.shape)
    cand = cand32 + 0.1 * rng.normal(size=ref.shape)
    budget = ErrorBudget(beta=0.25, quantity=quantity, coverage=2.0)
    got = budget.parts(ref, cand[..., :2], cand32[..., :2], M)
    want = direct_parts(ref, cand, cand32, M, quantity, 2.0)
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got["total"], sum(want.values()), rtol=1e-12)


def test_values_ratio_is_the_differences_bound_over_epsilon_of_each_difference():
    rng = np.random.default_rng(2)
    ref = rng.normal(size=(2, 4, 8)) - np.arange(4)[None, :, None] * 50
    cand = ref + rng.normal(size=ref.shape)
    budget = ErrorBudget(beta=0.25, epsilon=0.1)
    order, values = budget.ratios(ref, cand[..., :2], None, 1)
    want = direct_parts(ref, cand, cand, 1, "differences", 2.0)
    d_ref = ref.mean(-1)[:, 1:] - ref.mean(-1)[:, :1]
    assert values == pytest.approx((sum(want.values()) / (0.1 * np.abs(d_ref))).max(), rel=1e-12)
    steps = direct_parts(ref, cand, cand, 1, "steps", 2.0)
    assert order == pytest.approx((sum(steps.values()) / (0.5 * np.abs(np.diff(ref.mean(-1), axis=1)))).max())
    assert ErrorBudget(epsilon=None).ratios(ref, cand[..., :2], None, 1)[1] == 0


def test_allowed_error_is_twice_beta_of_each_step_or_beta_of_the_smallest_for_differences():
    q = np.array([[0.0, -10.0, -14.0, -30.0], [5.0, 3.0, -40.0, -41.5]])  # steps 10, 4, 16 and 2, 43, 1.5
    assert ErrorBudget(beta=0.25).allowed(q).tolist() == [[5.0, 2.0, 8.0], [1.0, 21.5, 0.75]]
    assert ErrorBudget(beta=0.25, quantity="differences").allowed(q).tolist() == [[1.0] * 3, [0.375] * 3]
    assert ErrorBudget(beta=0.25).allowed(q[..., None].repeat(3, -1)).shape == (2, 3)  # per-probe values: means


def test_budget_and_ladder_refuse_nonsense():
    for bad in (dict(beta=0), dict(beta=float("nan")), dict(epsilon=0), dict(quantity="levels"), dict(coverage=-1)):
        with pytest.raises(ValueError):
            ErrorBudget(**bad)
    with pytest.raises(ValueError, match="precision"):
        Ladder(precisions=("fp64",))
    assert Ladder(precisions=("bf16", "tf32")).for_device("cpu").precisions == ("fp32", "bf16")  # no TF32 on a CPU
    assert Ladder(precisions=("tf32",)).for_device("cuda").precisions == ("fp32", "tf32")


def test_cost_model_uses_measurements_where_given_and_rates_elsewhere():
    c = cost_model("cuda", gflop=100.0, measured={"bf16": 0.5})
    assert c.seconds_per_forward["bf16"] == 0.5 and "measured" in c.source["bf16"]
    assert c.seconds_per_forward["fp32"] == pytest.approx(100e9 / (67e12 * 0.3))
    assert c.seconds(nfe=10, n_probes=2, precision="bf16") == pytest.approx(10 * 3 * 0.5)


# ---------------------------------------------------------------------------------------------------------------
# The calibration on an exact Gaussian prior (16 x 16 x 3): choice, fallback to the reference, refusal
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gaussian_case():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the function-scoped one_thread (conftest says why)
    try:
        return _gaussian_case()
    finally:
        torch.set_num_threads(n)


def _gaussian_case():
    prior = power_law(16)
    images = astronaut(16, n=2)
    ladder = Ladder(steps=(8, 32, 64), n_probes=(1, 2), precisions=("fp32",))  # 64 steps meet beta = 1/4 here
    solves = solve_ladder(prior, images, "gaussian", GRID, kernel_size=9, ladder=ladder, model="gauss16")
    return prior, images, solves, choose(solves, ErrorBudget(beta=0.25))


def test_calibration_solver_part_matches_the_closed_form_of_the_gaussian_flow(gaussian_case):
    prior, images, solves, cal = gaussian_case
    x = blurred_grid(images, "gaussian", GRID, kernel_size=9)
    ids = [i for i in range(2) for _ in GRID]
    probes = make_probes(x.shape, 2, seed=REFERENCE.seed, item_ids=ids)
    exact = torch.stack([gaussian_flow_potential(prior, x, probes=probes[:, m:m + 1]) for m in range(2)], -1)
    exact = exact.numpy().reshape(2, len(GRID), 2)
    budget = cal.budget
    ref = solves.q["reference"][..., :2]
    for M in (1, 2):  # the reference's own solver error, tsit5 at 1e-5 (< 0.01 nats here): the only difference
        ref_err = np.abs((budget.transform(ref) - budget.transform(exact))[..., :M].mean(-1)).max()
        assert ref_err < 1e-2
        for steps in solves.ladder.steps:
            q = solves.q[f"heun{steps}-fp32"]
            vs_exact = np.abs((budget.transform(q) - budget.transform(exact))[..., :M].mean(-1)).max()
            row = cal.table[(cal.table.steps == steps) & (cal.table.n_probes == M)].iloc[0]
            assert abs(row.err_solver - vs_exact) <= ref_err + 1e-9 * vs_exact
            assert row.err_precision == 0  # fp32 against itself
    # and the Heun solves are the library's potential at those settings (probe m the same in every solve)
    q8 = potential(prior, x, solver="heun", steps=8, rho=solves.ladder.rho, n_probes=1, item_ids=ids,
                   seed=REFERENCE.seed).q.numpy().reshape(2, len(GRID))
    np.testing.assert_array_equal(q8, solves.q["heun8-fp32"][..., 0])


def test_choice_is_the_cheapest_candidate_that_meets_the_budget(gaussian_case):
    _, _, solves, cal = gaussian_case
    ladder = solves.ladder
    t = cal.table
    assert len(t) == len(ladder.steps) * len(ladder.n_probes) + 1 and t["reference"].sum() == 1
    assert (t["meets"] == (t["ratio"] <= 1)).all()
    ok = t[t["meets"]]
    chosen = t[t["chosen"]]
    assert len(chosen) == 1 and chosen.iloc[0]["seconds"] == ok["seconds"].min()
    cheapest = ok[ok["seconds"] == ok["seconds"].min()]  # a closed-form prior has no FLOPs: then evaluations decide
    assert chosen.iloc[0]["forward_equivalents"] == cheapest["forward_equivalents"].min()
    assert (t["forward_equivalents"] == t["nfe"] * (1 + t["n_probes"])).all()
    c = cal.choice
    assert c["solver"] == "heun" and (c["steps"], c["n_probes"]) == tuple(chosen.iloc[0][["steps", "n_probes"]])
    json.dumps(cal.record())  # what the workflow writes


def test_headroom_asks_the_calibration_images_for_a_fraction_of_the_budget(gaussian_case):
    _, _, solves, cal = gaussian_case
    roomy = choose(solves, ErrorBudget(beta=0.25, headroom=2))
    t, t1 = roomy.table, cal.table
    np.testing.assert_array_equal(t["ratio"], t1["ratio"])  # the same errors, judged against half the budget
    assert (t["meets"] == (t["ratio"] <= 0.5)).all() and (t["headroom"] == 2).all()
    chosen = t[t["chosen"]].iloc[0]
    assert chosen["seconds"] == t[t["meets"]]["seconds"].min() and chosen["ratio"] <= 0.5
    assert t["meets"].sum() <= t1["meets"].sum()
    assert roomy.record()["budget"]["headroom"] == 2  # what the audits read back (they judge at the budget itself)
    for bad in (0.5, math.inf, "2"):
        with pytest.raises(ValueError, match="headroom must be a finite number >= 1"):
            ErrorBudget(headroom=bad)


_NETS = {}


def network_solves_net(solves):
    return _NETS[id(solves)]


@pytest.fixture(scope="module")
def network_solves():
    """A tiny EDM network with random weights on 8 x 8 crops: not linear, so the probes' noise does not cancel
    in the differences and the reference's own Hutchinson part is > 0."""
    from diractrap.models.edm import EDMPrecond, freeze

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        net = freeze(EDMPrecond(8, 3, model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[]))
        with torch.no_grad():  # EDM initialises its output layer to zero (D linear in x): perturb every weight
            for w in net.parameters():
                w.add_(0.05 * torch.randn_like(w))
        solves = solve_ladder(net, astronaut(8, n=2), "gaussian", GRID, kernel_size=5, model="tiny",
                              ladder=Ladder(steps=(4, 8), n_probes=(1, 2), precisions=("fp32", "bf16")))
        _NETS[id(solves)] = net
        return solves
    finally:
        torch.set_num_threads(n)


def test_a_budget_only_the_reference_meets_chooses_the_reference(network_solves):
    t, _ = assess(network_solves, ErrorBudget(beta=0.25, epsilon=None))  # the order part alone: ratios ~ 1 / beta
    ref_ratio = t.loc[t["reference"], "ratio"].iloc[0]
    other = t.loc[~t["reference"], "ratio"].min()
    assert 0 < ref_ratio < other  # 8 probes against at most 2: its Hutchinson part alone is smaller
    beta = 0.25 * math.sqrt(ref_ratio * other)  # the ratios scale as 1 / beta: between the two
    cal = choose(network_solves, ErrorBudget(beta=beta, epsilon=None))
    assert cal.table["meets"].tolist() == [False] * (len(t) - 1) + [True]
    assert cal.table.loc[cal.table["chosen"], "reference"].item()
    assert cal.choice == REFERENCE.as_dict()
    assert (cal.table.loc[cal.table["precision"] == "bf16", "err_precision"] > 0).all()  # bf16 is measured


def test_a_budget_nothing_meets_stops_naming_the_model_and_the_errors(network_solves):
    t, _ = assess(network_solves, ErrorBudget(beta=0.25, epsilon=None))
    ref_ratio = t.loc[t["reference"], "ratio"].iloc[0]
    with pytest.raises(CalibrationError, match=r"calibration of tiny \(gaussian\): no setting meets") as e:
        choose(network_solves, ErrorBudget(beta=0.25 * ref_ratio / 2, epsilon=None))
    assert "error bound / allowed error" in str(e.value) and "the closest candidate (heun" in str(e.value)


# ---------------------------------------------------------------------------------------------------------------
# The audit and the merge's check
# ---------------------------------------------------------------------------------------------------------------


def test_audit_recomputes_the_smallest_step_at_the_reference_and_fails_over_budget(network_solves):
    net = network_solves_net(network_solves)
    cal = choose(network_solves, ErrorBudget(beta=1.0, epsilon=None))  # random weights: no Figure 3 to draw
    record = cal.record()
    images = astronaut(8, n=2)
    x = blurred_grid(images[:1], "gaussian", GRID, kernel_size=5)
    choice = PotentialOptions.make(cal.choice)
    q = potential(net, x, options=choice, item_ids=[0] * len(GRID)).q.numpy()
    rec = audit(net, images[0], q, "gaussian", GRID, calibration=record, item_id=0, kernel_size=5)
    # by hand: the smallest step of the chunk's values, recomputed at the reference with its probes
    k = int(np.argmin(np.abs(np.diff(q))))
    assert rec["thetas"] == f"{GRID[k]:g} {GRID[k + 1]:g}"
    ref = potential(net, x[k:k + 2], options=REFERENCE, item_ids=[0, 0]).q_probes.numpy()
    step_ref = ref[1] - ref[0]
    M = choice.n_probes
    assert rec["err_solver_precision"] == pytest.approx(abs((q[k + 1] - q[k]) - step_ref[:M].mean()), rel=1e-9)
    assert rec["err_hutchinson"] == pytest.approx(2 * step_ref.std(ddof=1) / math.sqrt(M), rel=1e-9)
    assert rec["allowed"] == pytest.approx(2 * 1.0 * abs(step_ref.mean()), rel=1e-9)  # 2 beta of the step itself
    assert rec["passes"] == (rec["err_bound"] <= rec["allowed"])
    # a tighter budget on the same numbers: over budget, and the merge's check names the chunk
    tight = dict(record, budget=dict(record["budget"], beta=1e-6))
    bad = audit(net, images[0], q, "gaussian", GRID, calibration=tight, item_id=0, kernel_size=5)
    assert not bad["passes"] and bad["err_bound"] == pytest.approx(rec["err_bound"])
    check_audits([dict(rec, passes=True, chunk="tiny/gaussian/chunk0.audit.json")])  # within budget: no error
    with pytest.raises(AuditError, match=r"tiny/gaussian/chunk1\.audit\.json: item 0, error bound"):
        check_audits([dict(rec, passes=True, chunk="c0"), dict(bad, chunk="tiny/gaussian/chunk1.audit.json")])


def test_read_calibration_names_the_file_and_its_hash(tmp_path, gaussian_case):
    path = tmp_path / "m.calibration.json"
    path.write_text(json.dumps(gaussian_case[3].record()))
    record, settings = read_calibration(path)
    assert record["choice"] == gaussian_case[3].choice
    assert settings.startswith("calibrated m.calibration.json sha256:") and len(settings.split(":")[1]) == 12


# ---------------------------------------------------------------------------------------------------------------
# The demo network: calibrated on demo crops, checked on photographs that are not demo crops against an
# independent reference (another tableau, tighter tolerance, other probes)
# ---------------------------------------------------------------------------------------------------------------


def not_demo_crops(size: int) -> torch.Tensor:
    """Two crops of scikit-image's grey "camera" photograph (not a picture of diractrap.data.DEMO_SOURCES), area-
    averaged to size x size and repeated over three channels: (2, 3, size, size) in [0, 1]."""
    import skimage.data

    img = torch.from_numpy(skimage.data.camera()).double()[None, None] / 255
    crops = [img[..., 0:256, 0:256], img[..., 256:512, 128:384]]
    return torch.cat([torch.nn.functional.adaptive_avg_pool2d(c, size) for c in crops]).expand(-1, 3, -1, -1).float()


def test_chosen_settings_meet_the_budget_on_images_that_are_not_demo_crops():
    from diractrap.data import demo_images
    from diractrap.models import get_denoiser

    den = get_denoiser("demo")
    grid = [0.0, 1.0, 2.0]
    # photographs unlike the demo crops need twice the calibration crops' ratios (BENCHMARKS.md "potential"), and
    # the under-resolved Heun 8 grid varies more from image to image: two calibration crops and a headroom of 2
    budget = ErrorBudget(beta=0.25, headroom=2)
    cal = calibrate(den, demo_images("test", 32)[4:6], "gaussian", grid, item_ids=[4, 5], budget=budget,
                    ladder=Ladder(steps=(8, 16), n_probes=(1, 2), precisions=("fp32", "bf16")), model="demo")
    choice = PotentialOptions.make(cal.choice)
    others = not_demo_crops(32)
    x = blurred_grid(others, "gaussian", grid)
    ids = [100 + i for i in range(2) for _ in grid]
    q = potential(den, x, options=choice, item_ids=ids).q.numpy().reshape(2, -1)
    truth = potential(den, x, solver="dopri5", rtol=1e-6, atol=1e-6, n_probes=16, seed=7,
                      item_ids=ids).q.numpy().reshape(2, -1)
    err = np.abs(np.diff(q, axis=1) - np.diff(truth, axis=1))  # (image, step): the order part
    allowed = budget.allowed(truth)
    assert (err <= allowed).all(), (err, allowed, cal.choice)
    d_q, d_truth = q[:, 1:] - q[:, :1], truth[:, 1:] - truth[:, :1]  # the values part: Figure 3's differences
    assert (np.abs(d_q - d_truth) <= budget.allowed_values(truth)).all(), (d_q, d_truth, cal.choice)
    assert (np.diff(q, axis=1) < 0).all() and (np.diff(truth, axis=1) < 0).all()  # Claim 1's order, both ways


def test_the_merge_job_fails_naming_the_chunk_whose_audit_broke_the_budget(tmp_path):
    """workflow/scripts/merge_sweep.py run as snakemake runs it (a ``snakemake`` object in its globals): one audit
    over budget stops the merge with the chunk's path and numbers, and no merged table is written."""
    tables, audits = [], []
    for c, passes in ((0, True), (1, False)):
        row = {col: 0 for col in COLUMNS} | dict(model="m", prior="diffusion", family="gaussian", item=c, theta=0.0,
                                                  angle=float("nan"), image=str(c))
        tables.append(tmp_path / f"chunk{c}.parquet")
        pd.DataFrame([row], columns=COLUMNS).astype({"image": str}).to_parquet(tables[-1])
        audits.append(tmp_path / f"chunk{c}.audit.json")
        record = dict(family="gaussian", item=c, thetas="1 2", err_solver_precision=3.0, err_hutchinson=4.0,
                      err_bound=7.0, allowed=10.0 if passes else 5.0, ratio=0.7 if passes else 1.4, passes=passes)
        audits[-1].write_text(json.dumps(dict(audit=record)))
    out = SimpleNamespace(table=str(tmp_path / "m.parquet"), audits=str(tmp_path / "m.audit.csv"))
    job = SimpleNamespace(input=SimpleNamespace(tables=[str(t) for t in tables], audits=[str(a) for a in audits]),
                          output=out, log=[str(tmp_path / "merge.log")])
    stdout, stderr = sys.stdout, sys.stderr
    try:
        with pytest.raises(AuditError, match=r"1 sweep chunk\(s\) broke the error budget:\n  .*chunk1\.audit\.json: "
                                             r"item 1, error bound 7 nats \(solver \+ precision 3, Hutchinson 4\) > "
                                             r"allowed 5"):
            runpy.run_path(str(ROOT / "workflow/scripts/merge_sweep.py"), init_globals={"snakemake": job})
    finally:
        sys.stdout, sys.stderr = stdout, stderr  # the script routes both to its log
    assert not (tmp_path / "m.parquet").exists()  # nothing merged
    assert len(pd.read_csv(tmp_path / "m.audit.csv")) == 2  # the audits themselves are kept, for the record
