"""`python -m gptoss_viz census ...`: command-line tools of the package."""

import sys


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("census",):
        print("usage: python -m gptoss_viz census PROMPTS --model ID [--gpt2 ID] --out FILE.json|.csv",
              file=sys.stderr)
        return 2
    from gptoss_viz import prefer_expandable_segments

    prefer_expandable_segments()  # before torch touches CUDA
    from gptoss_viz.census import main as census_main

    return census_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
