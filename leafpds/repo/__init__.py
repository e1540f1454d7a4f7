"""
The repository engine: the Merkle Search Tree, signed commits, the
blockstore and records index, the per-DID transactor, CAR export/import.
"""
