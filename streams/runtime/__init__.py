"""The stream runtime both workers run on: one consumer loop's parts, one commit protocol.

Dependencies point one way, each module on those above it only:

- :mod:`~rankwatch.streams.runtime.common`: options, the topic layout and check, rules reload,
  the stats line;
- :mod:`~rankwatch.streams.runtime.alignment`: partition N of the steps and logs topics merged
  by timestamp (:class:`InputAligner`);
- :mod:`~rankwatch.streams.runtime.changelog`: engine state in the compacted changelog topic
  (:class:`ChangelogKV`) and the reads of a worker taking partitions over (:class:`KafkaReads`);
- :mod:`~rankwatch.streams.runtime.checkpoint`: :class:`Checkpoint`, flush then persist then
  commit no further than what is held, the only place offsets are committed;
- :mod:`~rankwatch.streams.runtime.core`: :class:`StreamCore`, the engine, pipeline, merge,
  outbox and checkpoint together; partitions assigned, revoked, lost;
- :mod:`~rankwatch.streams.runtime.batch`: :class:`BatchRuntime`, the confluent-kafka consumer
  loop on the core (the Faust runtime, :mod:`rankwatch.streams.worker`, is the other one).

Every Kafka client comes in as an argument, so the commit order is tested with fakes
(``tests/streams/test_checkpoint.py``) as well as against a broker.
"""
