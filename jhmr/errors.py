"""`InputError`: a user's file or setting that cannot be used (missing, corrupt, wrong layout).

Its message names the file (or setting) and the problem; `jhmr.launch` prints it as one line,
without a traceback. Readers raise it (or a subclass) for bad input and plain exceptions for
bugs. It is a `ValueError`, so callers catching `ValueError` keep working.
"""


class InputError(ValueError):
  """A user's file or setting that cannot be used; the message names it and the problem."""
