"""The suite on two pytest-xdist workers, optional (`pytest -q -n 2`; the README's test command runs one process).

Each test module goes whole, in collection order, to one of two groups, and `group_scheduling` gives each group
to one worker:

- "bundle": the worker that trains the session's tiny bundle (in the background, tests/conftest.py), with the
  fast modules, which run while it trains, and every module that shares a session server with others
  (`server_proc`, `ray_head`, `ray_head_token`) or reads the training job's record (`tiny_bundle_job`): a
  session server lives in one process, and stopping it after its last user needs that user's worker to know it.
- "solo": the other slow modules. Each brings its own Ray, servers or cluster; those that serve the tiny
  bundle wait for it to be handed over by the "bundle" worker through a file (`write_handoff` / `wait_for_handoff`)
  instead of training one of their own.

Without xdist (a plain `pytest`, or `-p no:xdist`) the groups mean nothing: one process runs every module and
trains the bundle itself.

The groups are decided where the tests are collected, in the workers (they depend on the fixtures each module
uses), and written to a file the controller's scheduler reads (`write_groups`, `group_scheduling`). xdist's own
`--dist loadgroup` would do this with `xdist_group` markers, but it renames test ids in a way pytest 9 no longer
allows, and then silently spreads every test over both workers.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

BUNDLE, SOLO = "bundle", "solo"
# fixtures whose state lives in the process that started them: their users stay on the "bundle" worker
SHARED_FIXTURES = {"server_proc", "ray_head", "ray_head_token", "tiny_bundle_job"}
# slow modules moved to the "bundle" worker to even out the two workers' times: by the rules above it would get
# about a third of the suite's time (docs/testing.md has the durations these were chosen from)
BUNDLE_WORKER_MODULES = {"test_resume", "test_serve_feedback", "test_update_loop"}


def under_xdist() -> bool:
    return bool(os.environ.get("PYTEST_XDIST_WORKER"))


def direct_port_first() -> int:
    """Where this worker's search for free direct-ingress ports starts: gw0 at 42000, gw1 at 51008 (two halves of
    bench.serve_latency.free_direct_port's range, so servers the two workers start at once never pick the same)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    n = int(worker[2:]) if worker[2:].isdigit() else 0
    return 42000 + 9008 * (n % 2)


def module_of(item) -> str:
    return item.module.__name__ if item.module else ""


def assign_groups(items, is_slow) -> dict[str, str]:
    """module name -> group (see the module docstring); `is_slow(module_items)` says whether a module is slow."""
    by_module: dict[str, list] = {}
    for it in items:
        by_module.setdefault(module_of(it), []).append(it)
    groups = {}
    for module, tests in by_module.items():
        shared = any(SHARED_FIXTURES & set(getattr(it, "fixturenames", ())) for it in tests)
        moved = module.rsplit(".", 1)[-1] in BUNDLE_WORKER_MODULES
        groups[module] = BUNDLE if shared or moved or not is_slow(tests) else SOLO
    return groups


def group_of(item) -> str | None:
    mark = item.get_closest_marker("xdist_group")
    return mark.args[0] if mark and mark.args else None


def trainer_group(items) -> str:
    """The group whose worker trains the tiny bundle: "bundle" when any of its tests is selected, else "solo"
    (then that worker trains for itself, as a single process would)."""
    return BUNDLE if any(group_of(it) == BUNDLE for it in items) else SOLO


GROUPS_FILE = "xdist-groups.json"


def groups_path(worker_basetemp: Path) -> Path:
    """Beside the workers' temp roots: the controller's basetemp (xdist gives each worker <it>/popen-gwN)."""
    return Path(worker_basetemp).parent / GROUPS_FILE


def write_groups(path: Path, items) -> None:
    """Module file -> group of the collected items, written atomically (every worker writes the same)."""
    groups = {it.nodeid.split("::", 1)[0]: group_of(it) for it in items}
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(groups, sort_keys=True))
    os.replace(tmp, path)


class SchedulerPlugin:
    """Registered on the xdist controller: its scheduler is `group_scheduling`'s, whatever --dist says."""

    @staticmethod
    def pytest_xdist_make_scheduler(config, log):
        return group_scheduling(config, log)


def group_scheduling(config, log):
    """xdist's LoadScopeScheduling with one scope per group (written by the workers at collection): each group
    goes whole, in collection order, to one worker. A module the file does not name is a scope of its own.
    (Built here, not at import, so that the suite still imports where xdist is not installed.)"""
    from xdist.scheduler import LoadScopeScheduling

    path = Path(config._tmp_path_factory.getbasetemp()) / GROUPS_FILE

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if getattr(self, "_groups", None) is None:
                self._groups = json.loads(path.read_text()) if path.is_file() else {}
            module = nodeid.split("::", 1)[0]
            group = self._groups.get(module)
            return f"group:{group}" if group else module

    return GroupScheduling(config, log)


def handoff_path(tmp_path_factory, config) -> Path:
    """The file through which the trainer hands the tiny bundle to the other worker: beside both workers' temp
    roots (xdist gives each worker <root>/popen-gwN), named by the run's xdist id so a reused root is never read."""
    run = getattr(config, "workerinput", {}).get("testrunuid", "local")
    return tmp_path_factory.getbasetemp().parent / f"tiny-bundle-{run}.json"


def write_handoff(path: Path, bundle: Path | None, error: str | None) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"bundle": str(bundle) if bundle else None, "error": error}))
    os.replace(tmp, path)


def wait_for_handoff(path: Path, timeout_s: float = 3600.0) -> Path:
    """The bundle the trainer handed over; raises its error, or after `timeout_s` without a handoff."""
    deadline = time.monotonic() + timeout_s
    while not path.is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no tiny bundle handed over in {path} after {timeout_s:.0f} s")
        time.sleep(2.0)
    got = json.loads(path.read_text())
    if got.get("error"):
        raise RuntimeError("the tiny bundle's training on the other worker failed:\n" + got["error"])
    return Path(got["bundle"])
