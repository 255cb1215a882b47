import sys

from floodlib.viewer.serve import main

sys.exit(main())
