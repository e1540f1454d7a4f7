"""Outgoing email: the texts (templates.py), the queue (queue.py), SMTP (smtp.py)."""
