"""The ``ahi-curation`` command: demo, serve, import, apply, revert."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from curation.local.auth import Credentials


def _add_simulation_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("simulation knobs (tests and rehearsals)")
    group.add_argument("--latency", type=float, default=0.0, help="seconds added to every call")
    group.add_argument("--lock-seconds", type=float, default=0.0, help="how long an update keeps the image set LOCKED")
    group.add_argument(
        "--quotas", choices=["none", "ahi"], default="none", help="answer ThrottlingException past AHI's quotas"
    )
    group.add_argument("--fault-rate", type=float, default=0.0, help="fraction of calls answered 5xx or throttled")


def _local_error(command: str, message: str) -> int:
    """A user's mistake: one line on stderr, exit code 2, no traceback."""
    print(f"ahi-curation {command}: {message}", file=sys.stderr)
    return 2


def _serve_credentials(args: argparse.Namespace) -> tuple[bool, Credentials | None]:
    """``(auth, credentials)`` for ``serve``: off with --no-auth, else flags, environment or profile (None:
    generate a pair). Raises ValueError with the user's mistake."""
    from curation.local.auth import resolve_credentials

    if args.no_auth:
        if args.access_key_id or args.secret_access_key or args.profile:
            raise ValueError("--no-auth takes no credentials")
        return False, None
    import botocore.exceptions

    try:
        return True, resolve_credentials(args.access_key_id, args.secret_access_key, args.profile)
    except botocore.exceptions.ProfileNotFound:
        raise ValueError(f"no AWS profile named {args.profile!r}") from None


def _serve(args: argparse.Namespace) -> int:
    from curation.local.database import StoreNotFoundError
    from curation.local.limits import ServerLimits
    from curation.local.server import run_server

    try:
        auth, credentials = _serve_credentials(args)
        limits = ServerLimits(
            workers=args.workers, read_timeout=args.read_timeout, request_timeout=args.request_timeout
        )
        if min(limits.workers, limits.read_timeout, limits.request_timeout) <= 0:
            raise ValueError("--workers, --read-timeout and --request-timeout must be positive")
    except ValueError as exc:
        return _local_error("serve", str(exc))
    try:
        run_server(
            args.store,
            host=args.host,
            port=args.port,
            auth=auth,
            credentials=credentials,
            create=args.create,
            allowed_hosts=args.allow_host,
            limits=limits,
            region=args.region,
            latency=args.latency,
            lock_seconds=args.lock_seconds,
            quotas=args.quotas,
            fault_rate=args.fault_rate,
        )
    except StoreNotFoundError:
        return _local_error("serve", f"no store at {args.store} (give --create to make a new one there)")
    except OSError as exc:
        return _local_error(
            "serve",
            f"cannot open the store at {args.store} or listen on {args.host}:{args.port}: {exc.strerror or exc}",
        )
    return 0


def _import(args: argparse.Namespace) -> int:
    from curation.local.importing import read_inputs
    from curation.local.store import Store
    from curation.model.errors import AHIError

    try:
        if Store.exists(args.store):
            store = Store(args.store, create=False)
            report = store.import_paths(args.paths, datastore_id=args.datastore_id)
        else:
            if args.datastore_id:
                return _local_error("import", f"no store at {args.store}, so no datastore {args.datastore_id} in it")
            inputs = read_inputs(args.paths)
            if not inputs.readable:
                report = None
                failures = inputs.failures
            else:
                report = Store(args.store).import_inputs(inputs)
    except AHIError as exc:
        return _local_error("import", f"{exc.code}: {exc.message}")
    except OSError as exc:
        return _local_error("import", f"cannot create or open the store at {args.store}: {exc.strerror or exc}")
    if report is None or not (report.created or report.updated or report.skipped or not report.failures):
        failures = failures if report is None else report.failures
        first = f"; first: {failures[0][0]}: {failures[0][1]}" if failures else ""
        message = f"nothing readable to import in {len(args.paths)} path(s), nothing was created{first}"
        return _local_error("import", message)
    print(f"datastore {report.datastore_id}")
    for image_set_id in report.created:
        print(f"created {image_set_id}")
    for image_set_id in report.updated:
        print(f"updated {image_set_id}")
    for label, image_set_id in report.skipped:
        print(f"unchanged {image_set_id} (already imported: {label})")
    for path, reason in report.failures:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    return 0


def _aws_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint-url", help="service endpoint (e.g. http://127.0.0.1:8080 for `ahi-curation serve`)")
    parser.add_argument("--profile", help="AWS profile name")
    parser.add_argument("--region", help="AWS region")
    parser.add_argument("--rate", type=float, default=0.25, help="updates per second (AHI's default quota: 0.25)")
    parser.add_argument("--burst", type=float, default=1.0, help="updates allowed at once (AHI's default: 1)")
    parser.add_argument("--max-workers", type=int, default=4, help="image sets worked on in parallel")
    parser.add_argument("--dry-run", action="store_true", help="print the requests, send none")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _apply(args: argparse.Namespace) -> int:
    from curation.run.applying import apply_plan_file

    return apply_plan_file(
        args.plan,
        journal=args.journal,
        endpoint_url=args.endpoint_url,
        profile=args.profile,
        region=args.region,
        rate=args.rate,
        burst=args.burst,
        max_workers=args.max_workers,
        dry_run=args.dry_run,
        progress=args.progress,
    )


def _revert(args: argparse.Namespace) -> int:
    from curation.run.applying import revert_journal_file

    return revert_journal_file(
        args.journal,
        journal_out=args.journal_out,
        endpoint_url=args.endpoint_url,
        profile=args.profile,
        region=args.region,
        rate=args.rate,
        burst=args.burst,
        max_workers=args.max_workers,
        dry_run=args.dry_run,
        progress=args.progress,
    )


def _demo(args: argparse.Namespace) -> int:
    from curation.demo import run_demo

    return run_demo(store_path=args.store)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``ahi-curation`` command."""
    parser = argparse.ArgumentParser(prog="ahi-curation", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run the whole curation workflow on the embedded service")
    demo.add_argument("--store", help="store directory (default: a fresh temporary one)")
    demo.set_defaults(handler=_demo)

    serve = commands.add_parser(
        "serve",
        help="serve a store over HTTP for the AWS CLI and any SDK (SigV4-signed requests)",
        description="Serve a store as AHI's REST-JSON API. Every request must be signed (SigV4) with the "
        "server's key pair: --access-key-id/--secret-access-key, else the AWS environment variables or profile, "
        "else a pair generated now and printed with how to use it.",
        epilog="example: ahi-curation serve --store ./store --create --port 8080",
    )
    serve.add_argument("--store", required=True, help="store directory (must hold a store unless --create)")
    serve.add_argument("--create", action="store_true", help="create the store if the directory holds none")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    serve.add_argument("--port", type=int, default=8080, help="port (0 picks a free one)")
    serve.add_argument("--region", default="us-east-1", help="the region requests are signed for (default us-east-1)")
    keys = serve.add_argument_group("authentication")
    keys.add_argument("--access-key-id", help="the access key ID clients sign with")
    keys.add_argument("--secret-access-key", help="its secret (prefer AWS_SECRET_ACCESS_KEY: flags show in ps)")
    keys.add_argument("--profile", help="take the key pair of this AWS profile")
    keys.add_argument("--no-auth", action="store_true", help="accept unsigned requests (anyone on this host)")
    serve.add_argument(
        "--allow-host", action="append", default=[], metavar="NAME", help="another name clients reach it by (proxy)"
    )
    limits = serve.add_argument_group("limits")
    limits.add_argument("--workers", type=int, default=32, help="requests answered at once (default 32)")
    limits.add_argument("--read-timeout", type=float, default=20.0, help="seconds one read may wait (default 20)")
    limits.add_argument(
        "--request-timeout", type=float, default=60.0, help="seconds one whole request may take to arrive (default 60)"
    )
    _add_simulation_options(serve)
    serve.set_defaults(handler=_serve)

    importer = commands.add_parser(
        "import",
        help="ingest DICOM P10 files and AHI JSON documents into a store",
        description="Ingest DICOM P10 files and AHI JSON documents (files or directories) into a store, "
        "created if missing. Frames are stored as the datastore's losslessStorageFormat asks (HTJ2K by "
        "default). An identical document imported before is reported unchanged; nothing readable creates nothing.",
        epilog="example: ahi-curation import --store ./store ./dicom-folder",
    )
    importer.add_argument("--store", required=True, help="store directory (created if missing)")
    importer.add_argument(
        "--datastore-id", help="datastore to import into (default: the store's only one, or a new one)"
    )
    importer.add_argument("paths", nargs="+", help="DICOM files, AHI JSON documents, or directories of them")
    importer.set_defaults(handler=_import)

    applier = commands.add_parser("apply", help="apply (or resume) a saved UpdatePlan JSON, journaled")
    applier.add_argument("plan", help="the plan saved with UpdatePlan.save (reviewed in a notebook)")
    applier.add_argument("--journal", required=True, help="journal file: created, or resumed when it exists")
    _aws_options(applier)
    applier.set_defaults(handler=_apply)

    reverter = commands.add_parser("revert", help="return every image set an apply journal touched to its base version")
    reverter.add_argument("journal", help="the journal an apply wrote")
    reverter.add_argument("--journal-out", help="the revert's own journal (default: JOURNAL.revert)")
    _aws_options(reverter)
    reverter.set_defaults(handler=_revert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ahi-curation`` console script."""
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
