"""A simulated data-parallel training job, healthy or with injected faults.

It drives the demo, the benchmarks and the detector scenario suite: events come out as the
contract's models, so they can go through the real producer, a file, or the engine directly.
"""

from rankwatch.simulate.job import Timeline, simulate
from rankwatch.simulate.model import JobSpec
from rankwatch.simulate.scenarios import SCENARIOS, Expectation, Scenario

__all__ = ["SCENARIOS", "Expectation", "JobSpec", "Scenario", "Timeline", "simulate"]
