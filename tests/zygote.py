"""A Python that imports the heavy libraries of a ``vitstem-train`` process once, then forks ``python -m <module>
<args>`` processes on request (``python -m tests.zygote``, driven by :class:`tests.helpers.Zygote`).

Each forked command is a process of its own, as a new interpreter would be: its own pid and session (``setsid``, so
a signal to its process group reaches it and the DDP ranks it starts, and nothing else), its working folder,
environment, standard streams and resource limits, and it ends as an interpreter ends (``atexit``, non-daemon threads
joined, its exit code or the signal that killed it). What it does not pay is the ~6 s of importing torch,
Lightning, timm and torchmetrics that a new interpreter pays on a 2-core machine: those modules (third-party only;
vitstem itself is imported by the command, as in a new process) were imported here, before any thread or state
existed. What a new interpreter adds, start-up imports and the console of a first run, is tested with new
interpreters (tests/test_startup.py, tests/test_console.py); so are the DDP ranks a command starts.

Protocol: one JSON request per line on stdin, ``{"module", "args", "cwd", "env", "stdout", "stderr", "status",
"fsize"}`` (``stderr`` null: into ``stdout``; ``fsize``: RLIMIT_FSIZE in bytes, or null). A supervisor process per
request writes ``status`` (JSON, replaced atomically): ``{"pid"}`` once the command's process exists, then
``{"pid", "returncode"}`` (negative: killed by that signal) when it has ended.
"""
import json
import os
import runpy
import signal
import sys

PRELOAD = ("torch", "torch.distributed", "torchvision", "torchmetrics", "lightning", "lightning.pytorch", "timm",
           "hydra", "omegaconf", "wandb", "pydantic", "rich", "matplotlib", "scipy.stats")


def _write(path: str, status: dict) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(status, f)
    os.replace(path + ".tmp", path)


def serve() -> dict:
    """Fork a supervisor per request; return, in the forked command's process only, its request."""
    for name in PRELOAD:
        __import__(name)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the supervisors are reaped by the kernel
    print("ready", flush=True)
    while line := sys.stdin.readline():
        request = json.loads(line)
        if os.fork() == 0:  # the supervisor
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            pid = os.fork()
            if pid == 0:
                return request
            _write(request["status"], {"pid": pid})
            _, status = os.waitpid(pid, 0)
            _write(request["status"], {"pid": pid, "returncode": os.waitstatus_to_exitcode(status)})
            os._exit(0)
    sys.exit(0)


def become(request: dict) -> None:
    """This process becomes ``python -m <module> <args>`` started in ``cwd`` with ``env`` and the streams asked for."""
    import resource

    os.setsid()
    if request["fsize"] is not None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (request["fsize"], resource.RLIM_INFINITY))
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.path[0] = os.getcwd()  # as `python -m` puts the working folder first
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    err = out if request["stderr"] is None else os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    for fd, to in ((null, 0), (out, 1), (err, 2)):
        os.dup2(fd, to)
    sys.stdout.reconfigure(line_buffering=True, write_through=True)  # as PYTHONUNBUFFERED, which tests set
    sys.stderr.reconfigure(line_buffering=True, write_through=True)
    sys.argv = ["-m", *request["args"]]  # runpy sets argv[0] to the module's file, as `python -m` does


if __name__ == "__main__":
    job = serve()
    become(job)
    runpy.run_module(job["module"], run_name="__main__", alter_sys=True)
