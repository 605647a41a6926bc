"""Who is speaking: the job, the rank, the world size and the host of this process.

Resolved once, when the producer is configured, from explicit arguments first and the
environment second, so a trainer launched by torchrun or Slurm needs no arguments but a job id.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from rankwatch.schemas import JOB_ID_PATTERN
from rankwatch.schemas.rankwatch_error import RankwatchError

#: Environment variables read for each field, first match wins. torchrun sets RANK/WORLD_SIZE/
#: LOCAL_RANK; Slurm sets the SLURM_* ones (also for ranks started by srun without torchrun).
JOB_ID_VARS = ("RANKWATCH_JOB_ID", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID")
RANK_VARS = ("RANKWATCH_RANK", "RANK", "SLURM_PROCID")
WORLD_SIZE_VARS = ("RANKWATCH_WORLD_SIZE", "WORLD_SIZE", "SLURM_NTASKS")
LOCAL_RANK_VARS = ("LOCAL_RANK", "SLURM_LOCALID")
HOST_VARS = ("RANKWATCH_HOST",)
#: torchrun counts the times it restarted the workers: each restart is a new attempt of the job.
ATTEMPT_VARS = ("RANKWATCH_ATTEMPT", "TORCHELASTIC_RESTART_COUNT")

_JOB_ID = re.compile(JOB_ID_PATTERN)
# torchrun's default run id when the user gave none: it says nothing about the job.
_MEANINGLESS_RUN_IDS = frozenset({"none", ""})


class IdentityError(RankwatchError, ValueError):
    """No job id could be found, or a value from the environment is not usable."""


@dataclass(frozen=True, slots=True)
class Identity:
    """The fields every event of this process carries.

    >>> Identity(job_id="llama-7b-run3", rank=3, world_size=8, host="node-1").as_fields()
    {'job_id': 'llama-7b-run3', 'rank': 3, 'host': 'node-1'}
    """

    job_id: str
    rank: int = 0
    world_size: int | None = None
    host: str | None = None
    local_rank: int | None = None
    attempt: int | None = None

    def as_fields(self) -> dict[str, object]:
        """Fields common to step and log events (``world_size`` belongs to steps only)."""
        fields: dict[str, object] = {"job_id": self.job_id, "rank": self.rank}
        if self.host is not None:
            fields["host"] = self.host
        if self.attempt is not None:
            fields["attempt"] = self.attempt
        return fields


def _first(env: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str] | None:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return name, value
    return None


def _int_from_env(env: Mapping[str, str], names: tuple[str, ...], minimum: int) -> int | None:
    found = _first(env, names)
    if found is None:
        return None
    name, value = found
    try:
        number = int(value)
    except ValueError:
        raise IdentityError(f"${name}={value!r} is not an integer") from None
    if number < minimum:
        raise IdentityError(f"${name}={number} must be >= {minimum}")
    return number


def resolve_identity(
    job_id: str | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    host: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> Identity:
    """Arguments first, then the environment (see ``*_VARS``), then defaults (rank 0, hostname).

    >>> resolve_identity(env={"RANKWATCH_JOB_ID": "j1", "RANK": "3", "WORLD_SIZE": "8"}).rank
    3
    >>> resolve_identity(env={"SLURM_JOB_ID": "4242", "SLURM_PROCID": "5", "SLURM_NTASKS": "16",
    ...                       "RANKWATCH_HOST": "n1"})
    Identity(job_id='4242', rank=5, world_size=16, host='n1', local_rank=None, attempt=None)
    >>> resolve_identity(env={})
    Traceback (most recent call last):
    ...
    rankwatch.producers._identity.IdentityError: no job id: pass job_id=... or set ...
    """
    env = os.environ if env is None else env
    if job_id is None:
        found = _first(env, JOB_ID_VARS)
        if found is not None and not (
            found[0] == "TORCHELASTIC_RUN_ID" and found[1].lower() in _MEANINGLESS_RUN_IDS
        ):
            job_id = found[1]
    if job_id is None:
        raise IdentityError(
            "no job id: pass job_id=... or set $RANKWATCH_JOB_ID (also read: "
            "$TORCHELASTIC_RUN_ID from torchrun --rdzv-id, $SLURM_JOB_ID)"
        )
    if not _JOB_ID.match(job_id):
        raise IdentityError(f"job id {job_id!r} must be 1-128 characters of [A-Za-z0-9._:-]")
    if rank is None:
        rank = _int_from_env(env, RANK_VARS, 0)
    if world_size is None:
        world_size = _int_from_env(env, WORLD_SIZE_VARS, 1)
    if rank is None:
        rank = 0
    if rank < 0:
        raise IdentityError(f"rank {rank} must be >= 0")
    if world_size is not None and rank >= world_size:
        raise IdentityError(f"rank {rank} is not below world size {world_size}")
    if host is None:
        found = _first(env, HOST_VARS)
        host = found[1] if found else socket.gethostname()
    return Identity(
        job_id,
        rank,
        world_size,
        host,
        _int_from_env(env, LOCAL_RANK_VARS, 0),
        _int_from_env(env, ATTEMPT_VARS, 0),
    )
