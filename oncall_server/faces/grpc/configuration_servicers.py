"""gRPC servicers for the paging configuration: users, schedules, escalation policies.

Thin like the others: authenticate the tenant, translate, call the core
module (:mod:`directory`, :mod:`oncall_schedules`, :mod:`escalation_policies`),
translate back. Errors are the core's domain errors, mapped by the interceptor.
"""

from __future__ import annotations

from oncall_server.api.v1 import (
    escalation_policy_service_pb2 as ep_pb,
)
from oncall_server.api.v1 import (
    escalation_policy_service_pb2_grpc as ep_grpc,
)
from oncall_server.api.v1 import (
    schedule_service_pb2 as sch_pb,
)
from oncall_server.api.v1 import (
    schedule_service_pb2_grpc as sch_grpc,
)
from oncall_server.api.v1 import (
    user_service_pb2 as usr_pb,
)
from oncall_server.api.v1 import (
    user_service_pb2_grpc as usr_grpc,
)
from oncall_server.configuration import escalation_policies, schedules, users
from oncall_server.errors import InvalidArgument
from oncall_server.faces.grpc import configuration_convert as convert
from oncall_server.faces.grpc.convert import timestamp
from oncall_server.faces.grpc.servicers import Context, _principal
from oncall_server.incidents.actions import clamp_page_size, decode_page_token, page_of
from oncall_server.runtime.app import App


class UserServicer(usr_grpc.UserServiceServicer):
    def __init__(self, app: App) -> None:
        self.app = app

    async def CreateUser(
        self, request: usr_pb.CreateUserRequest, context: Context
    ) -> usr_pb.CreateUserResponse:
        who = await _principal(self.app, context)
        # Refused rather than dropped: a caller who believes they set up contact methods would
        # otherwise have a user nobody can reach.
        if request.user.contact_methods:
            raise InvalidArgument.field(
                "user.contact_methods", "add contact methods with AddContactMethod after CreateUser"
            )
        if request.user.notification_rules:
            raise InvalidArgument.field(
                "user.notification_rules", "add notification rules with AddNotificationRule after CreateUser"
            )
        record = await users.create_user(
            self.app.sessions, self.app.clock, who.tenant_id, convert.user_fields(request.user)
        )
        return usr_pb.CreateUserResponse(user=convert.user(record))

    async def GetUser(self, request: usr_pb.GetUserRequest, context: Context) -> usr_pb.GetUserResponse:
        who = await _principal(self.app, context)
        record = await users.get_user(self.app.sessions, who.tenant_id, request.user_id)
        return usr_pb.GetUserResponse(user=convert.user(record))

    async def ListUsers(self, request: usr_pb.ListUsersRequest, context: Context) -> usr_pb.ListUsersResponse:
        who = await _principal(self.app, context)
        size = clamp_page_size(request.page_size, 100, 1000)
        records = await users.list_users(
            self.app.sessions, who.tenant_id, size + 1, decode_page_token(request.page_token)
        )
        page, token = page_of([r.user for r in records], size)
        return usr_pb.ListUsersResponse(
            users=[convert.user(r) for r in records[: len(page)]], next_page_token=token
        )

    async def UpdateUser(
        self, request: usr_pb.UpdateUserRequest, context: Context
    ) -> usr_pb.UpdateUserResponse:
        who = await _principal(self.app, context)
        record = await users.update_user(
            self.app.sessions,
            self.app.clock,
            who.tenant_id,
            request.user.id,
            convert.user_fields(request.user),
        )
        return usr_pb.UpdateUserResponse(user=convert.user(record))

    async def DeleteUser(
        self, request: usr_pb.DeleteUserRequest, context: Context
    ) -> usr_pb.DeleteUserResponse:
        who = await _principal(self.app, context)
        await users.delete_user(self.app.sessions, who.tenant_id, request.user_id)
        return usr_pb.DeleteUserResponse(user_id=request.user_id)

    async def AddContactMethod(
        self, request: usr_pb.AddContactMethodRequest, context: Context
    ) -> usr_pb.AddContactMethodResponse:
        who = await _principal(self.app, context)
        method, record = await users.add_contact_method(
            self.app.sessions,
            self.app.clock,
            self.app.plugins,
            who.tenant_id,
            request.user_id,
            convert.contact_method_fields(request.contact_method),
        )
        return usr_pb.AddContactMethodResponse(
            contact_method=convert.contact_method(method), user=convert.user(record)
        )

    async def RemoveContactMethod(
        self, request: usr_pb.RemoveContactMethodRequest, context: Context
    ) -> usr_pb.RemoveContactMethodResponse:
        who = await _principal(self.app, context)
        record = await users.remove_contact_method(
            self.app.sessions, who.tenant_id, request.user_id, request.contact_method_id
        )
        return usr_pb.RemoveContactMethodResponse(user=convert.user(record))

    async def AddNotificationRule(
        self, request: usr_pb.AddNotificationRuleRequest, context: Context
    ) -> usr_pb.AddNotificationRuleResponse:
        who = await _principal(self.app, context)
        rule = request.notification_rule
        rule_row, record = await users.add_notification_rule(
            self.app.sessions,
            self.app.clock,
            who.tenant_id,
            request.user_id,
            rule.contact_method_id,
            convert.seconds_of(rule.delay) if rule.HasField("delay") else 0,
        )
        return usr_pb.AddNotificationRuleResponse(
            notification_rule=convert.notification_rule(rule_row), user=convert.user(record)
        )

    async def RemoveNotificationRule(
        self, request: usr_pb.RemoveNotificationRuleRequest, context: Context
    ) -> usr_pb.RemoveNotificationRuleResponse:
        who = await _principal(self.app, context)
        record = await users.remove_notification_rule(
            self.app.sessions, who.tenant_id, request.user_id, request.notification_rule_id
        )
        return usr_pb.RemoveNotificationRuleResponse(user=convert.user(record))


class ScheduleServicer(sch_grpc.ScheduleServiceServicer):
    def __init__(self, app: App) -> None:
        self.app = app

    async def CreateSchedule(
        self, request: sch_pb.CreateScheduleRequest, context: Context
    ) -> sch_pb.CreateScheduleResponse:
        who = await _principal(self.app, context)
        row = await schedules.create_schedule(
            self.app.sessions, self.app.clock, who.tenant_id, convert.schedule_spec(request.schedule)
        )
        return sch_pb.CreateScheduleResponse(schedule=convert.schedule(row))

    async def GetSchedule(
        self, request: sch_pb.GetScheduleRequest, context: Context
    ) -> sch_pb.GetScheduleResponse:
        who = await _principal(self.app, context)
        row = await schedules.get_schedule(self.app.sessions, who.tenant_id, request.schedule_id)
        return sch_pb.GetScheduleResponse(schedule=convert.schedule(row))

    async def ListSchedules(
        self, request: sch_pb.ListSchedulesRequest, context: Context
    ) -> sch_pb.ListSchedulesResponse:
        who = await _principal(self.app, context)
        size = clamp_page_size(request.page_size, 100, 1000)
        rows = await schedules.list_schedules(
            self.app.sessions, who.tenant_id, size + 1, decode_page_token(request.page_token)
        )
        page, token = page_of(rows, size)
        return sch_pb.ListSchedulesResponse(
            schedules=[convert.schedule(r) for r in page], next_page_token=token
        )

    async def UpdateSchedule(
        self, request: sch_pb.UpdateScheduleRequest, context: Context
    ) -> sch_pb.UpdateScheduleResponse:
        who = await _principal(self.app, context)
        row = await schedules.update_schedule(
            self.app.sessions,
            self.app.clock,
            who.tenant_id,
            request.schedule.id,
            convert.schedule_spec(request.schedule),
        )
        return sch_pb.UpdateScheduleResponse(schedule=convert.schedule(row))

    async def DeleteSchedule(
        self, request: sch_pb.DeleteScheduleRequest, context: Context
    ) -> sch_pb.DeleteScheduleResponse:
        who = await _principal(self.app, context)
        await schedules.delete_schedule(self.app.sessions, who.tenant_id, request.schedule_id)
        return sch_pb.DeleteScheduleResponse(schedule_id=request.schedule_id)

    async def WhoIsOnCall(
        self, request: sch_pb.WhoIsOnCallRequest, context: Context
    ) -> sch_pb.WhoIsOnCallResponse:
        who = await _principal(self.app, context)
        answer = await schedules.who_is_on_call(
            self.app.sessions,
            self.app.clock,
            who.tenant_id,
            request.schedule_id,
            convert.optional_time(request, "at"),
        )
        return sch_pb.WhoIsOnCallResponse(
            user_id=answer.user_id or "",
            user=convert.user(answer.user) if answer.user else None,
            at=timestamp(answer.at),
        )

    async def AddScheduleOverride(
        self, request: sch_pb.AddScheduleOverrideRequest, context: Context
    ) -> sch_pb.AddScheduleOverrideResponse:
        who = await _principal(self.app, context)
        row = await schedules.add_override(
            self.app.sessions,
            self.app.clock,
            who.tenant_id,
            request.schedule_id,
            convert.override_spec(request.override),
        )
        return sch_pb.AddScheduleOverrideResponse(schedule=convert.schedule(row))

    async def RemoveScheduleOverride(
        self, request: sch_pb.RemoveScheduleOverrideRequest, context: Context
    ) -> sch_pb.RemoveScheduleOverrideResponse:
        who = await _principal(self.app, context)
        row = await schedules.remove_override(
            self.app.sessions,
            self.app.clock,
            who.tenant_id,
            request.schedule_id,
            convert.override_spec(request.override),
        )
        return sch_pb.RemoveScheduleOverrideResponse(schedule=convert.schedule(row))


class EscalationPolicyServicer(ep_grpc.EscalationPolicyServiceServicer):
    def __init__(self, app: App) -> None:
        self.app = app

    async def CreateEscalationPolicy(
        self, request: ep_pb.CreateEscalationPolicyRequest, context: Context
    ) -> ep_pb.CreateEscalationPolicyResponse:
        who = await _principal(self.app, context)
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
        who = await _principal(self.app, context)
        row = await escalation_policies.get_policy(
            self.app.sessions, who.tenant_id, request.escalation_policy_id
        )
        return ep_pb.GetEscalationPolicyResponse(escalation_policy=convert.policy(row))

    async def ListEscalationPolicies(
        self, request: ep_pb.ListEscalationPoliciesRequest, context: Context
    ) -> ep_pb.ListEscalationPoliciesResponse:
        who = await _principal(self.app, context)
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
        who = await _principal(self.app, context)
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
        who = await _principal(self.app, context)
        await escalation_policies.delete_policy(
            self.app.sessions, who.tenant_id, request.escalation_policy_id
        )
        return ep_pb.DeleteEscalationPolicyResponse(escalation_policy_id=request.escalation_policy_id)
