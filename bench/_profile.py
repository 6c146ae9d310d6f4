"""Where a server's CPU goes under load: py-spy record (raw stacks), summarised.

``py-spy`` comes with the dev tools (``make install``); without it the
profile is skipped with a note.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections import Counter
from collections.abc import Awaitable
from pathlib import Path

from _common import table

# "func (path/to/file.py:123)" -> "func (file.py)"
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<path>[^()]*?)(?::\d+)?\)$")
_RATE = 250


def py_spy() -> str | None:
    """The py-spy executable next to this interpreter, or on PATH."""
    local = Path(sys.executable).with_name("py-spy")
    return str(local) if local.exists() else shutil.which("py-spy")


def short(frame: str) -> str:
    """A frame without its line number and with only the last two path parts."""
    m = _FRAME.match(frame)
    if m is None:
        return frame
    path = "/".join(Path(m["path"]).parts[-2:])
    return f"{m['func']} ({path})"


def summarise(raw: str) -> tuple[int, Counter[str], Counter[str]]:
    """Total samples, inclusive and self samples per frame from py-spy raw output."""
    total, inclusive, own = 0, Counter[str](), Counter[str]()
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [short(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames[1:]):  # frames[0] is the thread
            inclusive[frame] += count
    return total, inclusive, own


async def profile_server(pid: int, seconds: float, load: Awaitable[object], out: Path) -> None:
    """Record ``pid`` for ``seconds`` while ``load`` runs; print the top frames."""
    exe = py_spy()
    if exe is None:
        print("\n(py-spy not installed: profile skipped)")
        if asyncio.iscoroutine(load):
            load.close()  # never started: close it instead of leaving it unawaited
        return
    argv = [exe, "record", "--pid", str(pid), "--duration", str(int(seconds))]
    argv += ["--rate", str(_RATE), "--format", "raw", "--output", str(out), "--nonblocking"]
    spy = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        await load
        _, err = await spy.communicate()
    finally:
        if spy.returncode is None:
            spy.kill()
            await spy.wait()
    report(out, spy.returncode, err, seconds)


def report(out: Path, returncode: int | None, err: bytes, seconds: float) -> None:
    """Print the summary of a finished recording, or why there is none."""
    if returncode != 0 or not out.exists():
        print(f"\n(py-spy failed: {err.decode(errors='replace').strip()[-300:]})")
        return
    print_summary(*summarise(out.read_text()), seconds=seconds)


def print_summary(total: int, inclusive: Counter[str], own: Counter[str], seconds: float) -> None:
    """The top frames by inclusive and by self samples."""
    busy = total / (_RATE * seconds)
    print(f"samples: {total} at {_RATE} Hz over {seconds:.0f} s = {busy:.0%} of one core busy")
    rows = [[f, n, f"{n / total:.1%}"] for f, n in inclusive.most_common(28)]
    print("\n-- inclusive (frame on the stack) --")
    print(table(["frame", "samples", "share"], rows))
    rows = [[f, n, f"{n / total:.1%}"] for f, n in own.most_common(20)]
    print("\n-- self (leaf frame) --")
    print(table(["frame", "samples", "share"], rows))
