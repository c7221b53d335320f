"""The ahi-curation command: run the demo, serve or fill an embedded store, apply, verify and revert saved plans.

A mistake in what is typed (a missing file, a plan that was edited, no region, a service that cannot be reached)
is one line on stderr and exit code 2; exit code 1 means the run finished with image sets not applied
(conflicts or failures, listed in the table); 0 means everything was applied (or verified, or reverted).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from curation.local.auth import Credentials

PROG = "ahi-curation"


class UsageError(Exception):
    """A mistake in what was typed: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


# --- the embedded service (engineer "local"'s handlers) ---------------------------------------------------


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


# --- apply, verify, revert ----------------------------------------------------------------------------------


def _rate(text: str) -> float | str | None:
    if text.lower() == "auto":
        return "auto"
    if text.lower() in ("none", "unlimited"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of requests per second, 'auto' or 'none'") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("a rate must be more than 0 requests per second")
    return value


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("at least 1 worker is needed")
    return value


def _service_options(parser: argparse.ArgumentParser) -> None:
    where = parser.add_argument_group("where the service is")
    where.add_argument("--endpoint-url", help="a service endpoint, e.g. http://127.0.0.1:8080 for ahi-curation serve")
    where.add_argument("--profile", help="AWS profile name (credentials and region)")
    where.add_argument("--region", help="AWS region, e.g. us-east-1")


def _run_options(parser: argparse.ArgumentParser, *, sends: bool = True) -> None:
    how = parser.add_argument_group("how fast")
    if sends:
        how.add_argument(
            "--rate",
            type=_rate,
            default="auto",
            help="updates per second: 'auto' (default) starts at the account's quota, or AHI's documented "
            "10/s, and adapts to throttling; a number is a ceiling; 'none' sends without a limit",
        )
        how.add_argument("--burst", type=float, help="updates allowed at once (default: the quota's)")
        how.add_argument("--dry-run", action="store_true", help="print the requests, send none")
    how.add_argument("--max-workers", type=_workers, default=4, help="image sets worked on at once (default 4)")
    how.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _client(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    from curation.run.clients import make_client, read_account_quotas
    from curation.run.options import ClientOptions

    options = ClientOptions(endpoint_url=args.endpoint_url, profile=args.profile, region=args.region)
    return make_client(options), read_account_quotas(options)


def _run_keywords(args: argparse.Namespace, quotas: dict[str, Any]) -> dict[str, Any]:
    return {
        "rate": args.rate,
        "burst": args.burst,
        "max_workers": args.max_workers,
        "progress": args.progress,
        "quotas": quotas or None,
    }


def _load_plan(path: str) -> Any:
    from curation.curate.updateplan import UpdatePlan

    if not os.path.exists(path):
        raise UsageError(f"there is no plan file {path}")
    return UpdatePlan.load(path)


def _need_journal(path: str) -> None:
    if not os.path.exists(path):
        raise UsageError(f"there is no journal {path}")


def _print_result(frame: Any, journal: str | None) -> int:
    import pandas as pd

    from curation.run.results import SUCCESS

    errors = frame["error"].dropna().astype(str)
    if len(frame) and len(errors) == len(frame) and errors.str.startswith("could not connect to").all():
        where = f" (journaled in {journal}; run again when it can be reached)" if journal else ""
        raise UsageError(f"{errors.iloc[0].split(': nothing was sent')[0]}: nothing was sent{where}")
    with pd.option_context("display.max_rows", 200, "display.width", 200, "display.max_colwidth", 80):
        print(frame.to_string(index=False))
    counts = frame["status"].value_counts().to_dict()
    print(", ".join(f"{count} {status}" for status, count in counts.items()) or "nothing to do")
    return 0 if set(counts) <= {str(s) for s in SUCCESS} else 1


def _apply(args: argparse.Namespace) -> int:
    from curation.run.applying import apply

    plan = _load_plan(args.plan)
    client, quotas = _client(args)
    if args.dry_run:
        return _print_result(apply(plan, client, dry_run=True), None)
    frame = apply(plan, client, args.journal, **_run_keywords(args, quotas))
    return _print_result(frame, args.journal)


def _revert(args: argparse.Namespace) -> int:
    from curation.run.reverting import revert

    _need_journal(args.journal)
    client, quotas = _client(args)
    frame = revert(
        args.journal, client, journal_out=args.journal_out, dry_run=args.dry_run, **_run_keywords(args, quotas)
    )
    return _print_result(frame, args.journal_out or f"{args.journal}.revert")


def _verify(args: argparse.Namespace) -> int:
    import pandas as pd

    from curation.run.verifying import verify

    plan = _load_plan(args.plan)
    if args.journal is not None:
        _need_journal(args.journal)
    client, quotas = _client(args)
    report = verify(
        plan, client, args.journal, max_workers=args.max_workers, progress=args.progress, quotas=quotas or None
    )
    if report.empty:
        print(f"verified: every image set of plan {plan.plan_id} holds what the plan intended")
        return 0
    with pd.option_context("display.max_rows", 200, "display.width", 200, "display.max_colwidth", 60):
        print(report.to_string(index=False))
    print(f"{len(report)} difference(s) in {report['ImageSetID'].nunique()} image set(s)")
    return 1


def _demo(args: argparse.Namespace) -> int:
    from curation.demo import run_demo

    return run_demo(store_path=args.store)


# --- the parser -----------------------------------------------------------------------------------------


_EXAMPLES = {
    "demo": "example:\n  ahi-curation demo",
    "serve": "example:\n  ahi-curation serve --store ./store --port 8080",
    "import": "example:\n  ahi-curation import --store ./store ./dicom/",
    "apply": "examples:\n  ahi-curation apply fix.plan.json --journal fix.jsonl --region us-east-1\n"
    "  ahi-curation apply fix.plan.json --journal fix.jsonl --endpoint-url http://127.0.0.1:8080 --dry-run",
    "verify": "example:\n  ahi-curation verify fix.plan.json --journal fix.jsonl --region us-east-1",
    "revert": "example:\n  ahi-curation revert fix.jsonl --region us-east-1",
}


def _command(
    commands: Any, name: str, handler: Callable[[argparse.Namespace], int], summary: str, description: str
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog=_EXAMPLES[name],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=handler)
    return parser


def _add_run_commands(commands: Any) -> None:
    applier = _command(
        commands,
        "apply",
        _apply,
        "apply (or resume) a saved plan, journaled",
        "Send the requests of a plan saved with UpdatePlan.save (and reviewed in a notebook), journaled: run the\n"
        "same command again to resume after a crash. A plan edited since it was saved is refused.",
    )
    applier.add_argument("plan", help="the saved plan (JSON)")
    applier.add_argument("--journal", required=True, help="journal file: created, or resumed when it exists")
    _service_options(applier)
    _run_options(applier)

    checker = _command(
        commands,
        "verify",
        _verify,
        "check that the service holds what a plan intended",
        "Fetch every image set a plan touches and compare it with the plan's intended result; with the apply's\n"
        "journal, at the versions the apply made (later edits by others are not reported).",
    )
    checker.add_argument("plan", help="the saved plan (JSON)")
    checker.add_argument("--journal", help="the apply's journal")
    _service_options(checker)
    _run_options(checker, sends=False)

    reverter = _command(
        commands,
        "revert",
        _revert,
        "return every image set an apply touched to its version before the plan",
        "Undo an apply from its journal: every image set it changed goes back to its version before the plan,\n"
        "unless someone else changed it since (reported as a conflict). Journaled and resumable.",
    )
    reverter.add_argument("journal", help="the journal an apply wrote")
    reverter.add_argument("--journal-out", help="the revert's own journal (default: JOURNAL.revert)")
    _service_options(reverter)
    _run_options(reverter)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``ahi-curation`` command."""
    from curation import __version__

    parser = _Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    demo = _command(
        commands,
        "demo",
        _demo,
        "run the whole curation workflow on the embedded service",
        "Import sample DICOM files into an embedded store and run fetch, edit, plan, apply, verify\n"
        "and revert on it, printing each step.",
    )
    demo.add_argument("--store", help="store directory (default: a fresh temporary one)")

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

    _add_run_commands(commands)
    return parser


def _mistake(exc: BaseException) -> str | None:
    """The one line to print for an expected mistake (None: not one of ours, let it show)."""
    from botocore.exceptions import NoCredentialsError, PartialCredentialsError

    from curation.curate.updateplan import PlanFormatError
    from curation.run.clients import ClientSetupError
    from curation.run.journal import JournalError

    if isinstance(exc, UsageError | PlanFormatError | JournalError | ClientSetupError):
        return str(exc)
    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return "no AWS credentials: configure a profile (aws configure, --profile) or give --endpoint-url"
    if isinstance(exc, FileNotFoundError):
        return f"cannot create or open {exc.filename}: its folder does not exist"
    if isinstance(exc, PermissionError):
        return f"not allowed to write or read {exc.filename}"
    if isinstance(exc, IsADirectoryError | NotADirectoryError):
        return f"{exc.filename} is not a file"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ahi-curation`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        line = _mistake(exc)
        if line is None:
            raise
        print(f"{PROG} {args.command}: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
