"""The command line: the composition root, the one package that wires api/ and workers/ together."""
