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


def _agree_alone(signum):  # one rank: the MAX over ranks is its own value
    return signum


def test_a_duplicate_delivery_does_not_abort_the_save(clock):
    with signals.ExitSignalHandler(enabled=True) as handler:
        handler._handle(signal.SIGTERM, None)
        with handler.abortable():
            clock.now += signals.DUPLICATE_WINDOW_S / 2
            handler._handle(signal.SIGTERM, None)  # torchrun's forward of Slurm's SIGTERM
            assert handler.abort == 0
            handler.agreed_abort(_agree_alone)  # nothing raised: the save commits
        assert handler.received == signal.SIGTERM


def test_a_later_second_signal_abandons_the_save_at_its_check(clock):
    with signals.ExitSignalHandler(enabled=True) as handler:
        handler._handle(signal.SIGTERM, None)
        with handler.abortable():
            clock.now += signals.DUPLICATE_WINDOW_S + 0.1
            handler._handle(signal.SIGTERM, None)  # recorded, never raised in the handler
            assert handler.abort == signal.SIGTERM
            with pytest.raises(signals.SaveAborted, match="a second SIGTERM aborted"):
                handler.agreed_abort(_agree_alone)


def test_another_signal_at_once_still_abandons_it(clock):
    with signals.ExitSignalHandler(enabled=True) as handler:
        handler._handle(signal.SIGUSR1, None)
        with handler.abortable():
            handler._handle(signal.SIGTERM, None)
            with pytest.raises(signals.SaveAborted, match="SIGTERM"):
                handler.agreed_abort(_agree_alone)


def test_another_ranks_second_signal_abandons_the_save_here_too(clock):
    """Only rank 1 got the second signal: the all-reduce brings it to this rank."""
    with signals.ExitSignalHandler(enabled=True) as handler:
        handler._handle(signal.SIGTERM, None)
        with handler.abortable(), pytest.raises(signals.SaveAborted, match="SIGUSR1"):
            handler.agreed_abort(lambda mine: max(mine, int(signal.SIGUSR1)))


def test_outside_the_exit_save_a_second_signal_is_only_recorded(clock):
    with signals.ExitSignalHandler(enabled=True) as handler:
        handler._handle(signal.SIGTERM, None)
        clock.now += 10
        handler._handle(signal.SIGTERM, None)  # during a step or a periodic save
        assert handler.abort == 0 and handler.received == signal.SIGTERM
