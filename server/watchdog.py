"""Heal models whose python-backend stub process died.

Triton's python backend runs each model instance in a ``triton_python_backend_stub`` child
process. When one dies (OOM killer, a crash in native code) Triton keeps the model READY but
answers every request with INTERNAL "Stub process ... is not healthy" and never restarts it. The
watchdog notices a stub that vanished without a replacement for the same instance and reloads that
model through the repository API with its current config (a forced reload: Triton keeps the
other instances serving while the new stub starts).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from lookserve.errors import LookserveError

log = logging.getLogger(__name__)

STUB_NAME = "triton_python_backend_stub"


@dataclass(frozen=True)
class Stub:
    pid: int
    model: str
    version: str
    instance: str
    model_file: Path


def stubs_of(server_pid: int) -> dict[int, Stub]:
    """The live python-backend stubs of a tritonserver process, by pid."""
    import psutil  # the [server] extra: `lookserve --help` must not need it

    found: dict[int, Stub] = {}
    try:
        children = psutil.Process(server_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return found
    for child in children:
        try:
            if child.name() != STUB_NAME or child.status() == psutil.STATUS_ZOMBIE:
                continue
            cmd = child.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        # argv: stub, <repo>/<model>/<version>/<file>, shm region, sizes, parent pid, backend dir,
        # ipc handle, <instance name>, ...
        if len(cmd) >= 9:
            model_file = Path(cmd[1])
            found[child.pid] = Stub(child.pid, model_file.parent.parent.name, model_file.parent.name, cmd[8], model_file)
    return found


class StubWatchdog:
    """``with StubWatchdog(server_pid, admin_client): ...`` checks every ``interval_s`` seconds."""

    def __init__(self, server_pid: int, client, interval_s: float = 2.0) -> None:
        self.server_pid = server_pid
        self.client = client
        self.interval_s = interval_s
        self.healed: list[str] = []
        self._known: dict[int, Stub] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stub-watchdog", daemon=True)

    def check(self) -> list[str]:
        """One pass: returns the models it reloaded."""
        live = stubs_of(self.server_pid)
        live_instances = {s.instance for s in live.values()}
        dead = [s for pid, s in self._known.items() if pid not in live and s.instance not in live_instances]
        self._known = live
        healed = []
        for model in sorted({s.model for s in dead}):
            try:
                if not self._is_loaded(model):
                    continue  # unloaded on purpose
                log.warning("python backend stub of %s died; reloading the model", model)
                # Triton reuses model instances when nothing on disk changed; a newer
                # modification time of the served files makes the reload create new instances
                # (and stubs) while the model keeps answering.
                for stub in (s for s in dead if s.model == model):
                    if stub.model_file.exists():
                        stub.model_file.touch()
                self.client.load_model(model)
                healed.append(model)
            except LookserveError as e:
                log.error("could not reload %s after its stub died: %s", model, e)
        self._known = stubs_of(self.server_pid)
        self.healed += healed
        return healed

    def _is_loaded(self, model: str) -> bool:
        return any(m.get("name") == model and m.get("state") == "READY" for m in self.client.repository_index())

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except LookserveError as e:  # the server may be going down; try again next round
                log.debug("watchdog pass failed: %s", e)

    def __enter__(self) -> StubWatchdog:
        self._known = stubs_of(self.server_pid)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)
