"""Reading a YAML config file (training's --config, the memory estimator's) into flat options."""
from typing import Any, Collection, Dict, Optional


def read_flat_yaml(path: str, *, sections: Optional[Collection[str]] = None) -> Dict[str, Any]:
    """``{key: value}`` of a YAML mapping, keys with ``-`` written ``_``. A nested mapping is a
    section whose keys are merged in (only under the names in ``sections``, when given).
    Errors name the file: ValueError."""
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle) or {}
    except OSError as error:
        raise ValueError(f"cannot read --config {path!r}: {error}") from error
    except yaml.YAMLError as error:
        raise ValueError(f"--config {path!r} is not valid YAML: {error}") from error
    if not isinstance(raw, dict):
        raise ValueError(f"--config {path!r} must be a mapping of option: value")
    flat: Dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict) and (sections is None or key in sections):
            flat.update(value)
        else:
            flat[key] = value
    return {str(key).replace("-", "_"): value for key, value in flat.items()}
