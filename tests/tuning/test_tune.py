"""Ray Tune searches: overrides, spaces, tables and plots, and real tiny searches on a local Ray
(a 2 x 2 grid, a 3-variant ablation through Train workers, an interrupted and resumed search)."""
from __future__ import annotations

import io
import math
import os
import sys

import numpy as np
import pandas as pd
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from tune_helpers import GRID, make_job, ship, toy_factory  # noqa: E402  (puts tests/training on the path)
from train_helpers import train_shards  # noqa: E402

from dcnn_flame.config import SearchConfig, TrainConfig, TuneJobConfig  # noqa: E402
from dcnn_flame.losses.combine import LossWeights  # noqa: E402
from dcnn_flame.tuning import report, spaces  # noqa: E402
from dcnn_flame.tuning.driver import SCORE, score_of, trial_train_config  # noqa: E402
from dcnn_flame.tuning.overrides import apply_overrides, get_value  # noqa: E402


# ---------------------------------------------------------------------------------- units


def test_overrides_copy_convert_and_name_unknown_keys():
    base = TrainConfig()
    out = apply_overrides(base, {"loss.content": 1, "model.multiscale_fusion": False, "trainer.seed": 3})
    assert out.loss.content == 1.0 and isinstance(out.loss.content, float)
    assert out.model.multiscale_fusion is False and out.trainer.seed == 3
    assert base.loss.content == 0.7 and base.model.multiscale_fusion is True  # the base is untouched
    assert get_value(out, "loss.content") == 1.0
    with pytest.raises(KeyError, match="loss.contnt"):
        apply_overrides(base, {"loss.contnt": 0.1})
    with pytest.raises(KeyError, match="'lss'"):
        apply_overrides(base, {"lss.content": 0.1})
    with pytest.raises(ValueError, match="style"):  # LossWeights re-validates
        apply_overrides(base, {"loss.style": -1.0})


def test_spaces_cover_the_cartesian_product():
    s = SearchConfig(name="g", grid={"loss.content": [0.1, 0.7], "loss.style": [0.3]},
                     variants={"full": {}, "wo_au": {"loss.au": 0.0}}, seeds=[0, 1],
                     labels={"loss.content": "alpha"})
    assert spaces.trial_count(s) == 2 * 1 * 2 * 2
    space = spaces.param_space(s)
    assert space["loss.content"] == {"grid_search": [0.1, 0.7]}
    assert space[spaces.VARIANT] == {"grid_search": ["full", "wo_au"]}
    trial = {"loss.content": 0.7, "loss.style": 0.3, spaces.VARIANT: "wo_au", spaces.SEED: 1}
    assert spaces.trial_overrides(s, trial) == {"loss.content": 0.7, "loss.style": 0.3, "loss.au": 0.0,
                                                "trainer.seed": 1}
    assert spaces.point_label(s, trial) == "wo_au, alpha=0.7, loss.style=0.3"
    with pytest.raises(ValueError, match="nothing to try"):
        spaces.check_search(SearchConfig(name="empty"))
    with pytest.raises(ValueError, match="no values"):
        spaces.check_search(SearchConfig(grid={"loss.style": []}))


def test_trial_config_is_the_base_plus_overrides_under_the_experiment(tmp_path):
    job = TuneJobConfig(name="exp", search=SearchConfig(grid={"loss.content": [0.1]}, seeds=[4]))
    job.storage.uri = str(tmp_path)
    t = trial_train_config(job, {"loss.content": 0.1, spaces.SEED: 4}, "abc_00001")
    assert t.loss.content == 0.1 and t.trainer.seed == 4 and t.name == "abc_00001"
    assert t.storage.uri == os.path.join(str(tmp_path), "tune", "exp", "trials")
    assert job.train.loss.content == LossWeights().content


def test_score_is_the_weighted_sum_and_missing_metrics_give_none():
    w = {"val/macro_f1": -0.5, "val/nonmetric": 0.5}
    assert score_of({"val/macro_f1": 0.6, "val/nonmetric": 0.2}, w, 0.5) == pytest.approx(
        0.5 * (1 - 0.6) + 0.5 * 0.2)
    assert score_of({"val/macro_f1": 0.6}, w, 0.5) is None
    assert score_of({"val/macro_f1": float("nan"), "val/nonmetric": 0.1}, w, 0.5) is None


def test_summary_matches_a_naive_mean_and_std():
    rng = np.random.default_rng(0)
    rows = [{"point": p, "m": float(rng.normal()), "k": float(rng.normal())} for p in "abcab" for _ in range(2)]
    df = pd.DataFrame(rows)
    df.loc[0, "k"] = math.nan  # a missing value is skipped, not counted as 0
    s = report.summarise(df, ["m", "k", "absent"])
    assert list(s["point"]) == ["a", "b", "c"] and "absent_mean" not in s.columns
    for p in "abc":
        vals = [r["m"] for r in rows if r["point"] == p]
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
        row = s[s["point"] == p].iloc[0]
        assert row["n"] == len(vals) and row["m_mean"] == pytest.approx(mean) and row["m_std"] == pytest.approx(std)
    a_k = [r for r in df[df["point"] == "a"]["k"] if not math.isnan(r)]
    assert s.iloc[0]["k_mean"] == pytest.approx(np.mean(a_k))
    md = report.markdown_table(s, ["m", "k"], best="b")
    lines = md.strip().splitlines()
    assert lines[0] == "| point | n | m | k |" and len(lines) == 5 and "**b**" in lines[3]


def _png_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return im.size


def test_plots_are_pngs():
    s = SearchConfig(grid={"a": [1, 2], "b": [3, 4]})
    trials = pd.DataFrame([{"point": f"a={a}, b={b}", "a": a, "b": b, "score": a * b} for a in (1, 2) for b in (3, 4)])
    summary = report.summarise(trials, ["score"])
    w, h = _png_size(report.plot_png(s, trials, summary, "score", "grid"))
    assert w > 100 and h > 100
    w, h = _png_size(report.bars_png(summary, "score", "bars"))
    assert w > 100 and h > 100


# ---------------------------------------------------------------------------------- searches


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return train_shards.make_dataset(str(tmp_path_factory.mktemp("tune_shards")), n_train=8, n_val=4)


def _read_outputs(out):
    trials = pd.read_parquet(out.files["trials"])
    summary = pd.read_parquet(out.files["summary"])
    md = open(out.files["markdown"]).read()
    return trials, summary, md


@pytest.mark.ray
@pytest.mark.slow
def test_ablation_through_train_workers_reports_each_validation(ray_local, tmp_path, shards):
    """num_workers=1: reports reach Tune through the Train callback, with the score added."""
    from dcnn_flame.tuning.driver import run

    ship()
    search = SearchConfig(name="abl", variants={"full": {}, "slow_lr": {"optim.lr": 1e-6},
                                                "wo_style": {"loss.style": 0.0}}, seeds=[0])
    job = make_job(str(tmp_path), shards, search, steps=4, name="abl3")
    out = run(job, toy_factory)
    trials, summary, md = _read_outputs(out)
    assert sorted(trials[spaces.VARIANT]) == ["full", "slow_lr", "wo_style"]
    assert (trials["status"] == "ok").all() and (trials["step"] == 4).all()
    assert list(summary["point"]) and set(summary["point"]) == {"full", "slow_lr", "wo_style"}
    w, h = _png_size(open(out.files["plot"], "rb").read())
    assert w > 100 and h > 100
    # Tune saw both validation reports (steps 2 and 4) of each trial, each with a score.
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(out.experiment_uri)
    for df in analysis.trial_dataframes.values():
        assert list(df["step"]) == [2, 4] and df[SCORE].notna().all()


@pytest.mark.ray
@pytest.mark.slow
def test_grid_search_interrupted_and_resumed_writes_table_and_heatmap(ray_local, tmp_path, shards):
    """A 2 x 2 grid, interrupted after its first trial, resumed by the same call: finished trials
    are not redone; the table and the heat map cover all four points."""
    import json
    import signal
    import subprocess
    import time

    from dcnn_flame.tuning.driver import experiment_uri, run

    ship()
    job = make_job(str(tmp_path), shards, GRID, name="resume")
    runs_dir = os.path.join(experiment_uri(job), "trials", "runs")
    # Interrupt: the search's driver runs in its own process (on this test's Ray cluster); Ctrl-C
    # once the first trial has finished.
    address = ray_local.get_runtime_context().gcs_address
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "tune_script.py"), str(tmp_path), shards, address],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        exp = experiment_uri(job)

        def tune_finished() -> list[str]:
            """Trial directories whose result.json holds the last step's report (step 2)."""
            out = []
            for d in (os.listdir(exp) if os.path.isdir(exp) else []):
                path = os.path.join(exp, d, "result.json")
                if os.path.exists(path) and any(json.loads(line).get("step") == 2 for line in open(path)
                                                if line.strip().endswith("}")):
                    out.append(d)
            return out

        done = []
        while time.monotonic() < deadline and proc.poll() is None and not done:
            time.sleep(0.5)
            done = tune_finished()
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert done, "no trial finished within 300 s"
        proc.send_signal(signal.SIGINT)
        log = proc.communicate(timeout=180)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    finished = sorted(t for t in os.listdir(runs_dir) if os.path.isdir(os.path.join(runs_dir, t, "checkpoint_00000002")))
    assert 1 <= len(finished) < 4, log[-3000:]
    stamps = {t: os.path.getmtime(os.path.join(runs_dir, t, "checkpoint_00000002")) for t in finished}
    ckpts = {t: sorted(os.listdir(os.path.join(runs_dir, t))) for t in finished}

    second = run(job, toy_factory)  # the same command again: resume
    trials = second.trials
    assert len(trials) == 4 and (trials["status"] == "ok").all() and (trials["step"] == 2).all()
    for t in finished:  # finished trials were not run again
        assert os.path.getmtime(os.path.join(runs_dir, t, "checkpoint_00000002")) == stamps[t]
        assert sorted(os.listdir(os.path.join(runs_dir, t))) == ckpts[t]
    assert sorted(zip(trials["optim.lr"], trials["loss.style"])) == [(1e-3, 0.1), (1e-3, 0.3), (1e-2, 0.1),
                                                                      (1e-2, 0.3)]
    # The score is the reported validation vertex error (weights {val/vertex_error: 1}).
    np.testing.assert_allclose(trials[SCORE], trials["val/vertex_error"])
    assert (trials["val/vertex_error"] > 0).all()
    summary = pd.read_parquet(second.files["summary"])
    assert len(summary) == 4 and (summary["n"] == 1).all()
    assert second.best_point == summary.loc[summary["score_mean"].idxmin(), "point"]
    md = open(second.files["markdown"]).read()
    assert "| point | n | score | val/vertex_error | val/mean_face_error |" in md and "lr=0.01, beta=0.3" in md
    w, h = _png_size(open(second.files["plot"], "rb").read())
    assert w > 100 and h > 100
    assert sorted(os.listdir(runs_dir)) == sorted(trials["trial_id"])  # one training run per trial
    job.resume = False
    with pytest.raises(ValueError, match="already holds a search"):
        run(job, toy_factory)
    job.resume, job.train.trainer.num_workers = True, 0
    with pytest.raises(ValueError, match="num_workers"):
        run(job, toy_factory)


def test_the_ablation_search_uses_the_model_ablation_switches():
    """configs/search/ablation.yaml and dcnn_flame.model.config.ABLATIONS must not drift apart."""
    import yaml

    from dcnn_flame.model.config import ABLATIONS

    path = os.path.join(os.path.dirname(os.path.dirname(HERE)), "configs", "search", "ablation.yaml")
    variants = yaml.safe_load(open(path))["variants"]
    same = {"full": "full", "wo_expr_wo_au": "wo_expr_wo_au", "w_expr_wo_au": "wo_au", "wo_expr_w_au": "wo_expr",
            "wo_style": "wo_style", "wo_id_encoder": "wo_id_encoder", "wo_multiscale_fusion": "wo_multiscale_fusion"}
    assert set(variants) == set(same)
    for name, ours in variants.items():
        model_kw, loss_kw = ABLATIONS[same[name]]
        want = {**{f"model.{k}": v for k, v in model_kw.items()}, **{f"loss.{k}": v for k, v in loss_kw.items()}}
        assert ours == want, name
