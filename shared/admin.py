"""``assay-admin``: operator commands that talk straight to Datastore with server settings.

``assay-admin create-account NAME`` bootstraps an account and prints its first admin key
(the only time the secret is shown).
"""

from __future__ import annotations

import argparse
import json
import sys

from shared.apikeys import new_key
from shared.entities import Account, Scope
from shared.settings import Settings
from shared.store import Store


def create_account(store: Store, name: str) -> tuple[Account, str]:
    account_id = Account.new_id()
    account = Account(id=account_id, account=account_id, name=name)
    key, plaintext = new_key(account=account_id, name="bootstrap", scopes=[Scope.admin])

    def write(txn):
        txn.put(account)
        txn.put(key)

    store.run_in_transaction(write)
    return account, plaintext


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="assay-admin", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create-account", help="create an account and print its first admin key")
    create.add_argument("name")
    create.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    args = parser.parse_args(argv)

    settings = Settings()
    store = Store.from_settings(settings, component="admin")
    try:
        account, plaintext = create_account(store, args.name)
    except ValueError as e:  # pydantic validation of the name
        print(f"assay-admin: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"account": account.id, "name": account.name, "api_key": plaintext}))
    else:
        print(f"account {account.id} ({account.name})")
        print(f"admin API key (shown once): {plaintext}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
