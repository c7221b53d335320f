"""The ``ahi-curation`` command: demo, serve, import, apply, revert."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _add_simulation_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("simulation knobs (tests and rehearsals)")
    group.add_argument("--latency", type=float, default=0.0, help="seconds added to every call")
    group.add_argument("--lock-seconds", type=float, default=0.0, help="how long an update keeps the image set LOCKED")
    group.add_argument(
        "--quotas", choices=["none", "ahi"], default="none", help="answer ThrottlingException past AHI's quotas"
    )
    group.add_argument("--fault-rate", type=float, default=0.0, help="fraction of calls answered 5xx or throttled")


def _serve(args: argparse.Namespace) -> int:
    from curation.local.server import run_server

    run_server(
        args.store,
        host=args.host,
        port=args.port,
        latency=args.latency,
        lock_seconds=args.lock_seconds,
        quotas=args.quotas,
        fault_rate=args.fault_rate,
    )
    return 0


def _import(args: argparse.Namespace) -> int:
    from curation.local.store import Store
    from curation.model.errors import AHIError

    store = Store(args.store)
    try:
        report = store.import_paths(args.paths, datastore_id=args.datastore_id)
    except AHIError as exc:
        print(f"ahi-curation import: {exc.code}: {exc.message}", file=sys.stderr)
        return 2
    print(f"datastore {report.datastore_id}")
    for image_set_id in report.created:
        print(f"created {image_set_id}")
    for image_set_id in report.updated:
        print(f"updated {image_set_id}")
    for path, reason in report.failures:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    return 0 if (report.created or report.updated or not report.failures) else 1


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

    serve = commands.add_parser("serve", help="serve a store over HTTP for the AWS CLI and any SDK")
    serve.add_argument("--store", required=True, help="store directory (created if missing)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    serve.add_argument("--port", type=int, default=8080, help="port (0 picks a free one)")
    _add_simulation_options(serve)
    serve.set_defaults(handler=_serve)

    importer = commands.add_parser("import", help="ingest DICOM P10 files and AHI JSON documents into a store")
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
