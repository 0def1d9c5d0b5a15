"""The database: SQLite by default, PostgreSQL for several workers.

``engine`` opens, migrates, runs transactions and explains failures; ``dialect`` is the
contract each backend states its own SQL in where the two differ, ``sqlite`` and
``postgres`` (each with its migrations, connections, run locks and error messages);
``subscribers`` is subscribers, lists and memberships; ``ledger`` is the deliveries and the
runs that send them; ``subscriber_files`` reads and writes subscriber lists (CSV, JSON);
``importing`` brings a CSV file into a list; ``feedback`` is what comes back by mail; ``rights``
is what is held about one person, and forgetting them; ``consent`` is who agreed to which list,
how and when.
"""
