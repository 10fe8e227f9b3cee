"""Shell completion: `cas completion bash|zsh` prints a script that asks `cas __complete` for the
words that fit: commands, their options, and run names and pin labels of the store (read from the
local index and, for a store on this disk, its pins; nothing is fetched from S3 to complete a word).
"""

from __future__ import annotations

import argparse
import os

BASH = r'''# cas completion for bash: eval "$(cas completion bash)" in ~/.bashrc
_cas_complete() {
    local IFS=$'\n'
    COMPREPLY=($(cas __complete "$COMP_CWORD" "${COMP_WORDS[@]}" 2>/dev/null))
}
complete -o default -F _cas_complete cas
'''

ZSH = r'''# cas completion for zsh: eval "$(cas completion zsh)" in ~/.zshrc
autoload -U +X bashcompinit && bashcompinit
''' + BASH.split("\n", 1)[1]

SCRIPTS = {"bash": BASH, "zsh": ZSH}


def candidates(parser: argparse.ArgumentParser, cword: int, words: list[str]) -> list[str]:
    """The words that may stand at position `cword` of `words` (words[0] is `cas`)."""
    current = words[cword] if cword < len(words) else ""
    before = words[1:cword]
    sub = _subparsers(parser)
    command = next((w for w in before if w in sub), None)
    if command is None:
        options = [o for a in parser._actions for o in a.option_strings]
        found = list(sub) + options if current.startswith("-") else list(sub)
    elif current.startswith("-"):
        found = [o for a in sub[command]._actions for o in a.option_strings]
    else:
        found = _names(_store_option(before), command)
    return sorted({w for w in found if w.startswith(current) and w != "__complete"})


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _store_option(words: list[str]) -> str | None:
    for i, w in enumerate(words):
        if w == "--store" and i + 1 < len(words):
            return words[i + 1]
        if w.startswith("--store="):
            return w.split("=", 1)[1]
    return None


def _names(uri: str | None, command: str) -> list[str]:
    """Run names (from the local index) and, for a store on this disk, pin labels."""
    if command in ("init", "stats", "verify", "reindex", "gc", "pins", "cache", "completion"):
        return []
    try:
        from .store import Store
        store = Store.open(uri)
        if not store.exists:
            return []
        names = [] if command in ("pin", "unpin") else list(store.records.run_names())
        if not store.backend.cached_reads:  # a store on this disk: listing its pins is cheap
            names += [p.label for p in store.pins()]
        return names
    except Exception:  # completing a word never fails loudly
        return []


def complete(parser: argparse.ArgumentParser, argv: list[str]) -> int:
    """`cas __complete CWORD WORD...`: print the candidates, one per line."""
    try:
        cword = int(argv[0])
    except (IndexError, ValueError):
        return 2
    for word in candidates(parser, cword, argv[1:]):
        print(word)
    return 0


def script(shell: str) -> str:
    return SCRIPTS[shell]


def shell_from_env() -> str:
    return "zsh" if os.environ.get("SHELL", "").endswith("zsh") else "bash"
