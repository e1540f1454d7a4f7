"""
The IPLD data model as atproto uses it: DAG-CBOR, CIDs, CAR files and the
atproto JSON form.
"""
