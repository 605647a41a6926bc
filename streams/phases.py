"""What a job is doing, read from the log lines common trainers already write.

A job is not always training: it evaluates for minutes, saves and loads checkpoints. None of that
is a fault, but each looks like one to a rule that only counts steps (no step for five minutes
looks like a hang). A trainer can say its phase (the ``phase`` field, or
``rankwatch.producers.phase("eval")``); for those that do not, the lines their libraries log at
the start and end of each phase are recognised here. The wording is the libraries' own:

- Hugging Face ``transformers`` (``Trainer.evaluation_loop``, ``Trainer._save_checkpoint``):
  ``***** Running Evaluation *****``, ``***** Running Prediction *****``,
  ``Saving model checkpoint to /ckpt/checkpoint-500``, ``***** Running training *****``;
- Megatron-LM (``training.evaluate``, ``checkpointing.save_checkpoint``): ``Evaluating iter
  10/100``, ``saving checkpoint at iteration    2000 to /ckpt``, ``successfully saved checkpoint
  at iteration    2000 to /ckpt``, ``loading checkpoint from /ckpt at iteration 2000``;
- DeepSpeed (``runtime/checkpoint_engine``): ``[Torch] Checkpoint global_step100 is about to be
  saved!``, ``[Torch] Checkpoint global_step100 is ready now!``;
- PyTorch Lightning (checkpoint connector): ``Restoring states from the checkpoint path at ...``.

>>> phase_of("***** Running Evaluation *****")
'eval'
>>> phase_of("[2023-07-24 13:21:33,261] [INFO] [logging.py:96:log_dist] [Rank 0] [Torch] "
...          "Checkpoint global_step10 is about to be saved!")
'checkpoint'
>>> phase_of("  successfully saved checkpoint at iteration    2000 to /ckpt"), phase_of("hello")
('train', None)
"""

from __future__ import annotations

import re

from rankwatch.schemas import Phase

# One alternation, one search per record; each group names the phase its lines begin.
_PATTERN = re.compile(
    r"(?P<train>\*{5} Running training \*{5}"
    r"|successfully saved checkpoint at iteration"
    r"|Checkpoint \S+ is ready now!)"
    r"|(?P<eval>\*{5} Running (?:Evaluation|Prediction) \*{5}"
    r"|Evaluating iter \d+/\d+)"
    r"|(?P<checkpoint>Saving model checkpoint to "
    r"|saving checkpoint at iteration"
    r"|loading checkpoint from "
    r"|Checkpoint \S+ is about to be saved!"
    r"|Restoring states from the checkpoint path at )"
)
#: Records longer than this are not phase lines (a traceback): not searched.
_MAX_LEN = 400


def phase_of(message: str) -> Phase | None:
    """The phase a log line announces, or None for any other line."""
    if len(message) > _MAX_LEN:
        return None
    match = _PATTERN.search(message)
    if match is None:
        return None
    phase = match.lastgroup
    return phase  # type: ignore[return-value]
