import sys

from registry_p2p.cli import main

sys.exit(main())
