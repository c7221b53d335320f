"""botocore's ``medical-imaging`` service model, loaded once: the authority on shapes, limits and error codes.

Every part of the toolkit that needs a shape (the wire layer, parameter validation, search criteria, blob
limits, error statuses) reads it from here, never from a hand-written table.
"""

from __future__ import annotations

from functools import cache

from botocore.model import OperationModel, ServiceModel, Shape

SERVICE_NAME = "medical-imaging"


@cache
def service_model() -> ServiceModel:
    """The ``medical-imaging`` service model shipped with botocore."""
    import botocore.session

    return botocore.session.get_session().get_service_model(SERVICE_NAME)


def operation_model(name: str) -> OperationModel:
    """The model of one operation (botocore raises ``OperationNotFoundError`` for an unknown name)."""
    return service_model().operation_model(name)


def shape(name: str) -> Shape:
    """A named shape of the model (``"DICOMUpdates"``, ``"SearchByAttributeValue"`` ...)."""
    return service_model().shape_for(name)
