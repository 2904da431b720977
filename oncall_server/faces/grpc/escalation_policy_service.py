"""``oncall.v1.EscalationPolicyService``: the caller's escalation policies."""

from __future__ import annotations

from oncall_server.api.v1 import escalation_policy_service_pb2 as ep_pb
from oncall_server.api.v1 import escalation_policy_service_pb2_grpc as ep_grpc
from oncall_server.configuration import escalation_policies
from oncall_server.faces.grpc import configuration_convert as convert
from oncall_server.faces.grpc.auth import Context, caller
from oncall_server.incidents.actions import clamp_page_size, decode_page_token, page_of
from oncall_server.runtime.app import App


class EscalationPolicyServicer(ep_grpc.EscalationPolicyServiceServicer):
    def __init__(self, app: App) -> None:
        self.app = app

    async def CreateEscalationPolicy(
        self, request: ep_pb.CreateEscalationPolicyRequest, context: Context
    ) -> ep_pb.CreateEscalationPolicyResponse:
        who = caller(context)
        row = await escalation_policies.create_policy(
            self.app.sessions,
            self.app.clock,
            who.tenant_id,
            convert.policy_spec(request.escalation_policy),
        )
        return ep_pb.CreateEscalationPolicyResponse(escalation_policy=convert.policy(row))

    async def GetEscalationPolicy(
        self, request: ep_pb.GetEscalationPolicyRequest, context: Context
    ) -> ep_pb.GetEscalationPolicyResponse:
        who = caller(context)
        row = await escalation_policies.get_policy(
            self.app.sessions, who.tenant_id, request.escalation_policy_id
        )
        return ep_pb.GetEscalationPolicyResponse(escalation_policy=convert.policy(row))

    async def ListEscalationPolicies(
        self, request: ep_pb.ListEscalationPoliciesRequest, context: Context
    ) -> ep_pb.ListEscalationPoliciesResponse:
        who = caller(context)
        size = clamp_page_size(request.page_size, 100, 1000)
        rows = await escalation_policies.list_policies(
            self.app.sessions, who.tenant_id, size + 1, decode_page_token(request.page_token)
        )
        page, token = page_of(rows, size)
        return ep_pb.ListEscalationPoliciesResponse(
            escalation_policies=[convert.policy(r) for r in page], next_page_token=token
        )

    async def UpdateEscalationPolicy(
        self, request: ep_pb.UpdateEscalationPolicyRequest, context: Context
    ) -> ep_pb.UpdateEscalationPolicyResponse:
        who = caller(context)
        row = await escalation_policies.update_policy(
            self.app.sessions,
            self.app.clock,
            who.tenant_id,
            request.escalation_policy.id,
            convert.policy_spec(request.escalation_policy),
        )
        return ep_pb.UpdateEscalationPolicyResponse(escalation_policy=convert.policy(row))

    async def DeleteEscalationPolicy(
        self, request: ep_pb.DeleteEscalationPolicyRequest, context: Context
    ) -> ep_pb.DeleteEscalationPolicyResponse:
        who = caller(context)
        await escalation_policies.delete_policy(
            self.app.sessions, who.tenant_id, request.escalation_policy_id
        )
        return ep_pb.DeleteEscalationPolicyResponse(escalation_policy_id=request.escalation_policy_id)
