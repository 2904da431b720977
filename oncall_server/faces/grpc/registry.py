"""Every ``oncall.v1`` service this server runs, named once: its descriptor, servicer and
generated add-function. The server registers, reflects and health-checks from this list, the
auth interceptor reads the descriptors' methods, and the Connect face
(:mod:`oncall_server.faces.http.connect`) serves the same servicers through the same
:func:`interceptors`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from oncall_server.api.v1 import (
    catalog_service_pb2,
    catalog_service_pb2_grpc,
    escalation_policy_service_pb2,
    escalation_policy_service_pb2_grpc,
    incident_service_pb2,
    incident_service_pb2_grpc,
    ingest_service_pb2,
    ingest_service_pb2_grpc,
    integration_service_pb2,
    integration_service_pb2_grpc,
    schedule_service_pb2,
    schedule_service_pb2_grpc,
    user_service_pb2,
    user_service_pb2_grpc,
)
from oncall_server.faces.grpc.auth import AuthInterceptor
from oncall_server.faces.grpc.catalog_service import CatalogServicer
from oncall_server.faces.grpc.escalation_policy_service import EscalationPolicyServicer
from oncall_server.faces.grpc.incident_service import IncidentServicer
from oncall_server.faces.grpc.ingest_service import IngestServicer
from oncall_server.faces.grpc.integration_service import IntegrationServicer
from oncall_server.faces.grpc.interceptor import ErrorInterceptor
from oncall_server.faces.grpc.schedule_service import ScheduleServicer
from oncall_server.faces.grpc.user_service import UserServicer
from oncall_server.runtime.app import App


@dataclass(frozen=True, slots=True)
class ServiceEntry:
    descriptor: ServiceDescriptor
    servicer: Callable[[App], Any]
    add_to_server: Callable[[Any, grpc.aio.Server], None]

    @property
    def name(self) -> str:
        """The full name (``oncall.v1.IngestService``) reflection and health report."""
        return self.descriptor.full_name


def _entry(name: str, pb2: ModuleType, pb2_grpc: ModuleType, servicer: Callable[[App], Any]) -> ServiceEntry:
    """``name``'s entry; the generated modules name everything else after it."""
    return ServiceEntry(
        pb2.DESCRIPTOR.services_by_name[name], servicer, getattr(pb2_grpc, f"add_{name}Servicer_to_server")
    )


SERVICES: tuple[ServiceEntry, ...] = (
    _entry("IngestService", ingest_service_pb2, ingest_service_pb2_grpc, IngestServicer),
    _entry("IncidentService", incident_service_pb2, incident_service_pb2_grpc, IncidentServicer),
    _entry("IntegrationService", integration_service_pb2, integration_service_pb2_grpc, IntegrationServicer),
    _entry("CatalogService", catalog_service_pb2, catalog_service_pb2_grpc, CatalogServicer),
    _entry("UserService", user_service_pb2, user_service_pb2_grpc, UserServicer),
    _entry("ScheduleService", schedule_service_pb2, schedule_service_pb2_grpc, ScheduleServicer),
    _entry(
        "EscalationPolicyService",
        escalation_policy_service_pb2,
        escalation_policy_service_pb2_grpc,
        EscalationPolicyServicer,
    ),
)
SERVICE_NAMES = [entry.name for entry in SERVICES]


def add_services(app: App, server: grpc.aio.Server) -> None:
    """Register every service's servicer on ``server``."""
    for entry in SERVICES:
        entry.add_to_server(entry.servicer(app), server)


def interceptors(app: App) -> list[grpc.aio.ServerInterceptor]:
    """What every call of these services goes through, outermost first: the error mapping, then
    the auth check (inside it, so an outage during the token look-up is mapped like a handler's
    error). The gRPC server installs this chain; the Connect face runs its calls through it."""
    return [ErrorInterceptor(), AuthInterceptor(app.sessions, [entry.descriptor for entry in SERVICES])]
