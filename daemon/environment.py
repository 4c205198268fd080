"""The environment a worker runs with: the daemon's shared settings, as the worker reads them.

The daemon and its workers must agree on the project, bucket, namespace, lease and
heartbeat; passing the daemon's own validated ``Settings`` down (rather than each side
reading its own environment) makes that agreement structural.
"""

from __future__ import annotations

from pydantic import SecretStr

from shared.settings import Settings

# The Google client libraries read these names themselves; the workers' Settings too.
_EMULATOR_NAMES = {
    "datastore_emulator_host": "DATASTORE_EMULATOR_HOST",
    "pubsub_emulator_host": "PUBSUB_EMULATOR_HOST",
    "storage_emulator_host": "STORAGE_EMULATOR_HOST",
}


def worker_environment(settings: Settings) -> dict[str, str]:
    """``ASSAY_*`` variables (and emulator hosts) that rebuild ``settings`` in a worker.

    Secrets (``SecretStr`` settings: the webhook signing key, the console's secret) are
    never passed: a worker signs nothing, and what a Job's spec holds anyone who can read
    Jobs can read."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump(mode="json").items():
        if value is None or isinstance(getattr(settings, name), SecretStr):
            continue
        if name in _EMULATOR_NAMES:
            env[_EMULATOR_NAMES[name]] = str(value)
            continue
        env[f"ASSAY_{name.upper()}"] = str(value)
    return env
