"""The few domain exceptions library code raises. Only the CLI turns them into exit codes."""

from __future__ import annotations


class LabelblocksError(Exception):
    """Base of every error labelblocks reports to a user (exit code 1)."""

    exit_code = 1


class InvalidInput(LabelblocksError):
    """Input that cannot be accepted: says what was expected, what arrived, what to do."""


class UsageError(LabelblocksError):
    """The command was called wrongly (exit code 2)."""

    exit_code = 2


class ProjectNotFound(LabelblocksError):
    pass


class NotFound(LabelblocksError):
    pass


class BlockError(LabelblocksError):
    """A block failed on a sample or could not be set up."""


class PluginError(LabelblocksError):
    pass


class MissingSecret(LabelblocksError):
    pass
