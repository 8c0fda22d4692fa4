"""A faithful fake Databricks workspace: Jobs API over HTTP, scripted and random run life
cycles, a controllable clock and fault injection. Powers the tests, the demo and the benchmarks."""

from watcher.simulator.faults import Fault
from watcher.simulator.server import Simulator
from watcher.simulator.workload import RandomWorkload, Troubles, WorkloadSpec
from watcher.simulator.workspace import RunPlan, TaskPlan, Workspace

__all__ = [
    "Fault",
    "RandomWorkload",
    "RunPlan",
    "Simulator",
    "TaskPlan",
    "Troubles",
    "WorkloadSpec",
    "Workspace",
]
