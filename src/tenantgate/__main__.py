import sys

from tenantgate.cli import main

sys.exit(main())
