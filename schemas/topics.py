"""Default topic names: part of the public interface (DESIGN.md), renamable in the config."""

STEPS_TOPIC = "rankwatch.steps"
LOGS_TOPIC = "rankwatch.logs"
ALERTS_TOPIC = "rankwatch.alerts"
DEADLETTER_TOPIC = "rankwatch.deadletter"
