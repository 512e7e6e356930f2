"""A process that has imported torch, Lightning and lightning_green once, and forks a fresh child
for each Python script it is asked to run.

Importing Lightning costs about 5 s of CPU on a 2-core machine (it imports torchmetrics, which
imports torchvision and scipy); the documentation has some twenty Python examples, each of which
would pay it again. Each child is a fresh process: its own working folder, environment, argv,
stdout and stderr files, with the script run as ``__main__`` (``runpy``), exiting with the
script's status. Only the imports are shared, as a forked DataLoader worker shares them.

The server (``python zygote.py``) is single-threaded: it reads one JSON request per line on
stdin, forks, writes ``pid <n>`` once the child runs and ``rc <code>`` when it ends, then reads
the next request. :class:`Zygote` is its client; run one per concurrent script.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PRELOAD = ("torch", "lightning", "lightning_green", "lightning_green.callbacks", "lightning_green.data",
           "lightning_green.models", "lightning_green.train", "lightning_green.cli")  # fmt: skip


def _child(request: dict) -> None:
    """In the forked child: become the script's process and run it; never returns."""
    import runpy
    import traceback

    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY),
                            (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):  # fmt: skip
        opened = os.open(path, flags, 0o644)
        os.dup2(opened, fd)
        os.close(opened)
    code: int | str | None = 0
    try:
        if "script" in request:  # python script.py
            sys.argv = [request["script"]]
            sys.path[0] = os.path.dirname(os.path.abspath(request["script"]))
            runpy.run_path(request["script"], run_name="__main__")
        else:  # a console script: sys.exit(entry()) with its argv
            import importlib

            sys.argv = request["argv"]
            module, _, name = request["entry"].partition(":")
            code = getattr(importlib.import_module(module), name)()
    except SystemExit as stop:
        code = stop.code
    except BaseException:  # a script's failure is its exit status, as in python
        traceback.print_exc()
        code = 1
    raise SystemExit(code)  # a normal exit: the script's atexit handlers and threads end as usual


def serve() -> None:
    import gc
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    gc.freeze()  # the imports' objects: never scanned again by a child's collections (nor copied)
    out = os.fdopen(os.dup(1), "w", buffering=1)  # the replies; the child's fd 1 becomes its stdout file
    out.write("ready\n")
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            out.close()
            _child(request)
        out.write(f"pid {pid}\n")
        _, status = os.waitpid(pid, 0)
        out.write(f"rc {os.waitstatus_to_exitcode(status)}\n")


class Zygote:
    """Client of one zygote server: :meth:`run` a script in a fresh forked child."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        self._ready = False

    def run(
        self, script: Path | None, cwd: Path, env: dict[str, str], timeout: float,
        argv: list[str] | None = None, entry: str = "lightning_green.cli:main",
    ) -> subprocess.CompletedProcess:  # fmt: skip
        """Run ``script`` as ``python script`` would in ``cwd`` with ``env`` (or, with ``argv``,
        the console script whose function is ``entry``); its output and exit status."""
        import threading

        assert self.proc.stdin is not None and self.proc.stdout is not None
        if not self._ready:
            assert self.proc.stdout.readline().strip() == "ready", "the zygote failed to import"
            self._ready = True
        out, err = (Path(tempfile.mkstemp(prefix="zygote", suffix=s)[1]) for s in (".out", ".err"))
        request: dict = {"cwd": str(cwd), "env": env, "stdout": str(out), "stderr": str(err)}
        request.update({"script": str(script)} if argv is None else {"argv": argv, "entry": entry})
        args = [str(script)] if argv is None else argv
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        pid = int(self.proc.stdout.readline().split()[1])
        killed: list[int] = []

        def kill() -> None:  # past its time: killed, as subprocess.run(timeout=) would
            killed.append(pid)
            os.kill(pid, 9)

        timer = threading.Timer(timeout, kill)
        timer.start()
        rc = int(self.proc.stdout.readline().split()[1])
        timer.cancel()
        result = subprocess.CompletedProcess(args, rc, out.read_text(), err.read_text())
        out.unlink()
        err.unlink()
        if killed:
            raise subprocess.TimeoutExpired(args, timeout, output=result.stdout, stderr=result.stderr)
        return result

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


_SHARED: list[Zygote] = []


def shared() -> Zygote:
    """This test process's own zygote (started at the first call, ended at exit): for tests that
    run one command at a time."""
    if not _SHARED:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
        _SHARED.append(Zygote(env))
        atexit.register(_SHARED[0].close)
    return _SHARED[0]


if __name__ == "__main__":
    serve()
