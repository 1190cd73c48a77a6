"""Prefect settings the flows' command lines default to, where the user has set nothing."""

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from prefect.settings import (
    PREFECT_SERVER_ANALYTICS_ENABLED,
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    Settings,
    temporary_settings,
)

if TYPE_CHECKING:
    from prefect.settings import Setting

CLI_DEFAULTS: "dict[Setting, Any]" = {
    # A temporary server sends no telemetry (offline, Prefect logs each failed send as an error).
    PREFECT_SERVER_ANALYTICS_ENABLED: False,
    # Prefect's default wait for its temporary server is too short on two busy cores.
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 120,
}


def command_settings() -> AbstractContextManager[Settings]:
    """Prefect's settings with `CLI_DEFAULTS` where the user has set nothing, for the duration."""
    return temporary_settings(set_defaults=CLI_DEFAULTS)
