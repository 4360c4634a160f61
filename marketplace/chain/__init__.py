"""The chain layer: the only code that talks to web3.

`client` opens the chain (a JSON-RPC node, or an in-process EVM when CHAIN_RPC_URL is
empty) and loads the committed contract artifacts; `sender` signs and sends the platform's
transactions with database-assigned nonces; `indexer` reads the escrow's events and tells
the payment services what the chain says; `devchain` serves the in-process EVM over
JSON-RPC to the embedded demo's other processes.
"""
