"""`cas ui`: a local, read-only web site over a store: runs, their versions and what each costs after
dedup, folders, tensors, downloads.

Built on the standard library's threaded HTTP server (no dependency to install or keep up to date; a
read-only site for one person on loopback needs no more), server-rendered HTML with one small inline
script (copy a digest) and SVG plots drawn on the server; nothing is fetched from a network. Routes
take run names, digests and references, never file paths; every value from the store is
HTML-escaped. It reads the store through its public API only.
"""
