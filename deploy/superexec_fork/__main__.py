"""``python -m deploy.superexec_fork``.

A package's ``__main__``: multiprocessing starts each forked task by re-running the
main module unless it is a ``__main__`` (``multiprocessing.spawn._fixup_main_from_name``),
and re-running ``deploy.superexec_fork``, which the fork server has preloaded, made
runpy warn in the SuperExec's log at every message a site answered.
"""

from deploy.superexec_fork import main

main()
