"""
``--log-format json``: one JSON object per line, for log collectors.

Each line carries ``time`` (ISO 8601, UTC), ``level``, ``namespace`` (the
module, or ``leafpds.access`` for the access log), ``message`` (the text
line), ``failure`` (a traceback, if any) and the fields the message is made
of — only those: an event's other fields stay out, so JSON shows exactly
what the text log shows and nothing more (no secret gets in by the side).

The observer is installed through the runner's own switch: ``twist``'s log
observer factory, or ``twistd``'s ``--logger`` (given the name of
:data:`twistd_json_logger`, which writes where ``twistd`` would: stdout
with ``-n``, else ``--logfile``).
"""

import json
import string
import sys
from collections.abc import MutableMapping
from datetime import datetime, timezone
from typing import IO, Any

from twisted.logger import FileLogObserver, ILogObserver, formatEvent, textFileLogObserver
from twisted.python import logfile

_fields = string.Formatter()


def event_json(event: dict[str, Any]) -> str:
    """One log event as a line of JSON."""
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time", 0), timezone.utc).isoformat(timespec="milliseconds"),
        "level": getattr(event.get("log_level"), "name", "info"),
        "namespace": event.get("log_namespace", ""),
        "message": formatEvent(event),
    }
    for name in _format_fields(event.get("log_format")):
        if name in event and name not in record and not name.startswith("log_"):
            value = event[name]
            record[name] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
    failure = event.get("log_failure")
    if failure is not None:
        record["failure"] = failure.getTraceback()
    return json.dumps(record, separators=(",", ":")) + "\n"


def _format_fields(log_format: str | None) -> list[str]:
    if not log_format:
        return []
    try:
        # "{a.b[0]}" is made of the field "a".
        return [name.split(".")[0].split("[")[0] for _, name, _, _ in _fields.parse(log_format) if name]
    except ValueError:  # a malformed format: the message says what it can
        return []


def json_file_observer(out: IO[str]) -> FileLogObserver:
    """An observer writing each event to ``out`` as a line of JSON."""
    return FileLogObserver(out, event_json)


class _TwistdJSONLogger:
    """``twistd --logger`` factory: JSON lines where twistd would write its text."""

    options: MutableMapping[str, Any] | None = None

    def __call__(self) -> ILogObserver:
        options = self.options or {}
        name = options.get("logfile") or ""
        if name == "-" or (options.get("nodaemon") and not name):
            return json_file_observer(sys.stdout)
        return json_file_observer(logfile.LogFile.fromFullPath(name or "twistd.log"))


#: What ``twistd --logger leafpds.logs.twistd_json_logger`` names.
twistd_json_logger = _TwistdJSONLogger()


def use_log_format(runner_options: MutableMapping[str, Any] | None, log_format: str | None) -> None:
    """
    Have the runner whose options these are (``twist``'s or ``twistd``'s)
    log in ``log_format`` (``text``, ``json``; None: as it would anyway).
    """
    if runner_options is None or log_format is None:
        return
    if "fileLogObserverFactory" in runner_options:  # twist
        runner_options["fileLogObserverFactory"] = json_file_observer if log_format == "json" else textFileLogObserver
        runner_options["logFormat"] = log_format
    elif "logger" in runner_options and log_format == "json" and runner_options["logger"] is None:
        # twistd: text unless told; an explicit --logger is the operator's choice.
        twistd_json_logger.options = runner_options
        runner_options["logger"] = f"{__name__}.twistd_json_logger"
