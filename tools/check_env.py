"""Fail the install if a dependency replaced the pinned torch or pulled a second one.

Usage: python tools/check_env.py <torch-constraint.txt>
"""
import sys
from importlib import metadata


def main(constraint_path: str) -> int:
    pinned = open(constraint_path).read().strip().split("==", 1)[1]
    installed = metadata.version("torch")
    if installed != pinned:
        print(f"torch {installed} is installed but {pinned} was pinned: a dependency "
              f"replaced it. Run `make clean && make install`.", file=sys.stderr)
        return 1
    names = [(d.metadata["Name"] or "").lower() for d in metadata.distributions()]
    # A second torch-like distribution always means trouble; CUDA runtime packages
    # (nvidia-*) are expected with a +cuXXX torch and a sign of a stray CUDA torch otherwise.
    extra = sorted(n for n in names if n in {"torch-cpu", "torch-cuda", "pytorch"})
    if "+cpu" in pinned:
        extra += sorted(n for n in names if n.startswith("nvidia-"))
    if extra:
        print(f"unexpected torch/CUDA distributions installed next to torch {pinned}: {extra}",
              file=sys.stderr)
        return 1
    print(f"environment ok: torch {installed}, no second torch")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
