"""Errors that Hermes raises on user-facing problems.

Every message says what failed, the offending value (file, task, setting) and the fix.
The CLI maps each class to a documented exit code and prints the message on one line.
"""

from __future__ import annotations

__all__ = [
    "HermesError",
    "InputError",
    "OutOfDistributionError",
    "TaskError",
    "WeightsError",
    "OutputError",
    "ConfigError",
    "OptionError",
    "TrainingError",
    "EXIT_CODES",
]


class HermesError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class InputError(HermesError):
    """An input image or path is missing, unreadable, corrupt or unusable."""

    exit_code = 3


class OutOfDistributionError(InputError):
    """A scan far outside the training data of every task group asked for: nothing is segmented
    (``pipeline.ood``; ``force`` / ``--force`` segments it anyway, with a warning).
    ``lines``: one line per task group far outside; ``tasks``: the tasks withheld."""

    def __init__(self, lines: list[str], tasks: list[str]) -> None:
        super().__init__(" ".join(lines))
        self.lines, self.tasks = list(lines), list(tasks)


class TaskError(HermesError):
    """An unknown task, dataset or modality name, or a task the weights do not know."""

    exit_code = 4


class WeightsError(HermesError):
    """Weights that cannot be found, downloaded, verified or loaded."""

    exit_code = 5


class OutputError(HermesError):
    """An output path that cannot be written."""

    exit_code = 6


class ConfigError(HermesError):
    """A bad recipe or dataset card, or options that do not fit the input or this machine."""

    exit_code = 7


class OptionError(ConfigError):
    """An option value that is wrong whatever the input: out of its range, empty, malformed or
    not one of its choices (a command-line option, or the same argument of the Python API).
    Exit 2, bad usage, as for an unknown option; still a ConfigError to ``except`` clauses."""

    exit_code = 2


class TrainingError(HermesError):
    """Training stopped on a failed check: a diverging loss, or incremental learning that would
    change an old task's outputs."""

    exit_code = 8


#: Documented exit codes of the ``hermes`` command: README's "Exit codes" table, word for word
#: (tests/test_errors.py compares them).
EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "some cases of a batch failed (the others were written; see the summary table)",
    2: "bad command-line usage: unknown option, missing argument, or an option value out of its "
    'range, empty or not one of its choices (e.g. --batch-size 0, --tasks "")',
    3: "input error: missing, unreadable, corrupt or unusable image, or one far outside the "
    "training data of every task group asked for (no masks; --force segments it anyway)",
    4: "task error: unknown task, dataset or modality",
    5: "weights error: not found, checksum mismatch, offline and not cached, incompatible",
    6: "output error: the output folder or file cannot be written",
    7: "configuration error: bad recipe or dataset card, or options that do not fit the input "
    "or this machine (e.g. --format dicom-seg for a NIfTI scan, --device cuda without a GPU)",
    8: "training check failed: diverging loss, or incremental learning changed an old task",
    130: "interrupted (Ctrl-C, SIGINT)",
    143: "terminated (SIGTERM); a batch first finishes writing the case in hand",
}
