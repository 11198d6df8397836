"""Preemption-safe stopping (``--exit-signal-handler``): SIGTERM or SIGUSR1 finishes the step in
flight, saves a checkpoint and exits 0, so a requeued job resumes from it.

As Megatron-LM's ``DistributedSignalHandler``: each rank's handler only records the signal; the
training loop all-reduces it (MAX) after every step, so all ranks stop at the same iteration
whichever of them the signal reached. A second signal during a save raises :class:`SaveAborted`
there (the save removes its ``.partial`` directory; the pointer keeps naming the previous
checkpoint), except once the save commits (:meth:`ExitSignalHandler.committing`). The same
signal again within ``DUPLICATE_WINDOW_S`` of the first is one request, not a second: under
Slurm + torchrun every rank gets SIGTERM twice within milliseconds (Slurm signals the whole job
step, and torchrun forwards the SIGTERM it got), which must not abort the save the first asked
for.
Handlers are installed on entering the context and the previous ones restored on leaving it.
Processes forked from a rank (the checkpoint writers) ignore the signals; helper processes that
must outlive a save are started inside :meth:`ExitSignalHandler.ignored`.
"""
import os
import signal
import time
from contextlib import contextmanager
from typing import Iterator, Optional

EXIT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
DUPLICATE_WINDOW_S = 2.0
"""A repeat of the first signal this soon after it is the same request delivered twice."""


class SaveAborted(BaseException):
    """A second signal arrived during a checkpoint save, which was abandoned. A BaseException,
    like KeyboardInterrupt, so that no ``except Exception`` on the way swallows it."""

    def __init__(self, signum: int, detail: str = ""):
        super().__init__(signum, detail)
        self.signum, self.detail = signum, detail

    def __str__(self) -> str:
        return f"a second {signal_name(self.signum)} aborted the checkpoint save" + (
            f": {self.detail}" if self.detail else "")


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def _say(text: str) -> None:
    """One line on stderr from a signal handler: os.write, since the interrupted code may be in
    the middle of a buffered write to the same stream."""
    os.write(2, f"{text}\n".encode())


class ExitSignalHandler:
    """Records SIGTERM/SIGUSR1 while active (see module); inert when not ``enabled``."""

    def __init__(self, *, enabled: bool, signals=EXIT_SIGNALS):
        self.enabled = enabled
        self.signals = tuple(signals)
        self.received: Optional[int] = None
        """The first signal this rank received (None: none yet)."""
        self._received_at = 0.0
        self._previous = {}
        self._pid = None
        self._abortable = False

    def __enter__(self) -> "ExitSignalHandler":
        if self.enabled:
            self._pid = os.getpid()
            self._previous = {signum: signal.signal(signum, self._handle)
                              for signum in self.signals}
        return self

    def __exit__(self, *exc) -> bool:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}
        return False

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self._pid:  # a forked checkpoint writer: its rank decides
            return
        name = signal_name(signum)
        if (self.received == signum
                and time.monotonic() - self._received_at < DUPLICATE_WINDOW_S):
            return  # the same request delivered twice (Slurm and torchrun; see module)
        if self.received is not None and self._abortable:
            self._abortable = False  # a third signal during the clean-up is only recorded
            _say(f"received a second {name} during the checkpoint save: aborting the save")
            raise SaveAborted(signum)
        if self.received is None:
            self.received, self._received_at = signum, time.monotonic()
            _say(f"received {name}: finishing the current iteration, then saving a checkpoint "
                 "and exiting")
        else:
            _say(f"received {name} again: already stopping after the current iteration")

    @contextmanager
    def ignored(self) -> Iterator[None]:
        """Inside, the exit signals are ignored, and a helper process started here keeps
        ignoring them (SIG_IGN survives fork and exec; a handler does not): Slurm's --signal
        reaches every process of a job step, and only the ranks may act on it. A signal that
        arrives inside is lost, so keep it short."""
        previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in self.signals}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    @contextmanager
    def abortable(self) -> Iterator[None]:
        """A save: inside, a signal after the first one aborts it (:class:`SaveAborted`)."""
        self._abortable = True
        try:
            yield
        finally:
            self._abortable = False

    @contextmanager
    def committing(self) -> Iterator[None]:
        """The save's commit (renames, pointer switch): from here on a second signal does not
        abort it; the save completes and the run exits as the first signal asked."""
        self._abortable = False
        yield
