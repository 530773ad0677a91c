"""Status tests of conf/examples/euler-distributed (the Piped tutorial's distributed service)."""
