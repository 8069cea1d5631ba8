"""The error a release reports to its user."""


class ReleaseError(ValueError):
    """A release that cannot be made as asked (bad run folder, repo ids, results file, card)."""
