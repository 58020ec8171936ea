#!/bin/sh
# Test handler that dies at once with exit code 7, before any handshake.
echo "test-crash: about to fail" >&2
exit 7
