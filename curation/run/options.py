"""The options of a run (apply, revert, verify) and of the clients we make, as small frozen objects.

In the style of botocore's ``Config``: a ``RunOptions`` (or ``ClientOptions``) is immutable and
``a.merge(b)`` is a copy of ``a`` with the options ``b`` sets (those that differ from the defaults). The
public functions keep the keyword arguments a notebook user types (``curation.apply(plan, client,
journal=..., rate=10, progress=False)``) and build one of these from them; everything below them
(journal, runner, service calls, limiters) takes the one object instead of a list of keywords.

``PollPolicy`` says how to wait out ``LOCKED``; ``Progress`` is what a progress callback receives after each
finished request (and when an image set is finished); a cancel signal (``threading.Event``) stops a run
between requests, journaled and resumable.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar

from curation.model.quotas import Action, Quota
from curation.run.journal import Purpose, RequestStatus
from curation.run.limits import AUTO, CancelSignal, Limiters, Rate
from curation.run.results import ResultStatus
from curation.run.retries import DEFAULT_RETRIES, RetryPolicy

#: The actions whose limit ``control_rate`` sets: the reads made while polling, reconciling and verifying.
CONTROL_ACTIONS = (Action.GET_IMAGE_SET, Action.GET_IMAGE_SET_METADATA, Action.LIST_IMAGE_SET_VERSIONS)

_O = TypeVar("_O")

if TYPE_CHECKING:
    from typing_extensions import Unpack


def _merged(base: _O, other: _O) -> _O:
    """A copy of ``base`` with every field of ``other`` that differs from the class default."""
    changes: dict[str, Any] = {}
    for spec in dataclasses.fields(base):  # type: ignore[arg-type]
        if spec.default is not dataclasses.MISSING:
            default = spec.default
        elif spec.default_factory is not dataclasses.MISSING:
            default = spec.default_factory()
        else:
            default = dataclasses.MISSING
        value = getattr(other, spec.name)
        if value is not default and value != default:
            changes[spec.name] = value
    return dataclasses.replace(base, **changes)  # type: ignore[type-var]


@dataclass(frozen=True)
class PollPolicy:
    """How to wait out ``LOCKED``: poll at once, then every ``initial`` seconds growing by ``factor`` up to
    ``max_interval``, for at most ``timeout`` seconds in all."""

    initial: float = 0.5
    factor: float = 1.5
    max_interval: float = 10.0
    timeout: float = 900.0
    sleep: Callable[[float], object] = field(default=time.sleep, repr=False, compare=False)
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)

    @classmethod
    def coerce(cls, value: PollPolicy | float | None) -> PollPolicy:
        """A policy from a policy, a first interval in seconds, or None (the defaults)."""
        if isinstance(value, PollPolicy):
            return value
        if value is None:
            return cls()
        return cls(initial=float(value))


@dataclass(frozen=True)
class Progress:
    """One finished request of a run, as ``on_progress`` receives it (from the worker that finished it).

    ``image_set_status`` is set when this was the image set's last request (or the image set stopped).
    """

    purpose: Purpose
    image_set_id: str
    index: int
    status: RequestStatus | None
    requests_finished: int
    requests_total: int
    image_set_status: ResultStatus | None = None


ProgressCallback = Callable[[Progress], object]


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """How an apply, revert or verify runs.

    - ``rate``/``burst``: the UpdateImageSetMetadata limit. ``"auto"`` (default): start at the account's quota
      (``quotas``) or the documented one (10 per second, burst 40) and adapt to ThrottlingExceptions; a
      number: a ceiling it never exceeds (still backing off when throttled); None: no limit.
    - ``control_rate``: the same for the reads made while polling, reconciling and verifying (GetImageSet,
      GetImageSetMetadata, ListImageSetVersions; each its own quota).
    - ``quotas``: starting quotas by action (``curation.run.limits.account_quotas``); ``adaptive=False``
      keeps every rate fixed.
    - ``max_workers``: image sets worked on at once. ``poll``: waiting out LOCKED. ``retries``: waiting out
      ConflictException (throttling and 5xx are botocore's, see ``curation.run.retries``).
    - ``progress``: a tqdm bar; ``on_progress``: a callback per finished request (``Progress``);
      ``cancel``: a ``threading.Event`` that stops the run between requests (journaled, resumable).
    """

    rate: Rate = AUTO
    burst: float | None = None
    control_rate: Rate = AUTO
    quotas: Mapping[str, Quota | tuple[float, float]] | None = None
    adaptive: bool = True
    max_workers: int = 4
    progress: bool = True
    poll: PollPolicy = field(default_factory=PollPolicy)
    retries: RetryPolicy = DEFAULT_RETRIES
    on_progress: ProgressCallback | None = None
    cancel: CancelSignal | None = None
    clock: Callable[[], float] = field(default=time.monotonic, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.max_workers < 1:
            raise ValueError("max_workers must be at least 1")

    def merge(self, other: RunOptions) -> RunOptions:
        """A copy with the options ``other`` sets (those that differ from the defaults), as botocore's
        ``Config.merge``."""
        return _merged(self, other)

    def limiters(self) -> Limiters:
        """The per-action limiters of one run with these options."""
        rates: dict[str, Rate] = {Action.UPDATE_IMAGE_SET_METADATA: self.rate}
        rates.update(dict.fromkeys(CONTROL_ACTIONS, self.control_rate))
        bursts: dict[str, float] = {Action.UPDATE_IMAGE_SET_METADATA: self.burst} if self.burst is not None else {}
        return Limiters(
            self.quotas, rates=rates, bursts=bursts, adaptive=self.adaptive, clock=self.clock, sleep=self.poll.sleep
        )


@dataclass(frozen=True, kw_only=True)
class ClientOptions:
    """Where the clients we make talk to: an ``endpoint_url`` (``ahi-curation serve``), or AWS through a
    ``profile`` and ``region``; ``account_quotas`` reads the account's applied quotas (Service Quotas) when
    talking to AWS."""

    endpoint_url: str | None = None
    profile: str | None = None
    region: str | None = None
    account_quotas: bool = True

    def merge(self, other: ClientOptions) -> ClientOptions:
        """A copy with the options ``other`` sets (botocore's ``Config.merge`` style)."""
        return _merged(self, other)


class RunKeywords(TypedDict, total=False):
    """The keyword arguments ``apply``, ``revert`` and ``verify`` take (``RunOptions``'s fields, as typed)."""

    rate: Rate
    burst: float | None
    control_rate: Rate
    max_workers: int
    progress: bool
    poll: PollPolicy | float | None
    retries: RetryPolicy | int | None
    on_progress: ProgressCallback | None
    cancel: CancelSignal | None
    quotas: Mapping[str, Quota | tuple[float, float]] | None


def run_options(options: RunOptions | None, **keywords: Unpack[RunKeywords]) -> RunOptions:
    """``options`` (or the defaults) merged with the keyword arguments a public function was called with."""
    fields: dict[str, Any] = dict(keywords)
    if "poll" in fields:
        fields["poll"] = PollPolicy.coerce(fields["poll"])
    if "retries" in fields:
        fields["retries"] = RetryPolicy.coerce(fields["retries"])
    return (options or RunOptions()).merge(RunOptions(**fields))
