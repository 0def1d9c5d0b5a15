"""The database: SQLite by default, PostgreSQL for several workers.

``engine`` opens, migrates and runs transactions and explains failures; ``postgres`` is
PostgreSQL's side of it; ``ledger`` is the deliveries and the runs that send them;
``subscriber_files`` reads and writes subscriber lists (CSV, JSON); ``importing`` brings a
CSV file into a list.
"""
