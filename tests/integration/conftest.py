"""Fixtures that run the real tablet-agent daemon against sandboxes."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.agent_process import AgentProcess
from tests.integration.helpers import Tablets
from tests.sandbox import Sandbox, SandboxFactory

pytestmark = pytest.mark.integration

AgentFactory = Callable[..., AgentProcess]


@pytest.fixture
def storage_root(tmp_path: Path) -> Path:
    root = tmp_path / "backups"
    root.mkdir()
    return root


@pytest.fixture
def agent_factory(tmp_path: Path, storage_root: Path) -> Iterator[AgentFactory]:
    """`agent_factory(sandbox, alias=..., extra=[...], start=True)`: agents are always stopped."""
    agents: list[AgentProcess] = []

    def make(
        sandbox: Sandbox,
        *,
        alias: str = "zone1-0000000102",
        extra: Sequence[str] = (),
        root: Path | None = None,
        env: dict[str, str] | None = None,
        start: bool = True,
    ) -> AgentProcess:
        agent = AgentProcess(
            sandbox.cnf, root or storage_root, tmp_path / "agents", alias=alias, extra=extra, env=env
        )
        agents.append(agent)
        return agent.start() if start else agent

    yield make
    for agent in agents:
        try:
            agent.stop(timeout=60)
        except Exception:
            agent.kill()


@pytest.fixture
def tablets(
    primary: Sandbox, replica: Sandbox, sandbox_factory: SandboxFactory, agent_factory: AgentFactory
) -> Tablets:
    """The primary, its replica and the factories, for the backup scenarios of tests/integration/helpers.py."""
    return Tablets(primary, replica, sandbox_factory, agent_factory)
