"""A binary cache of signed substitutes: a static folder any HTTP server can serve.

    index.json                              the bulk index: every item, its derivation,
                                            weights digest, whether its archive is here,
                                            and the key ids that signed it
    items/<item>/info.json                  the item's info record: its files (path, digest,
                                            size, and their pieces in the archive) and its
                                            archive (digest, size)
    items/<item>/archive.rwc                the item's files, in pieces in the store's chunk
                                            form (byte planes, Zstandard)
    items/<item>/signatures/<keyid>.sig     one signer's bundle (`reweigh.signing`)
    chunks/<2 hex>/<64 hex>                 the chunks of items' kept checkpoints, by content,
                                            one copy for all the items that name them

A client reads one index per server, not one record per item per server (Nix asks a
server once per store path, which NixOS/nix#7221 measured as the slow part), and stops
at the first servers that together hold the archive and enough trusted signers. The
records a server sends are claims, never trusted: what enters a store is decided by the
signed statements alone (`verbs.pull`).

`layout` names the paths and reads the records strictly, `archive` writes and checks the
archives, `chunks` publishes and fetches checkpoints' chunks, `folder` writes a cache
folder, `server` serves one over HTTP, `client` fetches from HTTP servers and local
folders, `trust` counts signers (pure).
"""
