"""`python -m broker.cli`: the same as the `llm-broker` command."""

import sys

from broker.cli.main import main

sys.exit(main())
