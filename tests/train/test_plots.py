"""Every PNG a run writes is titled (run + stage), has labelled axes and marks stage boundaries; the reward
model's plot carries held-out accuracy and says why its loss can be negative; long stages are evaluated at
their own window. The figures are checked as matplotlib objects, not pixels."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest

from ilm.config import from_dict
from ilm.train import pretrain
from ilm.train.metrics import NEGATIVE_LOSS_NOTE, Metrics, plot_rows
from ilm.train.rlhf.ppo import PLOTTED
from ilm.train.rlhf.ppo import figure as ppo_figure
from ilm.train.rlhf.synthetic import curves_figure


def _vlines(ax) -> list[float]:
    """x of every vertical line (axvline) on an axis."""
    return [line.get_xdata()[0] for line in ax.get_lines()
            if len(set(line.get_xdata())) == 1 and len(line.get_xdata()) == 2]


def _pretrain_rows():
    rows = [{"step": s, "stage": "s1" if s <= 4 else "s2", "loss": 5.0 - 0.3 * s, "lr": 1e-3, "tokens_per_s": 100.0}
            for s in range(1, 8)]
    rows[3]["eval_loss"] = 4.0
    rows[6]["eval_loss"] = 3.5
    return rows


def test_training_plot_has_title_labels_and_stage_boundaries(tmp_path):
    m = Metrics(tmp_path / "demo" / "pretrain")
    for r in _pretrain_rows():
        m.log(**r)
    out = m.plot(stage="pretraining")
    assert out is not None and out.exists()
    fig = plot_rows(plt, m.rows, "demo/pretrain: pretraining")
    try:
        assert fig._suptitle.get_text() == "demo/pretrain: pretraining"
        axes = fig.axes
        assert [ax.get_ylabel() for ax in axes] == ["train loss", "learning rate", "tokens/s"]
        assert axes[-1].get_xlabel() == "optimizer step"
        assert all(_vlines(ax) == [5] for ax in axes)  # s1 -> s2 at step 5
        assert {t.get_text() for t in axes[-1].texts} == {"s1", "s2"}  # boundaries are named
        assert "held-out" in [t.get_text() for t in axes[0].get_legend().get_texts()]
    finally:
        plt.close(fig)


def test_metrics_plot_title_names_run_and_stage(tmp_path, monkeypatch):
    seen = {}
    real = plot_rows

    def spy(plt_, rows, title):
        seen["title"] = title
        return real(plt_, rows, title)

    monkeypatch.setattr("ilm.train.metrics.plot_rows", spy)
    m = Metrics(tmp_path / "myrun" / "sft")
    m.log(1, loss=1.0, lr=1e-5, tokens_per_s=10.0)
    m.plot(stage="SFT")
    assert seen["title"] == "myrun/sft: SFT"


def test_reward_model_plot_has_held_out_accuracy_and_negative_loss_note():
    rows = [{"step": s, "loss": 0.5 - 0.2 * s, "penalty": -3.2, "lr": 1e-5, "tokens_per_s": 50.0,
             "accuracy": 0.5 + 0.05 * s} for s in range(1, 6)]
    rows[-1]["eval_accuracy"] = 0.7
    fig = plot_rows(plt, rows, "demo/rm: conditional reward model")
    try:
        acc = fig.axes[-1]
        assert acc.get_ylabel() == "pair accuracy"
        assert [t.get_text() for t in acc.get_legend().get_texts()] == ["train", "held-out"]
        assert fig.axes[0].get_title() == NEGATIVE_LOSS_NOTE and "negative" in NEGATIVE_LOSS_NOTE
    finally:
        plt.close(fig)


def test_ppo_plot_titled_with_warmup_boundary():
    rows = [{"step": s, "reward_mean": 0.1 * s, "kl": 0.01 * s} for s in range(1, 11)]
    keys = [(k, label) for k, label in PLOTTED if k in ("reward_mean", "kl")]
    fig = ppo_figure(plt, rows, keys, "demo/rlhf: PPO", warmup=4)
    try:
        assert fig._suptitle.get_text() == "demo/rlhf: PPO"
        assert [ax.get_ylabel() for ax in fig.axes] == ["RM score", "KL (per response)"]
        assert fig.axes[-1].get_xlabel() == "PPO update"
        assert all(_vlines(ax) == [4] for ax in fig.axes)
    finally:
        plt.close(fig)


def test_rounds_curves_titled_with_round_boundaries():
    per = [{"update": u, "rm_score": 0.1, "true_reward": 0.2, "loophole_rate": 0.0, "kl": 0.01} for u in (1, 2, 3)]
    fig = curves_figure(plt, [{"round": 1, "per_update": per}, {"round": 2, "per_update": per}], "demo/rlhf-rounds: RLHF rounds")
    try:
        assert fig._suptitle.get_text() == "demo/rlhf-rounds: RLHF rounds"
        assert all(ax.get_ylabel() for ax in fig.axes) and fig.axes[-1].get_xlabel()
        assert all(_vlines(ax) == [3] for ax in fig.axes)  # round 2 starts after round 1's 3 updates
    finally:
        plt.close(fig)


def test_held_out_loss_is_measured_at_the_current_stage_window(corpus, tmp_path, helpers, monkeypatch):
    windows = []
    real = pretrain.evaluate

    def spy(model, shards, window, *rest):
        windows.append(window)
        return real(model, shards, window, *rest)

    monkeypatch.setattr(pretrain, "evaluate", spy)
    cfg = from_dict(pretrain.PretrainConfig, helpers.tiny_recipe(
        corpus, tmp_path / "run", eval_every=10, checkpoint_every=1000, eval_rows=2))
    pretrain.train(cfg)
    # 60 steps: stage 1 (window 32) is steps 1..54, stages 2 and 3 (window 64) the rest
    assert windows[0] == 32 and windows[-1] == 64, windows


@pytest.mark.parametrize("n,text", [(1e3, "1.0 KB"), (5e6, "5.0 MB"), (3e12, "3.0 TB"), (512, "512 B"), (2.5e9, "2.5 GB")])
def test_funnel_bytes_in_readable_units(n, text):
    from ilm.data.report import human_bytes

    assert human_bytes(n) == text


def test_funnel_png_uses_readable_units_at_any_size():
    from ilm.data.report import funnel_figure

    ledger = {"funnel": [{"step": "normalize", "docs_in": 10, "bytes_in": 3e12}, {"step": "dedup", "docs_in": 8, "bytes_in": 2e12}],
              "input_docs": 10, "kept_docs": 5, "kept_bytes": 1.5e12}
    fig = funnel_figure(plt, ledger, "big: data funnel")
    try:
        bars = fig.axes[1]
        assert {t.get_text() for t in bars.texts} == {"3.0 TB", "2.0 TB", "1.5 TB"}
        assert bars.get_xlabel() == "bytes entering the step" and fig.axes[0].get_ylabel() == "pipeline step"
        assert "TB" in bars.xaxis.get_major_formatter()(1.5e12, 0)
        assert fig._suptitle.get_text().startswith("big: data funnel")
    finally:
        plt.close(fig)
