import sys

from scu.entry import main

sys.exit(main())
