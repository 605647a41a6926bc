"""The built-in detectors, one module per family of rules.

Every detector is pure: an event (or a tick of event time) in, :class:`Finding` and
:class:`Resolution` records out. No I/O, no wall clock, state only in the objects the engine
hands it, so the Faust worker, ``rankwatch replay`` and the tests all run the same code.
"""
