"""benchmarks/answer_snapshot.py: one answer per image and backend, identical on a second run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest


def _snapshot(script, out: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    argv = ["answer_snapshot.py", str(out), "--fashion", "4", "--ood", "2"]
    monkeypatch.setattr(sys, "argv", argv)
    assert script.main() == 0
    return out.read_text().splitlines()


def test_snapshot_is_reproducible_and_complete(
    answer_snapshot, tmp_path: Path, monkeypatch
) -> None:
    first = _snapshot(answer_snapshot, tmp_path / "a.jsonl", monkeypatch)
    second = _snapshot(answer_snapshot, tmp_path / "b.jsonl", monkeypatch)
    assert first == second
    assert len(first) == 2 * (4 + 2 + 2)  # both backends, three sets
    keys = [tuple(line.split("\t")[:3]) for line in first]
    assert len(set(keys)) == len(keys)
    answers = [json.loads(line.split("\t")[3]) for line in first]
    assert {a["decision"] for a in answers} <= {"accepted", "rejected_ood", "flagged_attack"}
    mnist = [a for k, a in zip(keys, answers, strict=True) if k[1] == "mnist"]
    assert all(a["decision"] == "rejected_ood" for a in mnist)  # digits are out of distribution
