"""training/signals.py's ExitSignalHandler, driven by hand (no real signals, no clock races): the
first signal is recorded, a second during a save aborts it, and the same signal delivered twice
at once (Slurm to the job step, and torchrun forwarding it) is one request."""
import signal

import pytest

from megatron_masklm.training import signals


class _Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture()
def clock(monkeypatch):
    fake = _Clock()
    monkeypatch.setattr(signals.time, "monotonic", fake)
    return fake


def test_first_signal_is_recorded_and_handlers_restored(clock):
    before = signal.getsignal(signal.SIGUSR1)
    with signals.ExitSignalHandler(enabled=True) as handler:
        assert signal.getsignal(signal.SIGUSR1) == handler._handle
        handler._handle(signal.SIGUSR1, None)
        assert handler.received == signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) == before


def test_a_duplicate_delivery_does_not_abort_the_save(clock):
    with signals.ExitSignalHandler(enabled=True) as handler:
        handler._handle(signal.SIGTERM, None)
        with handler.abortable():
            clock.now += signals.DUPLICATE_WINDOW_S / 2
            handler._handle(signal.SIGTERM, None)  # torchrun's forward of Slurm's SIGTERM
        assert handler.received == signal.SIGTERM


def test_a_later_second_signal_aborts_the_save(clock):
    with signals.ExitSignalHandler(enabled=True) as handler:
        handler._handle(signal.SIGTERM, None)
        with handler.abortable():
            clock.now += signals.DUPLICATE_WINDOW_S + 0.1
            with pytest.raises(signals.SaveAborted, match="a second SIGTERM aborted"):
                handler._handle(signal.SIGTERM, None)


def test_another_signal_at_once_still_aborts(clock):
    with signals.ExitSignalHandler(enabled=True) as handler:
        handler._handle(signal.SIGUSR1, None)
        with handler.abortable(), pytest.raises(signals.SaveAborted, match="SIGTERM"):
            handler._handle(signal.SIGTERM, None)


def test_no_abort_once_the_save_commits(clock):
    with signals.ExitSignalHandler(enabled=True) as handler:
        handler._handle(signal.SIGTERM, None)
        clock.now += 10
        with handler.abortable(), handler.committing():
            handler._handle(signal.SIGTERM, None)  # recorded, the commit goes on
