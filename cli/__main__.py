import sys

from rankwatch.cli.main import main

sys.exit(main())
