"""Preemption-safe stopping (``--exit-signal-handler``): SIGTERM or SIGUSR1 finishes the step in
flight, saves a checkpoint and exits 0, so a requeued job resumes from it.

As Megatron-LM's ``DistributedSignalHandler``: each rank's handler only records the signal; the
training loop all-reduces it (MAX) after every step, so all ranks stop at the same iteration
whichever of them the signal reached. A second signal during that exit save asks to abandon it:
the handler records it too (it never raises: an exception at an arbitrary point would take one
rank out of the save's collectives while the others wait in them), and the save checks it, on
every rank together, once the shards are written and before anything is committed
(:meth:`ExitSignalHandler.agreed_abort`); then every rank raises :class:`SaveAborted`, the
``.partial`` directory is removed and the pointer keeps naming the previous checkpoint.
The same signal again within ``DUPLICATE_WINDOW_S`` of the first is one request, not a second:
under Slurm + torchrun every rank gets SIGTERM twice within milliseconds (Slurm signals the whole
job step, and torchrun forwards the SIGTERM it got).
Handlers are installed on entering the context and the previous ones restored on leaving it.
Processes forked from a rank (the checkpoint writers) ignore the signals; helper processes that
must outlive a save are started inside :meth:`ExitSignalHandler.ignored`.
"""
import os
import signal
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

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
        self.abort = 0
        """The second signal that asked to abandon the exit save (0: none)."""

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
        if self.received is None:
            self.received, self._received_at = signum, time.monotonic()
            _say(f"received {name}: finishing the current iteration, then saving a checkpoint "
                 "and exiting")
        elif self._abortable and not self.abort:
            self.abort = signum
            _say(f"received a second {name} during the checkpoint save: abandoning it once its "
                 "shards are written")
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
        """The exit save: inside, a signal after the first one asks to abandon it."""
        self._abortable = True
        try:
            yield
        finally:
            self._abortable = False

    def agreed_abort(self, agree: Callable[[int], int]) -> None:
        """Raise :class:`SaveAborted` on every rank if a second signal reached any of them;
        ``agree`` maps this rank's signal number (0: none) to the MAX over all ranks, so every
        rank must call this at the same point of the save."""
        signum = agree(self.abort or 0)
        if signum:
            raise SaveAborted(signum)
