"""What comes back by mail: bounces (DSNs and others), complaints (ARF), mail unsubscribes.

``classify`` reads one message (bytes) into what it says, with no I/O; ``mailboxes`` reads
and files messages from a Maildir, an mbox, standard input or IMAP; ``process`` finds the
delivery each report names (the signed return path first) and acts on it in the store.
"""
