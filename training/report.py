"""The evaluation report: fetched from an MLflow run, written as Markdown beside its plots."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from model.registry import CHALLENGER, alias_version, mlflow_client, model_version, registry_errors
from model.settings import MlflowSettings
from training.evaluation import BASELINES, Evaluation

METRIC_ORDER = ("roc_auc", "pr_auc", "brier", "log_loss", "ece", "lift_top_decile")
LOWER_IS_BETTER = {"brier", "log_loss", "ece"}


def fetch_evaluation(
    settings: MlflowSettings, out_dir: Path, *, run_id: str | None = None, version: str | None = None
) -> tuple[Evaluation, dict[str, Path], str]:
    """Download a run's evaluation (default: the current challenger's run) into ``out_dir``."""
    client = mlflow_client(settings)
    name = settings.model_name
    if run_id is None:
        version = version or alias_version(client, settings, name, CHALLENGER)
        if version is None:
            raise ValueError(f"model {name!r} has no '{CHALLENGER}' version: run `churn train` first")
        run_id, label = model_version(client, settings, name, version).run_id, f"{name} v{version}"
    else:
        label = f"run {run_id}"
    out_dir.mkdir(parents=True, exist_ok=True)
    with registry_errors(settings, f"downloading the evaluation of {label}"):
        local = Path(client.download_artifacts(run_id, "evaluation", str(out_dir)))
    evaluation = Evaluation.from_dict(json.loads((local / "evaluation.json").read_text()))
    plots = {p.stem: p for p in sorted((local / "plots").glob("*.png"))}
    return evaluation, plots, label


def comparison_rows(evaluation: Evaluation) -> list[dict]:
    rows = []
    for name, metrics in evaluation.candidates.items():
        role = "winner" if name == evaluation.winner else ("baseline" if name in BASELINES else "candidate")
        rows.append({"model": name, "role": role, **{m: metrics[m] for m in METRIC_ORDER}})
    return sorted(rows, key=lambda r: r["log_loss"])


def write_report(evaluation: Evaluation, plots: dict[str, Path], out: Path, label: str) -> Path:
    """report.md next to the plots; paths in it are relative so the folder can be moved or shared."""
    lines = [f"# churnguard evaluation: {label}", ""]
    lines += [
        f"Held-out snapshot **{evaluation.holdout_as_of}** ({evaluation.n_holdout:,} labelled customers, "
        f"churn rate {evaluation.holdout_churn_rate:.1%}). Training snapshots end one horizon before it.",
        "",
        f"**Winner: {evaluation.winner}** ({evaluation.winner_description}). {evaluation.selection.rstrip('.')}.",
        "",
        "Selection rule: lowest held-out log loss; on an exact tie, higher ROC AUC, then the simpler model.",
        "",
    ]
    if evaluation.production:
        lines += [
            f"**Registered model (production fit):** {evaluation.production['description']}. The held-out metrics "
            "below judge the selection fit, out of time; `churn backtest` judges the production protocol.",
            "",
        ]
    for w in evaluation.warnings:
        lines += [f"> **Warning:** {w}", ""]
    lines += [
        "## Classifiers on the held-out snapshot",
        "",
        "| model | role | " + " | ".join(METRIC_ORDER) + " |",
        "|" + "---|" * (len(METRIC_ORDER) + 2),
    ]
    for r in comparison_rows(evaluation):
        lines.append(f"| {r['model']} | {r['role']} | " + " | ".join(f"{r[m]:.4f}" for m in METRIC_ORDER) + " |")
    s = evaluation.survival
    if s:
        lines += [
            "",
            "## Survival model (customers active at the held-out date)",
            "",
            f"Concordance {s['survival_concordance']:.3f}; integrated Brier score (30-90 days) "
            f"{s['survival_ibs']:.4f}.",
            "",
            "| days | churned: observed (Kaplan-Meier) | predicted |",
            "|---|---|---|",
        ]
        for t in (30, 60, 90):
            lines.append(
                f"| {t} | {s[f'survival_churned_by_{t}d_observed']:.3f} | "
                f"{s[f'survival_churned_by_{t}d_predicted']:.3f} |"
            )
    v = evaluation.value
    if v:
        lines += [
            "",
            "## Value model",
            "",
            f"Spearman correlation of expected value with the spend in the window "
            f"(buyers): {v['value_spearman']:.3f}; predicted / actual total: "
            f"{v['value_ratio_predicted_to_actual']:.2f}.",
        ]
    if evaluation.backtest:
        lines += [
            "",
            "## Backtest (rolling origin)",
            "",
            "| held-out snapshot | model | n | churn rate | ROC AUC | log loss | Brier | ECE |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for b in evaluation.backtest:
            lines.append(
                f"| {b['origin']} | {b['model']} | {b['n']:,} | {b['churn_rate']:.3f} | {b['roc_auc']:.4f} "
                f"| {b['log_loss']:.4f} | {b['brier']:.4f} | {b['ece']:.4f} |"
            )
    lines += ["", "## Churn rate per snapshot", ""]
    trend = evaluation.churn_rate_trend
    if trend:
        lines += [
            f"Trend {trend['per_30_days']:+.1%} per 30 days (least squares over the snapshots); first "
            f"{trend['first']:.1%}, latest {trend['latest']:.1%}, training snapshots on average "
            f"{trend['training_mean']:.1%}.",
            "",
        ]
    lines += ["| snapshot | churn rate | labelled customers |", "|---|---|---|"]
    for d, rate in evaluation.snapshot_churn_rates.items():
        lines.append(f"| {d} | {rate:.3f} | {evaluation.labelled_per_snapshot.get(d, '')} |")
    lines += ["", "## Top features of the winner", ""]
    lines += [f"- {k}: {v:.3f}" for k, v in evaluation.top_features.items()]
    out.mkdir(parents=True, exist_ok=True)
    lines += ["", "## Plots", ""]
    for name, path in plots.items():
        target = out / path.name
        if path.resolve() != target.resolve():
            shutil.copyfile(path, target)
        lines += [f"![{name}]({path.name})", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
