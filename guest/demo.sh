#!/bin/sh
# The demo guest's program (its /init.user): the guest agent in the background, so that
# `kiln stop` can shut the guest down gracefully, and a shell on the serial console for
# `kiln console`. Ends when the shell does, or when the agent shuts the guest down.
/bin/kiln-agent serve 2>/dev/null &
echo "demo guest: $(grep -c ^processor /proc/cpuinfo) CPU(s), $(free -m | awk '/Mem:/ {print $2}') MiB; agent on vsock port 52"
exec setsid cttyhack sh
