"""scu_quality's --variant rows: self-describing names, engine settings, and their place in the
report next to the stored baseline rows (pure Python: no engine run)."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks import quality_report as qr
from benchmarks import scu_quality as sq


def test_variant_name_spells_its_settings_in_one_order() -> None:
    a = sq.variant("target_s=0.8,kp=0.3")
    b = sq.variant(" kp=0.3 , target_s=0.8")
    assert a == b == ("scu[kp=0.3,target_s=0.8]", {"scu": "on", "kp": "0.3", "target_s": "0.8"})


@pytest.mark.parametrize("spec", ["target_s", "target_s=", "=0.8", "target_s=0.8,"])
def test_bad_variant_is_refused(spec: str) -> None:
    with pytest.raises(SystemExit, match="key=value"):
        sq.variant(spec)


def test_variants_join_the_plan_but_not_the_configuration_hash() -> None:
    args = sq.parse_args(["--quick", "--rows", "off", "--variant", "target_s=0.7"])
    plan = sq.make_plan(args)
    assert plan.runs == ("off", "scu[target_s=0.7]")
    model = {"name": "m", "config_sha": "x", "weights_bytes": 1}
    engine = {"commit": "c", "source_sha": "s"}
    plain = sq.make_plan(sq.parse_args(["--quick"]))
    assert sq.config_hash(plan, model, engine, {}) == sq.config_hash(plain, model, engine, {})


def _cell(row: str, seed: int, bpt: float, **extra: Any) -> dict[str, Any]:
    return {"row": row, "seed": seed, "bpt": bpt, "status": "ok", **extra}


def test_filters_do_not_change_the_configuration_hash() -> None:
    """Invocations running parts of one configuration (a regime, some rows, a range of seeds)
    share its cells; a size change does not."""
    model, engine = {"name": "m"}, {"source_sha": "e"}

    def digest(*argv: str) -> str:
        return sq.config_hash(sq.make_plan(sq.parse_args(list(argv))), model, engine, {})

    whole = digest()
    assert digest("--regimes", "small") == whole
    assert digest("--regimes", "sub-epoch", "--rows", "scu", "--seeds", "2", "--seed-from", "1") == whole
    assert digest("--domains", "docs") == whole
    assert digest("--small-tokens", "900") != whole
    assert digest("--quick", "--regimes", "small") == digest("--quick") != whole


def test_report_shows_a_variant_row_paired_with_the_baselines() -> None:
    tracking = {"s_star": 0.7, "lambda_end": 0.02, "off_bounds": 1.0, "in_band": 0.9}
    cells = [
        *(_cell("off", s, 4.40 + 0.01 * s) for s in range(3)),
        *(_cell("off_es", s, 4.35 + 0.01 * s) for s in range(3)),
        *(_cell("scu", s, 4.38 + 0.01 * s) for s in range(3)),
        *(_cell("scu[target_s=0.7]", s, 4.36 + 0.01 * s, tracking=tracking) for s in range(3)),
    ]
    lines = qr.table("docs", "small", cells, None)
    row = next(x for x in lines if x.startswith("| SCU, `[target_s=0.7]`"))
    assert "| 3 | 4.3700 ± 0.0058 |" in row
    assert "-0.0400 ± 0.0000" in row and "+0.0100 ± 0.0000" in row  # vs λ=0 final, vs ES
    assert "| 0.7 |" in row
    # known rows keep their order; the variant comes after them
    order = [x.split("|")[1].strip() for x in lines if x.startswith("| ") and "±" in x]
    assert order == ["λ=0 final", "λ=0 early-stopped", "SCU (defaults)", "SCU, `[target_s=0.7]`"]
    # the pass/fail checks judge the shipped defaults only
    found = qr.checks({("docs", "small"): cells})
    assert all("target_s=0.7" not in c.detail for c in found)


def test_run_cell_uses_the_variant_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    seen: dict[str, Any] = {}

    def fake_run(root: Any, engine: Any, hp: dict[str, Any], *rest: Any) -> str:
        seen.update(hp)
        return "stop here"

    monkeypatch.setattr(sq, "run_engine", fake_run)
    monkeypatch.setattr(sq, "engine_source", lambda engine: "same")
    name, hp = sq.variant("target_s=0.7")
    ctx = sq.Context(
        plan=sq.QUICK,
        config="h",
        domain="docs",
        regime=sq.QUICK.regimes[1],
        seed=0,
        train=[],
        val=[],
        report_ex=[],
        select_ex=[],
        base_report=4.5,
        base_select=4.0,
        model=tmp_path,
        engine=tmp_path,
        engine_commit="c",
        engine_source="same",
        work=tmp_path,
        threads=1,
        keep_runs=False,
        runs={**sq.RUNS, name: hp},
    )
    out = sq.run_cell(ctx, name, ev=None)
    assert [c["row"] for c in out] == [name] and out[0]["status"] == "failed"
    assert seen["scu"] == "on" and seen["target_s"] == "0.7" and seen["checkpoint_every"] == 10**6


def _engine(target_s: float, defaulted: bool) -> dict[str, Any]:
    return {"target_s": target_s, "target_s_defaulted": defaulted, "epochs": 15.0}


def test_scu_row_stands_a_variant_in_for_the_shipped_default_only_when_the_rule_agrees() -> None:
    """--scu-row small=scu[target_s=0.9375]: runs made under an engine whose default S* was 0.5
    count as the shipped default when they set exactly what the shipped rule gives (15 passes with
    selection: 15/16); the old default's runs are shown by the S* they resolved."""
    sel = {"selection": {"best_step": 3}}
    cells = [
        *(_cell("off", s, 6.9, regime="small") for s in range(2)),
        *(_cell("off_es", s, 4.18, regime="small") for s in range(2)),
        *(_cell("scu", s, 4.21, regime="small", engine=_engine(0.5, True), **sel) for s in range(2)),
        *(
            _cell("scu[target_s=0.9375]", s, 4.18, regime="small", engine=_engine(0.9375, False), **sel)
            for s in range(2)
        ),
        *(_cell("scu", s, 3.80, regime="sub-epoch", engine=_engine(0.5, True), **sel) for s in range(2)),
    ]
    shown = sq.relabel(cells, sq.scu_rows(["small=scu[target_s=0.9375]"]))
    rows = {(c["regime"], c["row"]) for c in shown}
    assert rows == {
        ("small", "off"),
        ("small", "off_es"),
        ("small", "scu[target_s=0.5]"),
        ("small", "scu"),
        ("sub-epoch", "scu"),
    }
    assert all(
        c["shown_as"] == "scu[target_s=0.9375]" for c in shown if c["row"] == "scu" and c["regime"] == "small"
    )
    rule = sq.shipped_rule()
    assert qr.default_rule_check(shown, rule).status == "PASS"
    assert qr.default_rule_check(shown, None).status == "FAIL"  # without the rule: set by hand
    wrong = sq.relabel(
        [{**c, "engine": _engine(0.8, False)} if c["row"] == "scu[target_s=0.9375]" else c for c in cells],
        sq.scu_rows(["small=scu[target_s=0.9375]"]),
    )
    assert qr.default_rule_check(wrong, rule).status == "FAIL"  # S* 0.8 is not the rule's 15/16
    with pytest.raises(SystemExit, match="REGIME=ROW"):
        sq.scu_rows(["small=off"])


def test_a_cell_with_selection_shows_the_kept_step_and_the_last_steps_adapter() -> None:
    kept = _cell("wd1", 0, 4.1839) | {"selection": {"selected_step": 22}, "last_bpt": 6.9012}
    plain = _cell("fixed1", 1, 4.2836)
    lines = qr.table("docs", "small", [kept, plain], None)
    row = next(x for x in lines if x.startswith("| AdamW wd=1 |") and "kept" in x)
    assert "4.1839 (kept step 22; last step 6.9012)" in row
    assert "| fixed λ=1 | – | 4.2836 |" in lines  # no selection: the BPT alone
