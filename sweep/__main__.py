"""`python -m sweep`: a sweep's fork server is started before anything else is imported (its imports then
overlap Hydra's; sweep/forkserver.py), then the entry point (sweep/cli.py) runs."""

import sys

from sweep import forkserver
from sweep.argv import sweeps_on_forkserver

if __name__ == "__main__":
    if sweeps_on_forkserver(sys.argv[1:]):
        forkserver.start()
    from sweep.cli import main

    main()
