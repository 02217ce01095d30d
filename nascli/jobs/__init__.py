"""One plain function per command: it receives the composed config and does the work."""
