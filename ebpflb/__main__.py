"""`python -m ebpflb` is the `ebpflb` command."""

from ebpflb.cli import main

main()
