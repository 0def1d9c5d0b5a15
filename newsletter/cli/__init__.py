"""The ``newsletter`` command: ``commands`` parses arguments, calls the library and prints; ``progress`` shows a run."""
