"""What polling adapters share: one task per registered device, kept in step with the registry."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from usagehub.adapters.base import DeviceEndpoint

DeviceTasks = dict[str, tuple[DeviceEndpoint, "asyncio.Task[None]"]]


def reconcile_tasks(tasks: DeviceTasks, wanted: dict[str, DeviceEndpoint],
                    loop_of: Callable[[DeviceEndpoint], Coroutine[Any, Any, None]], name: str) -> None:
    """Cancel the tasks of devices gone or changed, start one (``loop_of``) for each new device."""
    for device_id in list(tasks):
        endpoint, task = tasks[device_id]
        if wanted.get(device_id) != endpoint:
            task.cancel()
            del tasks[device_id]
    for device_id, endpoint in wanted.items():
        if device_id not in tasks:
            tasks[device_id] = (endpoint, asyncio.create_task(loop_of(endpoint), name=f"{name}:{device_id}"))
