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
    torches = [d.metadata["Name"] for d in metadata.distributions()
               if (d.metadata["Name"] or "").lower().startswith(("torch", "nvidia-"))]
    extra = sorted(n for n in torches if n.lower() not in {"torch"})
    if extra:
        print(f"unexpected torch/CUDA distributions installed: {extra}", file=sys.stderr)
        return 1 if "+cpu" in pinned else 0
    print(f"environment ok: torch {installed}, no second torch")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
