"""
The operator's tools: the admin API's logic (``com.atproto.admin.*``; the
XRPC methods are in ``leafpds/xrpc/admin.py``) — account views and searches,
invite codes, takedowns of accounts, records and blobs, account changes and
deletion — and the ``leafpds-admin`` console script with its backups.  Each
admin request's database work is one unit run by the single writer or a
reader; what the network must hear of (``#account``, ``#identity``) is
appended to the firehose log in that same transaction.
"""
