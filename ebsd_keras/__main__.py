import sys

from ebsd_keras.cli import main

sys.exit(main())
