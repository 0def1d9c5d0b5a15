"""Stage 3: per-recipient message bytes from a :class:`~newsletter.models.RenderedIssue`.

``message`` encodes the shared parts once and joins each recipient's values in (~10 µs);
``dkim`` signs the result; ``signing`` decides from the settings whether to; ``sample``
renders an issue for a made-up reader (what ``render``, ``preview`` and ``check`` show).
"""
