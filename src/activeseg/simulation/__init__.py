"""The simulation of active learning on labelled data: :func:`simulate` (run.py), its grid
tasks (tasks.py), where they execute (executors.py, shards.py) and the run directory they
write (rundir.py)."""

from activeseg.simulation.executors import Execution
from activeseg.simulation.run import simulate

__all__ = ["Execution", "simulate"]
