"""``python -m crewthrottle demo`` (see crewthrottle._demo) and ``python -m crewthrottle status``
(see crewthrottle._status)."""

from __future__ import annotations

import sys

USAGE = "usage: python -m crewthrottle {demo,status} [--help]"


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "status"):
        print(USAGE, file=sys.stderr)
        return 2
    if argv[0] == "status":
        from crewthrottle._status import main as status

        return status(argv[1:])
    from crewthrottle._demo import main as demo

    return demo(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
