"""Analysis for ``scu_quality.py``: SCU tracking from an engine run's metrics, paired statistics over
seeds, the Markdown tables, and the pass/fail checks of the quality issue. Pure Python (no torch).

A result is one JSON object per (domain, regime, seed, row) cell; see ``scu_quality.py``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ROW_LABELS = {
    "off": "λ=0 final",
    "off_es": "λ=0 early-stopped",
    "fixed1": "fixed λ=1",
    "wd0.1": "AdamW wd=0.1",
    "wd1": "AdamW wd=1",
    "scu": "SCU (defaults)",
}
ROW_ORDER = list(ROW_LABELS)


def row_order(cells: Iterable[Result]) -> list[str]:
    """The known rows in their order, then variant rows (``scu[...]``) sorted by name."""
    present = {c["row"] for c in cells}
    return [r for r in ROW_ORDER if r in present] + sorted(present - set(ROW_ORDER))


def label(row: str) -> str:
    return ROW_LABELS.get(row, f"SCU, `{row[3:]}`" if row.startswith("scu[") else row)


WARMUP_FALLBACK = 0.10  # fraction of steps treated as warm-up when the engine logs no marker
BAND_FALLBACK = 0.10  # log-units, when the metrics carry no band
OVERFIT_BITS = 0.05
BEAT_BITS = 0.05
ES_TOLERANCE_BITS = 0.02
SUB_EPOCH_TOLERANCE_BITS = 0.03
OFF_BOUNDS_MIN = 0.90
IN_BAND_MIN = 0.80

Result = Mapping[str, Any]


# -- SCU tracking -------------------------------------------------------------------------------


def tracking(metrics: Sequence[Mapping[str, Any]], config: Mapping[str, Any]) -> dict[str, Any]:
    """How the controller held lambda and S in one run (metrics logged every step)."""
    recs = sorted((m for m in metrics if "step" in m and "lambda" in m), key=lambda m: int(m["step"]))
    if not recs:
        return {"error": "no metrics"}
    total = int(recs[-1]["step"])
    notes: list[str] = []
    if any("warmup" in m for m in recs):
        warm_end = max((int(m["step"]) for m in recs if m.get("warmup")), default=0)
    elif config.get("controller_warmup") is not None:  # a fraction of the steps, or a step count
        warm = float(config["controller_warmup"])
        warm_end = math.ceil(warm * total) if warm < 1 else int(warm)
    else:
        warm_end = math.ceil(WARMUP_FALLBACK * total)
        notes.append(f"no warm-up marker: first {WARMUP_FALLBACK:.0%} of steps")
    lo, hi = float(config["lambda_min"]), float(config["lambda_max"])
    post = [m for m in recs if int(m["step"]) > warm_end]
    inside = [m for m in post if lo * (1 + 1e-9) < float(m["lambda"]) < hi * (1 - 1e-9)]
    half = [m for m in recs if int(m["step"]) > total / 2]
    if not all("s_hat" in m for m in recs):
        notes.append("no s_hat: used s")
    if not all("band" in m for m in recs):
        notes.append(f"no band: used {BAND_FALLBACK:g}")

    def in_band(m: Mapping[str, Any]) -> bool:
        s_hat = float(m.get("s_hat", m.get("s", math.nan)))
        target = float(m.get("target_s", config["target_s"]))
        band = float(m.get("band", BAND_FALLBACK))
        return s_hat > 0 and target > 0 and abs(math.log(s_hat / target)) <= band

    last = recs[-1]
    return {
        "s_star": float(last.get("target_s", config["target_s"])),
        "lambda_end": float(last["lambda"]),
        "s_hat_end": float(last.get("s_hat", last.get("s", math.nan))),
        "param_bpt_end": float(last.get("param_bpt", math.nan)),
        "lambda_bounds": [lo, hi],
        "steps": total,
        "warmup_steps": warm_end,
        "off_bounds": len(inside) / len(post) if post else math.nan,
        "in_band": sum(map(in_band, half)) / len(half) if half else math.nan,
        "post_steps": len(post),
        "half_steps": len(half),
        "unreachable_steps": sum(1 for m in post if int(m.get("unreachable", 0)) != 0),
        "notes": notes,
    }


# -- statistics ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stat:
    mean: float
    se: float  # nan with one value
    n: int

    def fmt(self, digits: int = 4, signed: bool = False) -> str:
        if self.n == 0:
            return "–"
        mean = f"{self.mean:+.{digits}f}" if signed else f"{self.mean:.{digits}f}"
        se = f"{self.se:.{digits}f}" if math.isfinite(self.se) else "n/a"
        return f"{mean} ± {se}"

    @property
    def sig(self) -> float:
        """|mean| / SE (nan with fewer than two values or zero spread)."""
        return abs(self.mean) / self.se if math.isfinite(self.se) and self.se > 0 else math.nan


def stat(values: Iterable[float]) -> Stat:
    xs = [v for v in values if math.isfinite(v)]
    if not xs:
        return Stat(math.nan, math.nan, 0)
    se = statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else math.nan
    return Stat(statistics.fmean(xs), se, len(xs))


def by_seed(cells: Iterable[Result], row: str) -> dict[int, float]:
    return {int(c["seed"]): float(c["bpt"]) for c in cells if c["row"] == row and c["status"] == "ok"}


def paired(a: Mapping[int, float], b: Mapping[int, float]) -> Stat:
    """a - b over the seeds both have."""
    return stat(a[s] - b[s] for s in sorted(set(a) & set(b)))


# -- report -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    name: str
    where: str
    status: str  # PASS | FAIL | UNSURE (criterion needs >= 2 seeds) | N/A
    detail: str


def _cell_text(c: Result) -> str:
    if c["status"] != "ok":
        return f"FAILED: {str(c.get('reason', '')).split(' (log:')[0][:90]}"
    text = f"{c['bpt']:.4f}"
    if c["row"] == "off_es" and c.get("es"):
        es = c["es"]
        text += f" (step {es['step']}, ep {es['epoch']:.2g})"
    sel = c.get("selection") or {}
    if sel.get("selected_step") is not None and c.get("last_bpt") is not None:
        text += f" (kept step {sel['selected_step']}; last step {c['last_bpt']:.4f})"
    t = c.get("tracking") or {}
    if c["row"].startswith("scu") and "lambda_end" in t:
        text += f" (S* {t['s_star']:.3g}, λ {t['lambda_end']:.3g}, {t['off_bounds']:.0%}/{t['in_band']:.0%})"
    return text


def overfits(cells: Sequence[Result]) -> tuple[bool, Stat]:
    """lambda=0 final worse than lambda=0 early-stopped by > 2 SE, or by >= 0.05 bits."""
    d = paired(by_seed(cells, "off"), by_seed(cells, "off_es"))
    return d.n > 0 and (d.mean >= OVERFIT_BITS or (d.mean > 0 and d.sig > 2)), d


def table(domain: str, regime: str, cells: Sequence[Result], base: Result | None) -> list[str]:
    ok = [c for c in cells if c["status"] == "ok"]
    seeds = sorted({int(c["seed"]) for c in cells})
    eng: Mapping[str, Any] = next((c["engine"] for c in ok if c.get("engine")), {})
    train = [c["train"] for c in ok if c.get("train") and c["row"] == "off"] or [
        c["train"] for c in ok if c.get("train")
    ]
    lines = [f"### {domain} · {regime}", ""]
    if eng:
        tt = stat(t["target_tokens"] for t in train)
        rows = stat(t["rows"] for t in train)
        lines.append(
            f"{len(seeds)} seed(s) {seeds}; train {tt.mean:,.0f} target tokens in {rows.mean:.0f} rows "
            f"(mean over seeds); batch {eng['batch_size']}×{eng['grad_accum']}, block {eng['block_size']}, "
            f"{eng['epochs']:g} epoch(s) = {eng['steps']} steps; LoRA r={eng['lora_r']} "
            f"alpha={eng['lora_alpha']:g}, lr={eng['learning_rate']:g}"
        )
    if base:
        lines.append(f"base model held-out BPT {base['bpt']:.4f}")
    lines += [
        "",
        "| row | n | held-out BPT | Δ vs base | Δ vs λ=0 final | Δ vs λ=0 ES | S* | λ end | λ off bounds | Ŝ in band |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    off, es = by_seed(cells, "off"), by_seed(cells, "off_es")
    for row in row_order(cells):
        mine = [c for c in cells if c["row"] == row]
        if not mine:
            continue
        vals = by_seed(cells, row)
        s = stat(vals.values())
        vs_base = stat(v - base["bpt"] for v in vals.values()) if base else Stat(math.nan, math.nan, 0)
        extra = ["", "", "", ""]
        tr = [
            c["tracking"] for c in mine if c["status"] == "ok" and "lambda_end" in (c.get("tracking") or {})
        ]
        if row.startswith("scu") and tr:
            extra = [
                "/".join(sorted({f"{t['s_star']:.3g}" for t in tr})),
                stat(t["lambda_end"] for t in tr).fmt(3),
                stat(t["off_bounds"] for t in tr).fmt(2),
                stat(t["in_band"] for t in tr).fmt(2),
            ]
        failed = len(mine) - len(vals)
        n = f"{s.n}" + (f" (+{failed} FAILED)" if failed else "")
        lines.append(
            f"| {label(row)} | {n} | {s.fmt()} | {vs_base.fmt(signed=True)} | "
            f"{paired(vals, off).fmt(signed=True) if row != 'off' else ''} | "
            f"{paired(vals, es).fmt(signed=True) if row != 'off_es' else ''} | " + " | ".join(extra) + " |"
        )
    lines += ["", "Every cell as measured (held-out BPT per seed):", ""]
    lines.append("| row | " + " | ".join(f"seed {s}" for s in seeds) + " |")
    lines.append("|---|" + "---|" * len(seeds))
    for row in row_order(cells):
        per_seed = {int(c["seed"]): c for c in cells if c["row"] == row}
        if per_seed:
            texts = [_cell_text(per_seed[s]) if s in per_seed else "–" for s in seeds]
            lines.append(f"| {label(row)} | " + " | ".join(texts) + " |")
    return lines


def _at_most(name: str, where: str, d: Stat, limit: float, baseline: str) -> Check:
    """PASS when the mean paired difference SCU - baseline is at most ``limit`` bits."""
    status = "PASS" if d.n and d.mean <= limit else "FAIL"
    return Check(name, where, status, f"SCU − {baseline} = {d.fmt(signed=True)} (n={d.n})")


def checks(
    groups: Mapping[tuple[str, str], Sequence[Result]], rule: Callable[[Result], float] | None = None
) -> list[Check]:
    out: list[Check] = []
    for (domain, regime), cells in groups.items():
        where = f"{domain}/{regime}"
        scu, off, es = by_seed(cells, "scu"), by_seed(cells, "off"), by_seed(cells, "off_es")
        if not any(c["row"] == "scu" for c in cells):
            out.append(Check("SCU checks", where, "N/A", "no SCU runs in the results (filtered out?)"))
            continue
        over, d_over = overfits(cells)
        if d_over.n == 0:
            out.append(
                Check("λ=0 runs (final and early-stopped)", where, "FAIL", "missing or failed: no verdict")
            )
            continue
        out.append(
            Check(
                "λ=0 overfits (final − early-stopped ≥ 0.05 or > 2 SE)",
                where,
                "YES" if over else "NO",
                f"Δ = {d_over.fmt(signed=True)} (n={d_over.n})",
            )
        )
        if over:
            d = paired(scu, off)
            if d.n == 0:
                out.append(
                    Check("SCU beats λ=0 final by ≥ 0.05 bits, > 2 SE", where, "FAIL", "no paired runs")
                )
            else:
                big = d.mean <= -BEAT_BITS
                status = "FAIL" if not big else ("UNSURE" if d.n < 2 else ("PASS" if d.sig > 2 else "FAIL"))
                out.append(
                    Check(
                        "SCU beats λ=0 final by ≥ 0.05 bits, > 2 SE",
                        where,
                        status,
                        f"SCU − λ=0 final = {d.fmt(signed=True)} (n={d.n}, |mean|/SE = {d.sig:.1f})",
                    )
                )
            out.append(
                _at_most(
                    "SCU within 0.02 bits of λ=0 early-stopped",
                    where,
                    paired(scu, es),
                    ES_TOLERANCE_BITS,
                    "λ=0 ES",
                )
            )
        elif regime == "small":
            out.append(
                Check(
                    "SCU vs λ=0 where λ=0 overfits",
                    where,
                    "N/A",
                    "λ=0 did not overfit in this cell, so the regime did not test protection",
                )
            )
        if regime == "sub-epoch":
            out.append(
                _at_most(
                    "SCU ≤ 0.03 bits worse than λ=0 (sub-epoch)",
                    where,
                    paired(scu, off),
                    SUB_EPOCH_TOLERANCE_BITS,
                    "λ=0 final",
                )
            )
        for c in sorted((c for c in cells if c["row"] == "scu"), key=lambda c: int(c["seed"])):
            name = "λ off bounds ≥ 90 % post-warm-up, Ŝ in band ≥ 80 % of last half"
            t = c.get("tracking") or {}
            if c["status"] != "ok" or "off_bounds" not in t:
                out.append(Check(name, f"{where} seed {c['seed']}", "FAIL", f"run failed: {c.get('reason')}"))
                continue
            good = t["off_bounds"] >= OFF_BOUNDS_MIN and t["in_band"] >= IN_BAND_MIN
            notes = f"; {', '.join(t['notes'])}" if t.get("notes") else ""
            out.append(
                Check(
                    name,
                    f"{where} seed {c['seed']}",
                    "PASS" if good else "FAIL",
                    f"off bounds {t['off_bounds']:.1%} of {t['post_steps']} steps after {t['warmup_steps']}, "
                    f"in band {t['in_band']:.1%} of {t['half_steps']}; S* {t['s_star']:.4g}, "
                    f"λ end {t['lambda_end']:.3g}{notes}",
                )
            )
    out.append(default_rule_check((c for cells in groups.values() for c in cells), rule))
    return out


def default_rule_check(cells: Iterable[Result], rule: Callable[[Result], float] | None = None) -> Check:
    """Every SCU run took S* from the engine's default rule (no per-cell tuning). A run shown as the
    SCU row though it set S* (``shown_as``: the shipped default run under an older engine) counts
    only when its S* is what ``rule`` (the shipped rule) gives for that run."""
    scu = [c for c in cells if c["row"] == "scu" and c["status"] == "ok" and c.get("engine")]
    if not scu:
        return Check("one default rule for S*", "all", "N/A", "no finished SCU runs")

    def by_rule(c: Result) -> bool:
        if c["engine"].get("target_s_defaulted", False):
            return True
        return bool(c.get("shown_as")) and rule is not None and abs(c["engine"]["target_s"] - rule(c)) < 1e-9

    by_hand = [c for c in scu if not by_rule(c)]
    values = sorted({f"{c['engine']['target_s']:.4g}" for c in scu})
    return Check(
        "one default rule for S* (no run sets target_s)",
        "all",
        "FAIL" if by_hand else "PASS",
        f"{len(scu) - len(by_hand)} of {len(scu)} SCU runs used the default rule; S* values {', '.join(values) or '–'}",
    )


def render_checks(found: Sequence[Check]) -> list[str]:
    lines = ["## Pass/fail", ""]
    lines += [f"- **{c.status}** {c.where}: {c.name}: {c.detail}" for c in found]
    verdicts = [c for c in found if c.status in ("PASS", "FAIL", "UNSURE")]
    failed = [c for c in verdicts if c.status == "FAIL"]
    unsure = [c for c in verdicts if c.status == "UNSURE"]
    lines.append("")
    if not verdicts:
        lines.append("**Overall: no verdict** (no applicable checks in these results)")
    elif failed:
        lines.append(f"**Overall: FAIL** ({len(failed)} of {len(verdicts)} checks failed: see FAIL above)")
    elif unsure:
        lines.append(f"**Overall: UNSURE** (no FAIL; {len(unsure)} check(s) need ≥ 2 seeds for the SE test)")
    else:
        lines.append(f"**Overall: PASS** ({len(verdicts)} checks)")
    return lines
