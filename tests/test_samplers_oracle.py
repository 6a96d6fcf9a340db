"""The exact-model sampler harness: closed-form scores and denoisers of Gaussian mixtures, the
NFE accounting, and DDPM/DDIM reaching the exact-sampling floor (``diffusion.samplers_oracle``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffusion.commands.samplers_oracle import main
from diffusion.oracle.mixtures import (
    ExactModel,
    GaussianMixture,
    SlicedW2,
    mixture64,
    projections,
    ring,
)
from diffusion.oracle.report import write_report
from diffusion.oracle.run import OracleConfig, run_oracle, steps_for_nfe
from diffusion.schedulers import DDPMScheduler

REPO = Path(__file__).resolve().parents[1]
f64 = torch.float64


@pytest.mark.parametrize("make", [ring, mixture64])
@pytest.mark.parametrize("a", [1.0, 0.5, 1e-3])
def test_score_is_the_gradient_of_the_noised_log_density(make, a):
    mixture = make()
    g = torch.Generator().manual_seed(0)
    x0 = mixture.sample(64, g)
    x = (a**0.5 * x0 + (1 - a) ** 0.5 * torch.randn(x0.shape, generator=g, dtype=f64))
    x.requires_grad_(True)
    mixture.log_prob(x, a).sum().backward()
    torch.testing.assert_close(mixture.score(x.detach(), a), x.grad, rtol=1e-9, atol=1e-9)


def test_score_takes_one_alpha_bar_per_sample():
    mixture, x = mixture64(), torch.randn(5, 64, dtype=f64)
    a = torch.tensor([0.9, 0.5, 0.1, 0.01, 0.999], dtype=f64)
    rows = torch.stack([mixture.score(x[i:i + 1], float(a[i]))[0] for i in range(5)])
    torch.testing.assert_close(mixture.score(x, a[:, None]), rows)


def test_exact_noise_prediction_of_one_gaussian_is_the_linear_regression():
    """x_0 ~ N(mu, s^2 I): x_t and eps are jointly Gaussian with Cov(eps, x_t) = sqrt(1 - a) I
    and Var(x_t) = a s^2 + 1 - a, so E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mu) / Var(x_t)."""
    mu, s = torch.tensor([[0.3, -0.2, 0.5]], dtype=f64), 0.2
    one = GaussianMixture("one", torch.ones(1, dtype=f64), mu, torch.tensor([s], dtype=f64))
    x = torch.randn(100, 3, dtype=f64)
    for a in (0.999, 0.7, 0.05):
        expected = (1 - a) ** 0.5 * (x - a**0.5 * mu) / (a * s**2 + 1 - a)
        torch.testing.assert_close(one.eps(x, a), expected, rtol=1e-12, atol=1e-12)


def test_the_model_reads_alpha_bar_at_the_timestep_for_every_prediction_type():
    mixture = ring()
    sched = DDPMScheduler(beta_schedule="cosine")
    x = torch.randn(6, 2, 1, 1, dtype=f64)
    eps = mixture.eps(x.reshape(6, 2), float(sched.alphas_cumprod[300])).reshape(x.shape)
    for prediction in ("epsilon", "sample", "v_prediction"):
        model = ExactModel(mixture, sched.alphas_cumprod, prediction)
        converted = DDPMScheduler(beta_schedule="cosine", prediction_type=prediction)
        for t in (300, torch.tensor(300), torch.full((6,), 300)):
            torch.testing.assert_close(converted.pred_epsilon(model(x, t), 300, x), eps)
        assert model.calls == 3
    # one timestep per sample, and a fractional one between its integer neighbours
    model = ExactModel(mixture, sched.alphas_cumprod)
    torch.testing.assert_close(model(x, torch.tensor([300] * 3 + [10] * 3))[3:],
                               model(x[3:], 10))
    a = model.alpha_bar(torch.tensor(10.5), 1)
    assert sched.alphas_cumprod[11] < a < sched.alphas_cumprod[10]
    with pytest.raises(ValueError, match=r"timesteps must lie in \[0, 999\]"):
        model(x, 1000)


def test_sliced_w2_of_a_shifted_set_is_the_projected_shift():
    """Shifting a set by c moves every projected order statistic by theta.c, so the sliced
    W2 is the root mean of (theta.c)^2 over the directions, whatever the set."""
    g = torch.Generator().manual_seed(0)
    x, shift = torch.randn(300, 5, generator=g, dtype=f64), torch.tensor([0.3, 0, -0.1, 0, 2])
    directions = projections(5, 40, g)
    expected = float((directions @ shift.to(f64)).pow(2).mean().sqrt())
    assert SlicedW2(x, directions)(x + shift) == pytest.approx(expected, rel=1e-12)
    assert SlicedW2(x, directions)(x[torch.randperm(300, generator=g)]) == 0.0
    with pytest.raises(ValueError, match="equally sized sample sets; got 299 samples"):
        SlicedW2(x, directions)(x[1:])


def test_steps_match_the_target_model_calls():
    assert [steps_for_nfe(n, 1) for n in (1, 5, 1000)] == [1, 5, 1000]
    # second order (Heun): 2 * steps - 1 calls, equal to an odd target, one short of an even
    assert [steps_for_nfe(n, 2) for n in (1, 5, 10, 1000)] == [1, 3, 5, 500]


def test_ddim_over_v_and_x0_prediction_samples_as_over_epsilon():
    runs = {p: run_oracle(OracleConfig(samplers=["ddim"], nfe=[20], n=500, datasets=["ring"],
                                       schedules=["linear"], spacings=["trailing"],
                                       prediction_types=[p], projections=50, floor_repeats=1),
                          log=lambda line: None)["runs"][0]["sw"]
            for p in ("epsilon", "sample", "v_prediction")}
    assert runs["sample"] == pytest.approx(runs["epsilon"], rel=1e-4)
    assert runs["v_prediction"] == pytest.approx(runs["epsilon"], rel=1e-4)


def test_ddpm_and_ddim_approach_the_exact_sampling_floor():
    """Ring, n = 2000, seed 0. Measured: floor 0.0285 (SW between exact sets, which spread by
    about 35%: between well separated modes the distance is dominated by how many samples
    land in each mode, a 1/sqrt(n) fluctuation, so it falls only as n^(-1/4)); ratios to it
    at 5 / 10 / 1000 model calls: DDIM 8.0 / 3.3 / 1.2, DDPM 8.5 / 3.7 / 1.6. A sampler as
    good as exact sampling is 1x with that 35% spread, so 2x is three spreads out; at 10
    calls both are past 3x. Within-mode errors are below what the distance resolves at this
    n, so the spread (RMS distance to the mode over its std, 0.99 for exact samples) checks
    them: DDIM's ODE at 1000 steps 0.965, its last step to alpha_bar = 1 narrowing the modes
    by 2%; DDPM 0.925, since its fixed_small variance, the lower bound of the true reverse
    step's, leaves the modes narrow even at 1000 steps (DDIM's at 10 calls: 3, samples
    strewn between the modes)."""
    result = run_oracle(OracleConfig(samplers=["ddim", "ddpm"], nfe=[5, 10, 1000], n=2000,
                                     datasets=["ring"], schedules=["linear"],
                                     spacings=["leading"], projections=200, floor_repeats=5),
                        log=lambda line: None)
    runs = {(r["sampler"], r["nfe"]): r for r in result["runs"]}
    assert sorted(runs) == [(s, n) for s in ("ddim", "ddpm") for n in (5, 10, 1000)]
    for sampler, spread in (("ddim", (0.95, 1.0)), ("ddpm", (0.9, 0.96))):
        at = [runs[sampler, n]["sw"] for n in (5, 10, 1000)]
        assert at[0] > at[1] > at[2], (sampler, at)
        assert runs[sampler, 10]["sw_over_floor"] > 3.0
        assert runs[sampler, 1000]["sw_over_floor"] < 2.0, (sampler, runs[sampler, 1000])
        modes = runs[sampler, 1000]["modes"]
        assert modes["covered"] == 8 and modes["near"] > 0.98, modes
        assert spread[0] < modes["spread"] < spread[1], modes
        assert runs[sampler, 10]["modes"]["spread"] > 2.0


def test_unknown_sampler_lists_the_valid_ones(capsys):
    with pytest.raises(SystemExit) as ended:
        main(["--samplers", "ddim,nope", "--out", "unused"])
    assert ended.value.code == 1
    err = capsys.readouterr().err
    assert "unknown sampler 'nope'; valid samplers are" in err and "ddim, ddpm" in err


@pytest.mark.parametrize(("args", "message"), [
    (["--nfe", "5,5"], "--nfe lists 5 more than once: each value once"),
    (["--samplers", ","], "--samplers names nothing: give at least one value."),
    (["--samplers", "euler,heun", "--eta", "0.5"],
     "--eta 0.5 changes nothing: none of euler, heun takes eta (ddim does)."),
    (["--n", "1"], "n must be an integer >= 2; got 1."),
    (["--schedules", "foo"], "unknown schedule 'foo'; valid ones are"),
    (["--out", "{tmp}/a-file"], "{tmp}/a-file is a file, not a folder: set --out to a writable "
                                "folder."),
    (["--out", "/proc/no/such"], "Cannot write to the report folder /proc/no/such"),
], ids=["repeated-nfe", "no-samplers", "eta-unused", "n", "schedule", "out-file", "out-proc"])
def test_bad_options_end_in_one_sentence_before_sampling(tmp_path, capsys, args, message):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(SystemExit) as ended:
        main(["--samplers", "ddim", "--out", str(tmp_path / "out"),
              *[a.format(tmp=tmp_path) for a in args]])
    assert ended.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: " + message.format(tmp=tmp_path)) and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_entry_point_writes_table_json_and_plot(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    args = ["--samplers", "ddim,ddpm", "--nfe", "2,5", "--n", "200", "--schedules", "linear",
            "--spacings", "trailing", "--projections", "20", "--floor-repeats", "2",
            "--out", "out"]
    done = subprocess.run([sys.executable, "-m", "diffusion.samplers_oracle", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["out/oracle.md", "out/oracle.json", "out/oracle.png"]
    record = json.loads((tmp_path / "out" / "oracle.json").read_text())
    assert len(record["runs"]) == 2 * 2 * 2 and set(record["floors"]) == {"ring", "mix64"}
    assert [r["nfe"] for r in record["runs"][:2]] == [2, 5]
    text = (tmp_path / "out" / "oracle.md").read_text()
    assert "--samplers ddim,ddpm --nfe 2,5 --n 200" in text and "--out out" in text
    assert "| ddpm | 5 |" in text and str(tmp_path) not in text
    assert (tmp_path / "out" / "oracle.png").stat().st_size > 10_000
    # a rewrite replaces the numbers and keeps the commentary written under them
    (tmp_path / "out" / "oracle.md").write_text(text + "\n## Reading\n\nhand-written\n")
    write_report(record, tmp_path / "out")
    assert (tmp_path / "out" / "oracle.md").read_text().endswith("## Reading\n\nhand-written\n")


def test_continuous_samplers_take_the_most_steps_within_the_nfe():
    from diffusion.oracle.run import continuous_steps_for_nfe
    from diffusion.sampling.sampler import make_sampler

    train = DDPMScheduler()
    # pc: 2 calls a step; ode (Heun): 2 a step, the last 1; em: 1; ald: 5 a level + 1
    for name, nfe, steps in (("pc", 10, 5), ("pc", 11, 5), ("ode", 10, 5), ("ode", 9, 5),
                             ("em", 10, 10), ("ald", 10, 1), ("ald", 11, 2)):
        sampler = make_sampler(train, name)
        assert continuous_steps_for_nfe(sampler, nfe) == steps, (name, nfe)
        sampler.set_timesteps(steps)
        assert len(sampler.timesteps) <= nfe


def test_exact_model_of_the_table_in_continuous_time_agrees_at_its_steps():
    from diffusion.processes import DiscreteProcess

    mixture = ring()
    train = DDPMScheduler(beta_schedule="cosine")
    table = ExactModel(mixture, train.alphas_cumprod)
    continuous = ExactModel(mixture, process=DiscreteProcess.of(train))
    x = torch.randn(16, mixture.dim, 1, 1)
    for t in (0, 10, 500, 999):
        torch.testing.assert_close(continuous(x, torch.tensor(float(t))), table(x, t))
    with pytest.raises(ValueError, match=r"^give the exact model one noise process"):
        ExactModel(mixture)


def test_continuous_samplers_approach_the_exact_sampling_floor():
    """Ring, linear table read in continuous time, n = 2000. Measured (floor 0.0285): at
    about 10 / 200 model calls the SW distance is 4.2x / 1.2x the floor for the ODE (Heun),
    6.6x / 2.0x for Euler-Maruyama, 3.9x / 1.7x for predictor-corrector (half its calls are
    Langevin steps) and 20x (6 calls) / 2.8x (196) for annealed Langevin, whose fixed step
    size is tuned for NCSN's sigmas, not for the far narrower ones of a DDPM table's end."""
    result = run_oracle(OracleConfig(samplers=["ald", "em", "ode", "pc"], nfe=[10, 200],
                                     n=2000, datasets=["ring"], schedules=["linear"],
                                     spacings=["trailing"], projections=200, floor_repeats=5),
                        log=lambda line: None)
    runs = {(r["sampler"], r["nfe"] > 100): r for r in result["runs"]}
    for sampler, bound in (("ode", 1.6), ("em", 2.6), ("pc", 2.3), ("ald", 3.6)):
        few, many = runs[sampler, False], runs[sampler, True]
        assert many["sw"] < few["sw"], sampler
        assert many["sw_over_floor"] < bound, (sampler, many["sw_over_floor"])
        assert many["modes"]["covered"] == 8, sampler


def test_the_adaptive_ode_runs_at_tolerances_and_reaches_the_floor(tmp_path):
    """rk45 picks its own steps: the harness runs it at each tolerance, counts the calls and
    labels the rows by tolerance. Measured (ring, linear, n = 2000, floor 0.0285 with a std of
    0.010 over exact sets): 45 calls at tol 1e-2 (1.33x the floor), 105 at 1e-4 (1.20x)."""
    result = run_oracle(OracleConfig(samplers=["rk45", "ddim"], nfe=[10], tolerances=[1e-2, 1e-4],
                                     n=2000, datasets=["ring"], schedules=["linear"],
                                     spacings=["trailing"], projections=200, floor_repeats=5),
                        log=lambda line: None)
    adaptive = {r["tolerance"]: r for r in result["runs"] if r["sampler"] == "rk45"}
    assert set(adaptive) == {1e-2, 1e-4} and all(r["target_nfe"] is None
                                                 for r in adaptive.values())
    assert adaptive[1e-2]["nfe"] < adaptive[1e-4]["nfe"] < 1000
    assert adaptive[1e-4]["sw_over_floor"] < 1.3 and adaptive[1e-4]["modes"]["covered"] == 8
    [ddim] = [r for r in result["runs"] if r["sampler"] == "ddim"]
    assert ddim["tolerance"] is None and ddim["nfe"] == 10
    write_report(result, tmp_path)
    text = (tmp_path / "oracle.md").read_text()
    assert f"| rk45 (tol 0.0001) | {adaptive[1e-4]['nfe']} |" in text
    assert "--tolerances 0.01,0.0001" in text and "at tol 0.0001 (NFE" in text
