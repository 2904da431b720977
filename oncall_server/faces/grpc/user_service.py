"""``oncall.v1.UserService``: the caller's users, their contact methods and notification rules."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from oncall_server.api.v1 import user_pb2
from oncall_server.api.v1 import user_service_pb2 as usr_pb
from oncall_server.api.v1 import user_service_pb2_grpc as usr_grpc
from oncall_server.configuration import users
from oncall_server.errors import InvalidArgument
from oncall_server.faces.grpc import configuration_convert as convert
from oncall_server.faces.grpc.auth import Context, caller
from oncall_server.incidents.actions import clamp_page_size, decode_page_token, page_of
from oncall_server.runtime.app import App

_Remove = Callable[[async_sessionmaker[AsyncSession], str, str, str], Awaitable[users.UserRecord]]


class UserServicer(usr_grpc.UserServiceServicer):
    def __init__(self, app: App) -> None:
        self.app = app

    async def _remove(self, context: Context, remove: _Remove, user_id: str, item_id: str) -> user_pb2.User:
        """Removes a contact method or notification rule of one of the caller's users: the user after."""
        who = caller(context)
        return convert.user(await remove(self.app.sessions, who.tenant_id, user_id, item_id))

    async def CreateUser(
        self, request: usr_pb.CreateUserRequest, context: Context
    ) -> usr_pb.CreateUserResponse:
        who = caller(context)
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
        who = caller(context)
        record = await users.get_user(self.app.sessions, who.tenant_id, request.user_id)
        return usr_pb.GetUserResponse(user=convert.user(record))

    async def ListUsers(self, request: usr_pb.ListUsersRequest, context: Context) -> usr_pb.ListUsersResponse:
        who = caller(context)
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
        who = caller(context)
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
        who = caller(context)
        await users.delete_user(self.app.sessions, who.tenant_id, request.user_id)
        return usr_pb.DeleteUserResponse(user_id=request.user_id)

    async def AddContactMethod(
        self, request: usr_pb.AddContactMethodRequest, context: Context
    ) -> usr_pb.AddContactMethodResponse:
        who = caller(context)
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
        user = await self._remove(
            context, users.remove_contact_method, request.user_id, request.contact_method_id
        )
        return usr_pb.RemoveContactMethodResponse(user=user)

    async def AddNotificationRule(
        self, request: usr_pb.AddNotificationRuleRequest, context: Context
    ) -> usr_pb.AddNotificationRuleResponse:
        who = caller(context)
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
        user = await self._remove(
            context, users.remove_notification_rule, request.user_id, request.notification_rule_id
        )
        return usr_pb.RemoveNotificationRuleResponse(user=user)
