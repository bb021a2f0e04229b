"""``python -m balsam_sync.cli``: the ``balsam-sync`` command."""

from balsam_sync.cli import main

main()
