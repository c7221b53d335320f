"""Research copies: non-primary copies of image sets, to de-identify or curate while the primaries stay untouched.

AHI's CopyImageSet without a destination "copies the source image set into a new image set" that is not
primary (Developer Guide, "Copying an image set"; API reference CopyImageSet: ``promoteToPrimary`` is what makes
a copy primary, and it is not set here). The copy is asynchronous: the new image set is LOCKED until its
``imageSetWorkflowStatus`` is COPIED (or COPY_FAILED, with a ``message``), so each copy is waited for with the
``ImageSetCopied`` waiter (``curation.run.waiters``). Copies are sent at the account's CopyImageSet quota
(``curation.run.limits``). Nothing is deleted or changed in a source: a copy that fails is reported in the table
and leaves its source as it was; a copy that was made and then failed is listed too, so it can be deleted.

``research_copies(..., dry_run=True)`` shows the calls without sending them (the plan of this step).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import partial
from typing import Any

import pandas as pd
from botocore.exceptions import BotoCoreError, ClientError

from curation.model.quotas import Action, Quota
from curation.run.limits import Limiters, Rate
from curation.run.retries import error_code, error_message
from curation.run.waiters import IMAGE_SET_COPIED, WaiterError, WaitSettings, wait_for

__all__ = ["COPY_COLUMNS", "research_copies"]

#: The columns of ``research_copies``' table.
COPY_COLUMNS = ("ImageSetID", "source_version", "copy_image_set_id", "copy_version", "status", "error")


def research_copies(
    client: Any,
    datastore_id: str,
    image_set_ids: Iterable[str],
    *,
    rate: Rate = "auto",
    quotas: Mapping[str, Quota | tuple[float, float]] | None = None,
    wait: WaitSettings | None = None,
    dry_run: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Copy each image set (at its latest version) to a new non-primary image set and wait until it is COPIED.

    Returns one row per source: ImageSetID, source_version, copy_image_set_id, copy_version, status
    (``"copied"``, ``"failed"`` or ``"dry-run"``) and error; ``frame.attrs["requests"]`` holds the CopyImageSet
    calls' parameters. ``rate``: CopyImageSet calls per second (``"auto"``: the account's or AHI's documented
    quota; a number: a ceiling; None: no limit); ``quotas``: the account's, as ``apply`` takes them; ``wait``:
    how the ``ImageSetCopied`` waiter polls. Fetch the copies with ``curation.fetch(client, datastore_id,
    table["copy_image_set_id"].dropna())``.
    """
    from tqdm.auto import tqdm

    ids = list(dict.fromkeys(str(i) for i in image_set_ids))
    limiters = Limiters(quotas, rates={Action.COPY_IMAGE_SET: rate, Action.GET_IMAGE_SET: None})
    settings = wait or WaitSettings()
    rows: list[dict[str, Any]] = []
    requests: list[dict[str, Any]] = []
    for image_set_id in tqdm(ids, desc="CopyImageSet", unit=" image sets", disable=not progress or dry_run):
        row: dict[str, Any] = dict.fromkeys(COPY_COLUMNS)
        row["ImageSetID"] = image_set_id
        try:
            source = client.get_image_set(datastoreId=datastore_id, imageSetId=image_set_id)
            row["source_version"] = source["versionId"]
            params = {
                "datastoreId": datastore_id,
                "sourceImageSetId": image_set_id,
                "copyImageSetInformation": {"sourceImageSet": {"latestVersionId": source["versionId"]}},
            }
            requests.append(params)
            if dry_run:
                print(f"CopyImageSet {params}")
                row["status"] = "dry-run"
            else:
                answer = limiters.call(client, Action.COPY_IMAGE_SET, partial(client.copy_image_set, **params))
                created = answer["destinationImageSetProperties"]["imageSetId"]
                row["copy_image_set_id"] = created
                done = wait_for(
                    IMAGE_SET_COPIED, client.get_image_set, settings, datastoreId=datastore_id, imageSetId=created
                )
                row["copy_version"], row["status"] = done.get("versionId"), "copied"
        except WaiterError as exc:
            last = dict(exc.last_response or {})
            row["status"] = "failed"
            row["error"] = f"{last.get('imageSetWorkflowStatus', 'copy not finished')}: {last.get('message') or exc}"
        except (ClientError, BotoCoreError) as exc:  # refused by the service, or not reached: the source is untouched
            row["status"] = "failed"
            row["error"] = f"{error_code(exc)}: {error_message(exc)}"
        rows.append(row)
    table = pd.DataFrame(rows, columns=list(COPY_COLUMNS))
    table.attrs["requests"] = requests
    return table
