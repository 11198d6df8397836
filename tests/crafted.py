"""Checkpoint files that run a command when unpickled the stock way (the attack of issue 16):
each touches a marker file, so a test can tell whether it ran."""
import os
import pickle


class RunsCommand:
    """Unpickles to ``value`` after touching ``marker`` (as a real attack would run a shell)."""

    def __init__(self, marker: str, value=None):
        self.marker, self.value = marker, value

    def __reduce__(self):
        return (eval, (f"open({self.marker!r}, 'w').close() or {self.value!r}",))


def craft_metadata(directory: str, marker: str) -> None:
    """Replace ``directory/.metadata`` by a pickle that touches ``marker`` and then returns the
    real metadata, so that stock loading goes on as if nothing happened."""
    path = os.path.join(directory, ".metadata")
    with open(path, "rb") as handle:
        real = handle.read()
    payload = f"open({marker!r}, 'w').close() or __import__('pickle').loads({real!r})"

    class Crafted:
        def __reduce__(self):
            return (eval, (payload,))

    with open(path, "wb") as handle:
        pickle.dump(Crafted(), handle)
