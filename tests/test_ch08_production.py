"""The appendix module: knobs refuse bad values, sentences come from the numbers, the stored
last run is shown (labelled) where the services are absent, and the experiments run on the
toy here (on both backends in test_prod_contract.py and the notebook)."""
from __future__ import annotations

import copy
import json

import pytest

from toylib.chapters import ch08_production as ch

pytestmark = pytest.mark.timeout(60)


def stored() -> dict:
    return dict(json.loads(ch.LAST_RUN.read_text()), live=True, missing=[])


@pytest.mark.parametrize("field,bad", [("orders", 0), ("repeats", float("nan")),
                                       ("outage_s", float("inf")), ("writers", 1),
                                       ("hold_ms", -1), ("crash_sagas", 10**9)])
def test_knobs_refuse_bad_values_naming_the_field(field, bad):
    with pytest.raises((TypeError, ValueError), match=field):
        ch.Knobs(**{field: bad})


def test_the_last_run_is_stored_and_complete():
    r = stored()
    assert set(r["backends"]) == {"toy", "prod"}
    assert r["crash"]["lost"] == 0 and r["crash"]["charged_twice"] == 0
    assert list(ch.table(r).columns) == [ch.BACKEND_NAMES["toy"], ch.BACKEND_NAMES["prod"]]


def test_sentences_are_generated_from_the_numbers():
    r = stored()
    text = " ".join(ch.sentences(r))
    pg = r["backends"]["prod"]["pipeline"]["accept_ms"]
    assert f"{pg:.2f} ms on PostgreSQL" in text
    r2 = copy.deepcopy(r)
    r2["backends"]["prod"]["contention"]["elapsed_ms"] = r2["backends"]["toy"]["contention"][
        "elapsed_ms"]
    assert "not shown by this run" in " ".join(ch.sentences(r2))
    r2["crash"]["charged_twice"] = 1
    assert "1 charged twice" in " ".join(ch.sentences(r2))


async def test_without_the_services_the_page_shows_the_stored_run_labelled(monkeypatch):
    monkeypatch.setenv("TOYLIB_PG_PORT", "1")
    r = await ch.run(ch.Knobs())
    assert r["live"] is False and r["missing"] == ["PostgreSQL on 127.0.0.1:1"]
    assert ch.sentences(r)[0].startswith("These are the stored results of the last run")


async def test_the_experiments_run_on_the_toy():
    p = await ch.pipeline("toy", 10)
    assert p["charged"] == 10 and p["throughput"] > 0
    c = await ch.contention("toy", writers=3, hold_ms=20, rounds=2)
    assert c["updates"] == 6
    # SQLite's one write lock serialises writers of different rows: at least 2 of the 3 waited
    assert c["elapsed_ms"] >= 0.5 * c["serial_ms"]
    with pytest.raises(ValueError, match="backend"):
        await ch.pipeline("mysql", 10)


async def test_chapter_1_designs_run_through_the_appendix_on_the_toy():
    r = await ch.chapter1("toy", orders=2)
    assert set(r) == {"before_answer_ms", "after_answer_ms", "after_complete_ms"}
    assert ch.on_postgres(object).__name__ == "objectOnPostgres"
