"""With ``LOG_FORMAT=json``, stderr lines that bypass ``logging`` become JSON too.

gRPC's C core, chDB, Chroma's native core and the embedded servers (child
processes) write to file descriptor 2 directly, so their lines would break a
stream of one JSON object per line. ``json_stderr`` replaces fd 2 with a pipe
read by a small child process, which wraps each line as ``{"ts", "level",
"logger": "stderr", "msg", "request_id"}`` (the level read from gRPC's
``E1129 …`` prefix when there is one) and writes it to the original stderr.
The logging handler writes to the original stderr directly, so only foreign
lines take the detour.

A child process rather than a thread: it outlives a crash of the server and
still forwards its last words (it exits when every writer has closed the
pipe). It ignores SIGINT and SIGTERM, which a terminal or an init sends to
the whole process group; the server decides when logging ends.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from typing import TextIO

_WRAPPER = r"""
import datetime, json, re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
levels = {"E": "ERROR", "W": "WARNING", "I": "INFO", "D": "DEBUG", "F": "CRITICAL"}
prefix = re.compile(r"([EWIDF])\d{4} ")
out = sys.stdout
for raw in sys.stdin.buffer:
    line = raw.decode("utf-8", "replace").rstrip("\r\n")
    if not line.strip():
        continue
    found = prefix.match(line)
    out.write(json.dumps({
        "ts": datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds"),
        "level": levels[found[1]] if found else "WARNING",
        "logger": "stderr",
        "msg": line,
        "request_id": "-",
    }, ensure_ascii=False) + "\n")
    out.flush()
"""


@dataclass(frozen=True)
class JsonStderr:
    """The original stderr (for the logging handler) and the wrapping child."""

    stream: TextIO
    wrapper: subprocess.Popen[bytes]


def json_stderr() -> JsonStderr:
    """Route fd 2 through the wrapping child; the caller keeps the result alive."""
    sys.stderr.flush()
    original = os.dup(2)
    read_end, write_end = os.pipe()
    try:
        # close_fds (the default) keeps write_end out of the child: EOF comes
        # when this process and its own children have closed fd 2.
        wrapper = subprocess.Popen(
            [sys.executable, "-I", "-c", _WRAPPER],
            stdin=read_end,
            stdout=original,
            stderr=subprocess.DEVNULL,
        )
    finally:
        os.close(read_end)
    os.dup2(write_end, 2)
    os.close(write_end)
    stream = os.fdopen(original, "w", buffering=1, encoding="utf-8", errors="replace")
    return JsonStderr(stream, wrapper)
