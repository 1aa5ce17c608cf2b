"""`napari_unet train` with a SIGINT from inside one engine function, in a process of its own
(tests/test_cli.py::test_a_sigint_at_any_moment_saves_whole_steps).

    python tests/sigint_child.py '{"name": "train_step", "call": 3, "after": true}' ARGS...
    python tests/sigint_child.py '{"name": "reference"}' ARGS...

The hook sends SIGINT to this process at the `call`-th call of ``training.loop.<name>``, before
or after the real work; "reference" raises Ctrl-C in the caller right after step 3 was
reported (between steps). Run here rather than inside pytest, so that signals, the batch
thread and the trainer's state cannot leak into the tests after it. Exit status: the CLI's.
"""
import json
import os
import signal
import sys

from napari_unet import cli, cli_commands
from napari_unet.engine.events import Progress
from napari_unet.engine.training import loop


def interrupt_after_step_3():
    real = cli_commands.printer

    def printer(mode):
        emit = real(mode)

        def interrupted_after_step_3(event):
            emit(event)
            if isinstance(event, Progress) and event.step == 3:
                raise KeyboardInterrupt
        return interrupted_after_step_3

    cli_commands.printer = printer


def sigint_inside(name: str, call: int, after: bool):
    real, calls = getattr(loop, name), []

    def hooked(*args, **kwargs):
        calls.append(name)
        if len(calls) == call and not after:
            os.kill(os.getpid(), signal.SIGINT)
        result = real(*args, **kwargs)
        if len(calls) == call and after:
            os.kill(os.getpid(), signal.SIGINT)
        return result

    setattr(loop, name, hooked)


def main(argv) -> int:
    spec = json.loads(argv[0])
    if spec["name"] == "reference":
        interrupt_after_step_3()
    else:
        sigint_inside(spec["name"], spec["call"], spec["after"])
    return cli.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
