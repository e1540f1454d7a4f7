"""The operator's tools: backups and the ``leafpds-admin`` console script."""
