"""`python -m sweep`: a sweep's fork server is started before anything else is imported (its imports then
overlap Hydra's; sweep/forkserver.py), then the entry point (sweep/cli.py) runs."""

import sys

from sweep import forkserver

if __name__ == "__main__":
    forkserver.start_for(sys.argv[1:])
    from sweep.cli import main

    main()
