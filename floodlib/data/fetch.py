"""Data files fetched from a package registry: one member of a pinned wheel, checked by its SHA-256.

A profile may name terrain that is not on the user's machine yet but ships inside a package on PyPI, e.g.
the 1 m lidar tile of the ``lidar`` package::

    terrain:
      kind: dem
      fetch: {requirement: lidar==0.8.4, member: lidar/data/dem.tif,
              sha256: c0f525ea2f1ab78becf64dabdc0ba386de34c092151a95d463ae9b6cd74154f4}

:func:`fetch_wheel_member` downloads the wheel with pip (``pip download --no-deps --only-binary=:all:``, so
nothing is installed and no code of the package runs), reads the member out of it, compares its SHA-256 with
the pinned one and only then writes it into place, atomically. A file already there with the pinned checksum
is used as it is. pip's own settings apply, so a mirror (``PIP_INDEX_URL``) or a folder of wheels on a
machine without a network (``PIP_NO_INDEX=1 PIP_FIND_LINKS=/path/to/wheels``) work as for any pip download.
"""

from __future__ import annotations

import functools
import hashlib
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from floodlib.data.store import atomic_write

_SHA256 = re.compile(r"[0-9a-f]{64}")
_CHUNK_BYTES = 1 << 20


class FetchError(RuntimeError):
    """A file could not be fetched: the download failed, the member is missing or its checksum differs.

    The message names the profile field (or the ``where`` given), the value at fault and what was expected;
    nothing is written when it is raised.
    """


@dataclass(frozen=True)
class WheelMember:
    """One file inside a pinned wheel of a package registry.

    Attributes
    ----------
    requirement : a pip requirement pinned to one release with ``==`` (e.g. ``"lidar==0.8.4"``), so that the
        checksum keeps matching; a path or URL of a ``.whl`` file also works.
    member : the file's path inside the wheel, ``/``-separated (e.g. ``"lidar/data/dem.tif"``).
    sha256 : the SHA-256 of the file's bytes, 64 lowercase hex digits.
    """

    requirement: str
    member: str
    sha256: str

    def __post_init__(self) -> None:
        requirement = self.requirement.strip() if isinstance(self.requirement, str) else self.requirement
        if not isinstance(requirement, str) or not requirement:
            raise ValueError(f"requirement: {self.requirement!r} must name a wheel, e.g. 'lidar==0.8.4'")
        if "==" not in requirement and not requirement.endswith(".whl"):
            raise ValueError(f"requirement: {self.requirement!r} must pin one release with '==' (e.g. 'lidar==0.8.4'), "
                             "or be a .whl file: another release may not hold the same file")
        member = PurePosixPath(self.member) if isinstance(self.member, str) else None
        if member is None or not self.member or member.is_absolute() or ".." in member.parts or "\\" in self.member:
            raise ValueError(f"member: {self.member!r} must be a relative '/'-separated path inside the wheel, "
                             "e.g. 'lidar/data/dem.tif'")
        if not isinstance(self.sha256, str) or not _SHA256.fullmatch(self.sha256):
            raise ValueError(f"sha256: {self.sha256!r} must be the file's SHA-256 as 64 lowercase hex digits")
        object.__setattr__(self, "requirement", requirement)

    @property
    def file_name(self) -> str:
        """Where the file is kept in a folder: its checksum's first 12 digits and its own name
        (``c0f525ea2f1a-dem.tif``), so files of different content never share a name."""
        return f"{self.sha256[:12]}-{PurePosixPath(self.member).name}"


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, as 64 lowercase hex digits; read once per process while the file's size
    and modification time stay the same (a run's settings, its data preparation and its simulation all ask
    for the same DEMs' and HEC-RAS files' checksums, which may be gigabytes)."""
    stat = Path(path).stat()
    return _sha256_of(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download_wheel(source: WheelMember, folder: Path, *, where: str, timeout_s: float) -> Path:
    """``pip download`` the wheel of ``source.requirement`` into ``folder``; the wheel's path."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
               "--disable-pip-version-check", "--dest", str(folder), source.requirement]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise FetchError(f"{where}.requirement: `pip download {source.requirement}` did not finish within "
                         f"{timeout_s:g} s; check the network (or pip's index settings) and run again") from None
    if result.returncode != 0:
        output = (result.stderr.strip() or result.stdout.strip()).splitlines()
        detail = "\n".join(output[-6:]) if output else "(no output)"
        raise FetchError(f"{where}.requirement: `pip download {source.requirement}` failed (exit "
                         f"{result.returncode}):\n{detail}\nexpected a wheel on the package index pip uses (a network "
                         "connection, or PIP_INDEX_URL / PIP_FIND_LINKS for a mirror or a folder of wheels); or give "
                         "the file's path instead of fetch")
    wheels = sorted(folder.glob("*.whl"))
    if len(wheels) != 1:
        raise FetchError(f"{where}.requirement: `pip download {source.requirement}` left {len(wheels)} wheels "
                         f"({', '.join(w.name for w in wheels) or 'none'}); expected exactly one")
    return wheels[0]


def _copy_checked(archive: zipfile.ZipFile, wheel: Path, source: WheelMember, target: Path, *, where: str) -> None:
    """Write ``source.member`` of ``archive`` to ``target`` atomically, only if its SHA-256 is the pinned one."""
    try:
        info = archive.getinfo(source.member)
    except KeyError:
        suffix = PurePosixPath(source.member).suffix
        similar = [name for name in archive.namelist() if suffix and name.endswith(suffix)]
        listing = f"; its {suffix} files are: {', '.join(similar[:20])}" if similar else ""
        raise FetchError(f"{where}.member: {source.member!r} is not in {wheel.name}{listing}") from None

    def write(temporary: str) -> None:
        digest = hashlib.sha256()
        with archive.open(info) as member, open(temporary, "wb") as out:
            for chunk in iter(lambda: member.read(_CHUNK_BYTES), b""):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != source.sha256:
            raise FetchError(f"{where}.sha256: {source.member} of {wheel.name} has SHA-256 {digest.hexdigest()}; "
                             f"the profile expects {source.sha256} (a different release or a damaged download); "
                             f"nothing was written to {target}")

    atomic_write(target, write)


def fetch_wheel_member(source: WheelMember, folder: str | Path, *, where: str = "fetch",
                       timeout_s: float = 600.0) -> Path:
    """The file ``source`` names, kept in ``folder`` as ``source.file_name``: fetched when it is not there yet.

    Parameters
    ----------
    source : the wheel (a pinned requirement), the member and its SHA-256.
    folder : where the file is kept (created when missing).
    where : the profile field ``source`` came from, to start every error message with
        (e.g. ``"params.yaml: data.simulate[minnesota].terrain.fetch"``).
    timeout_s : the longest the download may take, s.

    Returns
    -------
    The file's path. A file already there with the pinned checksum is returned as it is; one with another
    checksum (damaged, or of another release) is fetched again and replaced.

    Raises
    ------
    FetchError
        naming ``where`` and the field at fault: the download failed or timed out (``.requirement``), the
        wheel has no such member (``.member``, listing the wheel's files of the same kind), or the member's
        checksum is not the pinned one (``.sha256``). Nothing is written then.
    """
    folder = Path(folder)
    target = folder / source.file_name
    if target.is_file() and file_sha256(target) == source.sha256:
        return target
    folder.mkdir(parents=True, exist_ok=True)
    # The wheel goes to a scratch folder beside the target and is removed with it: only the member is kept.
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=folder) as scratch:
        wheel = _download_wheel(source, Path(scratch), where=where, timeout_s=timeout_s)
        try:
            with zipfile.ZipFile(wheel) as archive:
                _copy_checked(archive, wheel, source, target, where=where)
        except zipfile.BadZipFile as error:
            raise FetchError(f"{where}.requirement: {wheel.name} from `pip download {source.requirement}` is not a "
                             f"readable wheel ({error})") from None
    return target
