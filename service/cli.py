"""`autodistill serve` and `autodistill keys create|list|revoke`: they join the library's CLI through the
``autodistill.commands`` entry point (pyproject.toml), so the library never imports the service.

What they need is imported here, at module level: when a package of the `service` extra is missing,
loading the entry point fails and the CLI leaves these commands out, with the hint
``pip install autodistill[service]``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import uvicorn

from autodistill.cli.common import Commands

from . import db
from .app import create_app
from .ray_backend import LocalRayHead
from .settings import ServiceSettings
from .store import Store


def add_service_commands(sub: Commands) -> None:
    s = sub.add_parser("serve", help="run the REST service (uvicorn)")
    s.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--state-dir", type=Path, help="uploads, searches, the database (default: "
                   "$AUTODISTILL_SERVICE_STATE_DIR or ~/.local/share/autodistill-service)")
    s.add_argument("--database-url", help="SQLAlchemy URL (default: SQLite in the state dir)")
    s.add_argument("--ray-address", help="job-server URL of an existing Ray cluster (default: a local head)")
    s.add_argument("--stop-ray", action="store_true",
                   help="stop the local Ray head this service started, and exit")
    s.set_defaults(func=_serve)

    k = sub.add_parser("keys", help="API keys of the REST service")
    k.add_argument("--state-dir", type=Path)
    k.add_argument("--database-url")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    c = ksub.add_parser("create", help="create a key and print it (shown once; only its hash is stored)")
    c.add_argument("name")
    c.add_argument("--admin", action="store_true", help="may also refit the meta-model")
    c.set_defaults(func=_keys_create)
    ksub.add_parser("list", help="list keys (never the secrets)").set_defaults(func=_keys_list)
    r = ksub.add_parser("revoke", help="revoke a key by id or prefix")
    r.add_argument("key")
    r.set_defaults(func=_keys_revoke)


def _settings(args: argparse.Namespace, **extra) -> ServiceSettings:
    return ServiceSettings.from_env(state_dir=getattr(args, "state_dir", None),
                                    database_url=getattr(args, "database_url", None), **extra)


def _store(args: argparse.Namespace) -> Store:
    settings = _settings(args)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    engine = db.make_engine(settings.sqlalchemy_url)
    db.migrate(engine)
    return Store(engine)


def _serve(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args, ray_address=args.ray_address)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.stop_ray:
        LocalRayHead(settings.state_dir, settings.ray_host).stop()
        return 0
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="info")
    return 0


def _keys_create(args: argparse.Namespace) -> int:
    secret, row = _store(args).create_key(args.name, "admin" if args.admin else "user")
    print(secret)
    print(f"key {row['id']} ({row['scope']}) created; the secret above is not stored, keep it", file=sys.stderr)
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    for row in _store(args).list_keys():
        state = "revoked" if row["revoked_at"] else "active"
        print(f"{row['id']}  {row['prefix']}...  {row['scope']:<5}  {state:<7}  {row['name']}")
    return 0


def _keys_revoke(args: argparse.Namespace) -> int:
    if not _store(args).revoke_key(args.key):
        print(f"error: no active key {args.key!r}", file=sys.stderr)
        return 1
    return 0
