"""compose.yaml starts what the appendix probes, on 127.0.0.1 only (no container engine runs
here, so this checks the file; the services themselves are checked by the contract tests)."""
from pathlib import Path

import yaml

from toylib.prod.services import SERVICES

ROOT = Path(__file__).resolve().parent.parent


def test_compose_starts_the_probed_services_on_loopback():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    svc = compose["services"]
    default = {n for n, s in svc.items() if "profiles" not in s}
    assert default == set(SERVICES), "by default exactly what the appendix needs"
    for name, (_, port, _) in SERVICES.items():
        assert f"127.0.0.1:{port}:{port}" in svc[name]["ports"]
    for s in svc.values():
        assert all(p.startswith("127.0.0.1:") for p in s["ports"])
    assert "--jetstream" in svc["nats"]["command"]
    assert svc["postgres"]["environment"]["POSTGRES_HOST_AUTH_METHOD"] == "trust"
