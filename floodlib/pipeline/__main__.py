import sys

from floodlib.pipeline.runner import main

sys.exit(main())
