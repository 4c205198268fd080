"""``assay-admin``: operator commands that talk straight to Datastore with server settings.

``assay-admin create-account NAME`` bootstraps an account and prints its first admin key
(the only time the secret is shown). ``assay-admin issue-key ACCOUNT`` gives an existing
account a new key (admin by default): the way back in for an account that lost its keys.
``assay-admin list-accounts`` lists every account with its keys (ids, names, scopes,
status, expiry; never a secret or its hash).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from shared.apikeys import new_key
from shared.entities import Account, ApiKey, Scope
from shared.errors import NotFound
from shared.settings import Settings
from shared.store import ANY_ACCOUNT, Store


def create_account(store: Store, name: str) -> tuple[Account, str]:
    account_id = Account.new_id()
    account = Account(id=account_id, account=account_id, name=name)
    key, plaintext = new_key(account=account_id, name="bootstrap", scopes=[Scope.admin])

    def write(txn):
        txn.put(account)
        txn.put(key)

    store.run_in_transaction(write)
    return account, plaintext


def issue_key(store: Store, account_id: str, *, name: str = "operator", scopes: list[Scope] | None = None) -> tuple[ApiKey, str]:
    """A new key for an existing account, stored; returns it and its plaintext (shown once).

    Raises NotFound when the account does not exist, ValueError for an invalid name.
    """
    key, plaintext = new_key(account=account_id, name=name, scopes=list(dict.fromkeys(scopes or [Scope.admin])))

    def write(txn):
        txn.get(Account, account_id, account=ANY_ACCOUNT)  # NotFound; and the account cannot vanish meanwhile
        txn.put(key)

    store.run_in_transaction(write)
    return key, plaintext


def list_accounts(store: Store) -> list[dict[str, Any]]:
    """Every account, oldest first, with its keys newest first: public fields only."""
    out = []
    for account in store.iterate(Account, account=ANY_ACCOUNT, order="created_at"):
        keys = [
            {
                "id": k.id,
                "name": k.name,
                "scopes": [str(s) for s in k.scopes],
                "status": str(k.status),
                "created_at": k.created_at.isoformat(),
                "expires_at": k.expires_at.isoformat() if k.expires_at else None,
                "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
            }
            for k in store.iterate(ApiKey, account=account.id)
        ]
        out.append({"id": account.id, "name": account.name, "status": str(account.status), "keys": keys})
    return out


def _print_accounts(accounts: list[dict[str, Any]]) -> None:
    if not accounts:
        print("no accounts")
    for account in accounts:
        print(f"account {account['id']} ({account['name']}, {account['status']})")
        for k in account["keys"]:
            expiry = f", expires {k['expires_at']}" if k["expires_at"] else ""
            print(f"  {k['id']}  {k['name']:<20} {','.join(k['scopes']):<16} {k['status']}{expiry}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="assay-admin", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create-account", help="create an account and print its first admin key")
    create.add_argument("name")
    issue = sub.add_parser("issue-key", help="give an existing account a new key and print it")
    issue.add_argument("account", help="the account's id (acc_…)")
    issue.add_argument("--name", default="operator", help="the key's name (default: operator)")
    issue.add_argument(
        "--scope",
        dest="scopes",
        action="append",
        choices=[str(s) for s in Scope],
        help="a scope to grant; repeat for several (default: admin)",
    )
    listing = sub.add_parser("list-accounts", help="list the accounts and their keys (never their secrets)")
    for p in (create, issue, listing):
        p.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)

    settings = Settings()
    store = Store.from_settings(settings, component="admin")
    try:
        if args.command == "create-account":
            account, plaintext = create_account(store, args.name)
            result: Any = {"account": account.id, "name": account.name, "api_key": plaintext}
            text = f"account {account.id} ({account.name})\nadmin API key (shown once): {plaintext}"
        elif args.command == "issue-key":
            scopes = [Scope(s) for s in args.scopes] if args.scopes else None
            key, plaintext = issue_key(store, args.account, name=args.name, scopes=scopes)
            result = {"account": key.account, "key": key.id, "scopes": [str(s) for s in key.scopes], "api_key": plaintext}
            text = f"key {key.id} ({','.join(result['scopes'])}) for account {key.account}\nAPI key (shown once): {plaintext}"
        else:
            result = list_accounts(store)
            if not args.json:
                _print_accounts(result)
                return 0
            text = ""
    except ValueError as e:  # pydantic validation of a name
        print(f"assay-admin: {e}", file=sys.stderr)
        return 2
    except NotFound as e:
        print(f"assay-admin: {e.message}", file=sys.stderr)
        return 1
    print(json.dumps(result) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
