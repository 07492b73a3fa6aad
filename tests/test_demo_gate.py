"""The demo report's per-round deploy-gate table, from eval results (pure)."""

from __future__ import annotations

import pytest

from demo.report import gate_decisions, gate_markdown, gate_rows


def model(precision: float) -> dict:
    return {"url": "m", "metrics": {"precision": precision}}


def test_gate_rows_show_the_rounds_own_set_then_each_earlier_round():
    result = {"images": 40, "models": [model(0.8), model(0.4)],
              "rounds": [{"round": 1, "images": 30, "models": [model(0.5), model(0.9)]},
                         {"round": 2, "images": 0, "models": []}]}
    rows = gate_rows(3, result, {1: "day", 3: "night"})
    assert [(r["set"], r["domain"], r["images"]) for r in rows] == [
        ("this round", "night", 40), ("round 1", "day", 30), ("round 2", None, 0)]
    assert rows[0]["change"] == pytest.approx(0.4)
    assert rows[1]["change"] == pytest.approx(-0.4)
    assert rows[2]["candidate"] is None and rows[2]["change"] is None
    conditions = [{"stage": "Eval", "state": "Completed", "round": 3,
                   "reason": "candidate not deployed: ... forgets earlier round: round 1 ..."}]
    lines = gate_markdown(rows, gate_decisions(conditions))
    assert lines[1] == "## Deploy gate per round"
    assert "| 3 | this round | night | 40 | 0.800 | 0.400 | +0.400 | candidate not deployed" \
        in "\n".join(lines)
    assert "| 3 | round 1 | day | 30 | 0.500 | 0.900 | -0.400 |  |" in lines
    assert gate_rows(1, {}, {}) == [{"round": 1, "set": "this round", "domain": None,
                                     "images": None, "candidate": None, "serving": None,
                                     "change": None}]
