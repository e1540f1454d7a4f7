"""
XRPC over HTTP: the Klein application, errors, auth, parameter and body
validation, and one module of handlers per namespace.
"""
