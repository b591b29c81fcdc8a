"""The tablet's type for the `allow_primary` checks: the configured type, unless mysqld says PRIMARY."""

from __future__ import annotations

from agent.config import TabletType
from agent.errors import AgentError
from agent.mysql import replication
from agent.tablet import Tablet


async def effective_tablet_type(tablet: Tablet) -> TabletType:
    """A mysqld with no replication source that is writable is a PRIMARY, whatever the flag says."""
    configured = tablet.config.init_tablet_type
    try:
        info = await tablet.mysqld.server_info()
        async with tablet.client.connection() as session:
            status = await replication.replication_status(session, info.flavor)
            ro = await replication.read_only_state(session)
    except AgentError:
        return configured  # mysqld down: nothing to learn from it
    if not status.configured and not ro.read_only:
        return TabletType.PRIMARY
    return configured
