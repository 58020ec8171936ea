#!/bin/sh
# Test handler that never sends READY: it only sleeps.
echo "test-silent: not going to say READY"
exec sleep 3600
