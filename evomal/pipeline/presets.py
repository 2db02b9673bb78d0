"""Config files read by the workflow itself: YAML errors with file and line, and presets by name.

Snakemake reads ``--configfile`` files before the workflow is parsed, so a missing file or a YAML error
there is reported by Snakemake alone. ``--config preset=<name>`` (or ``preset: <name>`` in a config
file) is read here instead: an unknown name is refused with the list of presets, a YAML error names the
file, the line and the column. A preset is merged over the default config, and the command line's own
``--configfile`` / ``--config`` keys are merged over the preset.
"""
from __future__ import annotations

from pathlib import Path

from evomal.pipeline.config import ConfigError

PRESET_DIR = Path(__file__).resolve().parents[2] / "config" / "experiments"


def read_yaml_file(path: str | Path, *, what: str = "config file") -> dict:
    """A YAML mapping; ConfigError naming the file (and line and column) otherwise."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot be read ({exc.strerror})") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{what} {path}{where}: not valid YAML: {problem}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{what} {path}: must be a mapping of config keys, got {type(doc).__name__}")
    return doc


def check_config_file(path: str | Path) -> None:
    """Before Snakemake's ``configfile:`` reads ``path`` (whose own error names neither file nor line)."""
    if Path(path).exists():
        read_yaml_file(path)


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    """A preset by name (``config/experiments/<name>.yaml``) or by path; ConfigError listing the presets."""
    by_name = PRESET_DIR / f"{name}.yaml"
    path = Path(name) if ("/" in name or name.endswith((".yaml", ".yml"))) else by_name
    if not path.is_file():
        raise ConfigError(f"config key preset: no preset {name!r} ({path} does not exist); presets: "
                          f"{', '.join(list_presets())}")
    return path


def apply_preset(config: dict, command_line: dict) -> str | None:
    """Merge the preset that ``config`` names (if any) into ``config``, then the command line's keys
    over it again (``--configfile`` / ``--config`` win over the preset, as over the default config)."""
    from snakemake.utils import update_config

    name = config.get("preset")
    if not name:
        return None
    if not isinstance(name, str):
        raise ConfigError(f"config key preset: must be a preset name or a path, got {name!r}")
    path = preset_path(name)
    doc = read_yaml_file(path, what="preset")
    doc.pop("preset", None)
    update_config(config, doc)
    update_config(config, dict(command_line))
    return str(path)
