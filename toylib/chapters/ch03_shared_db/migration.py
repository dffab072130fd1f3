"""Experiment 1: one team ships a schema migration; which other teams break?

Every outcome is a count of requests and SQLite's own error text: no timing decides anything.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from toylib.chapters.ch03_shared_db.designs import DESIGNS, require_running
from toylib.chapters.ch03_shared_db.knobs import SERVICES, knobs_or_default, order_for
from toylib.core import validate as v

OTHERS = tuple(s for s in SERVICES if s != "orders")    # the teams that did not migrate


async def migration_rounds(d, *, rounds: int = 20, migrate_after: int = 10) -> pd.DataFrame:
    """Probe of a running design: each round places an order, then every other service does
    its job with it. Before round ``migrate_after`` the order team ships its migration.

    One row per request: round, phase, service, what, ok, status, error (the database's own).
    """
    require_running(d)
    v.number("rounds", rounds, low=1, high=1000, integer=True)
    v.number("migrate_after", migrate_after, low=0, high=rounds, integer=True)
    rows = []

    def record(r, service, what, outcome):
        rows.append({"round": r, "phase": "after" if r >= migrate_after else "before",
                     "service": service, "what": what, **outcome})

    for r in range(rounds):
        if r == migrate_after:
            record(r, "orders", "ship the migration",
                   await d.request("orders", "POST", "/migrate"))
        o = order_for(r, d.knobs)
        record(r, "orders", "place the order", await d.request("orders", "POST", "/orders", o))
        await d.sync()
        oid = o["order_id"]
        record(r, "inventory", "reserve its stock",
               await d.request("inventory", "POST", "/reservations", o))
        record(r, "billing", "invoice it",
               await d.request("billing", "POST", f"/invoices/{oid}"))
        record(r, "notification", "e-mail the customer", await d.request(
            "notification", "POST", "/notifications",
            {"key": f"{oid}:placed", "order_id": oid, "kind": "placed"}))
        record(r, "analytics", "revenue report", await d.request("analytics", "GET", "/revenue"))
    return pd.DataFrame(rows)


def broken(runs: pd.DataFrame) -> pd.DataFrame:
    """Failed requests per service, before and after the migration (the blast radius)."""
    if not isinstance(runs, pd.DataFrame) or not {"what", "ok", "service", "phase"} <= set(runs):
        raise TypeError("runs must be the DataFrame migration_rounds() returns")
    jobs = runs[runs.what != "ship the migration"]
    table = (~jobs.ok).groupby([jobs.service, jobs.phase]).sum().unstack(fill_value=0)
    table = table.reindex(index=list(SERVICES), columns=["before", "after"], fill_value=0)
    table.columns = ["failed before", "failed after"]
    table["requests after"] = jobs[jobs.phase == "after"].groupby("service").size()
    return table.fillna(0).astype(int)


@dataclass
class MigrationResult:
    """Both designs' runs of the same rounds and migration, and which files each team opens."""
    runs: dict[str, pd.DataFrame]          # "before"/"after" -> migration_rounds() rows
    files: dict[str, list[str]]            # the database files of each design
    sharing: dict[str, dict[str, list]]    # design -> file -> teams whose services open it

    def broken(self, name: str) -> pd.DataFrame:
        return broken(self.runs[v.one_of("name", name, list(self.runs))])

    @property
    def others_broken(self) -> dict[str, int]:
        """Other teams (not the one that migrated) with failed requests after the migration."""
        return {n: int((self.broken(n).loc[list(OTHERS), "failed after"] > 0).sum())
                for n in self.runs}

    @property
    def failed_after(self) -> dict[str, int]:
        return {n: int(self.broken(n)["failed after"].sum()) for n in self.runs}

    @property
    def requests_after(self) -> dict[str, int]:
        return {n: int(self.broken(n)["requests after"].sum()) for n in self.runs}

    def errors(self, name: str) -> dict[str, str]:
        """The first error each service got, in the design's own words."""
        runs = self.runs[v.one_of("name", name, list(self.runs))]
        return runs[~runs.ok].groupby("service").error.first().to_dict()

    @property
    def shared_files(self) -> dict[str, int]:
        """Database files that more than one team's services open, per design."""
        return {n: sum(len(teams) > 1 for teams in s.values()) for n, s in self.sharing.items()}


async def migration(knobs=None, *, rounds: int = 20, migrate_after: int = 10) -> MigrationResult:
    """The same rounds and migration in both designs (before, then after)."""
    knobs = knobs_or_default(knobs)
    v.number("rounds", rounds, low=1, high=1000, integer=True)
    v.number("migrate_after", migrate_after, low=0, high=rounds, integer=True)
    runs, files, sharing = {}, {}, {}
    for name, kind in DESIGNS.items():
        async with kind(knobs) as d:
            files[name], sharing[name] = d.files(), d.sharing()
            runs[name] = await migration_rounds(d, rounds=rounds, migrate_after=migrate_after)
    return MigrationResult(runs, files, sharing)
