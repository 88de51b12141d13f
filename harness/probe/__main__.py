"""`python -m harness.probe model=NAME KEY=VALUE ...`: per-module statistics of a model's
ensemble at initialization (harness/probe/command.py; docs/probe.md)."""

from harness.probe.command import main

if __name__ == "__main__":
    main()
