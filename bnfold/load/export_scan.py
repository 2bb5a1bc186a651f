"""What loading a torch.export archive would execute, found before ``torch.export.load`` runs.

``torch.export.load`` is not a safe reader: it unpickles the archive's sample inputs, pickled weights
and constants with a fallback to ``weights_only=False``, opaque constants with plain ``pickle.loads``,
and loads any compiled AOTInductor library it finds. So every part it would unpickle is scanned here,
and compiled code counts as code.
"""

from __future__ import annotations

import io
import json
import posixpath
import zipfile

from bnfold.load.pickle_scan import code_globals, torch_blob_globals

# Parts torch.export.load reads as JSON or text, or not at all.
_NOT_PICKLED_NAMES = {"archive_format", "archive_version", "byteorder", "version", "serialization_id"}
_NOT_PICKLED_DIRS = ("models/", "extra/", "extra_files/", ".data/")
_COMPILED_DIR = "data/aotinductor/"


def archive_root(names: list[str]) -> str | None:
    """The prefix of a torch.export archive's entries ("" in the older layout), or None if it is not one."""
    for name in names:
        for marker in ("models/model.json", "serialized_exported_program.json"):
            if name.endswith(marker):
                return name[: -len(marker)]
    return None


def exported_program_code(archive: zipfile.ZipFile, root: str) -> list[str]:
    """The code a load would run: globals named by pickled parts, compiled libraries, unreadable pickles."""
    names = [n[len(root) :] for n in archive.namelist() if n.startswith(root) and not n.endswith("/")]
    raw = _raw_tensor_payloads(archive, root, names)
    found: set[str] = set()
    for name in names:
        if name.startswith(_COMPILED_DIR):
            found.add(f"compiled AOTInductor code ({name})")
        elif _may_be_unpickled(name) and name not in raw:
            found |= _part_globals(archive, root + name, name)
    return code_globals(found)


def _may_be_unpickled(name: str) -> bool:
    if name.startswith(_NOT_PICKLED_DIRS) or posixpath.basename(name) in _NOT_PICKLED_NAMES:
        return False
    return not (name.endswith("_config.json") or name == "serialized_exported_program.json")


def _part_globals(archive: zipfile.ZipFile, member: str, name: str) -> set[str]:
    data = archive.read(member)
    if not data:
        return set()
    try:
        return torch_blob_globals(io.BytesIO(data))[0]
    except Exception:  # whatever the damage, a part that cannot be checked is not loaded
        return {f"an unreadable pickle ({name})"}


def _raw_tensor_payloads(archive: zipfile.ZipFile, root: str, names: list[str]) -> set[str]:
    """Parts the payload configs declare only as plain tensor bytes (``use_pickle`` false, tensor metadata).

    A part that any entry marks as pickled is not raw, however else it is listed.
    """
    raw: set[str] = set()
    pickled: set[str] = set()
    for name in names:
        if name.endswith(("_weights_config.json", "_constants_config.json")):
            for path, is_raw in _payloads(archive, root, name):
                (raw if is_raw else pickled).add(path)
    return raw - pickled


def _payloads(archive: zipfile.ZipFile, root: str, name: str) -> list[tuple[str, bool]]:
    try:
        config = json.loads(archive.read(root + name)).get("config", {})
    except (ValueError, AttributeError):
        return []  # torch.export.load fails on it too; nothing listed means everything gets scanned
    directory = posixpath.dirname(name)
    found = []
    for meta in config.values() if isinstance(config, dict) else ():
        if isinstance(meta, dict):
            path = posixpath.normpath(posixpath.join(directory, str(meta.get("path_name"))))
            found.append((path, not meta.get("use_pickle") and meta.get("tensor_meta") is not None))
    return found
