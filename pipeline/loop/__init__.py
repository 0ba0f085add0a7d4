"""The background loop: the worker, the job registry and context, and each job kind as a
thin step over the other packages."""
