"""The episodes an evaluation has finished, appended to `<workdir>/episodes.jsonl` as each
one ends, so a stopped evaluation (preemption, Ctrl-C, a crash) reruns only what is missing.

The first line is the run's identity (policy and its weights digest or checkpoint step,
mode, planner, suite protocol, split); every other line is one episode's record. A rerun
with another identity is refused, naming the first field that differs: its records would
not belong in the same table. Episodes are keyed by (task, episode, seed), so a rerun with
more episodes or tasks keeps the finished ones and plays the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

EPISODES_FILE = "episodes.jsonl"


class LogMismatch(ValueError):
    """The workdir's episode log belongs to another evaluation."""


def weights_digest(path: str) -> str:
    """sha256 of a file (an export's weights): the same path may hold another export later."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def episode_key(record: dict[str, Any]) -> tuple[str, int, int]:
    """What identifies an episode within one evaluation: its task, index and scene seed."""
    return record["task"], int(record["episode"]), int(record["seed"])


class EpisodeLog:
    """Append-only episode records under one identity (see the module docstring)."""

    def __init__(self, workdir: str, identity: dict[str, Any], resume: bool = True):
        self.path = os.path.join(workdir, EPISODES_FILE)
        self.identity = json.loads(json.dumps(identity))  # as it reads back from the file
        self.done: dict[tuple[str, int, int], dict[str, Any]] = {}
        if resume and os.path.exists(self.path):
            self._read()
        else:
            self._rewrite()

    def _read(self) -> None:
        with open(self.path) as f:
            text = f.read()
        lines = text.split("\n")
        complete = lines[:-1]  # a last line without "\n" was cut by the stop: played again
        try:
            header = json.loads(complete[0]) if complete else None
        except ValueError:
            header = None
        if not isinstance(header, dict) or "identity" not in header:
            raise LogMismatch(f"{self.path} is not an evaluation's episode log (its first line "
                              "is not the run's identity); use another --workdir or remove it")
        theirs = header["identity"]
        for key in sorted(set(theirs) | set(self.identity)):
            if theirs.get(key) != self.identity.get(key):
                raise LogMismatch(
                    f"{self.path} holds episodes of another evaluation ({key}: "
                    f"{_short(theirs.get(key))} there, {_short(self.identity.get(key))} now); "
                    "use another --workdir or remove the file to start over")
        for n, line in enumerate(complete[1:], start=2):
            try:
                record = json.loads(line)
                self.done[episode_key(record)] = record
            except (ValueError, KeyError, TypeError):
                raise LogMismatch(f"{self.path} line {n} is not an episode record; use another "
                                  "--workdir or remove the file to start over") from None
        if lines[-1]:  # drop the cut line before appending after it
            with open(self.path, "w") as f:
                f.write("\n".join(complete) + "\n")

    def _rewrite(self) -> None:
        with open(self.path, "w") as f:
            f.write(json.dumps({"identity": self.identity}) + "\n")

    def append(self, record: dict[str, Any]) -> None:
        """Record one finished episode (flushed and synced: a kill right after keeps it)."""
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.done[episode_key(record)] = record


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
