"""``oncall.v1.ScheduleService``: the caller's on-call schedules, overrides and who is on call."""

from __future__ import annotations

from oncall_server.api.v1 import schedule_service_pb2 as sch_pb
from oncall_server.api.v1 import schedule_service_pb2_grpc as sch_grpc
from oncall_server.configuration import schedules
from oncall_server.faces.grpc import configuration_convert as convert
from oncall_server.faces.grpc.auth import Context, caller
from oncall_server.faces.grpc.convert import timestamp
from oncall_server.incidents.actions import clamp_page_size, decode_page_token, page_of
from oncall_server.runtime.app import App


class ScheduleServicer(sch_grpc.ScheduleServiceServicer):
    def __init__(self, app: App) -> None:
        self.app = app

    async def CreateSchedule(
        self, request: sch_pb.CreateScheduleRequest, context: Context
    ) -> sch_pb.CreateScheduleResponse:
        who = caller(context)
        row = await schedules.create_schedule(
            self.app.sessions, self.app.clock, who.tenant_id, convert.schedule_spec(request.schedule)
        )
        return sch_pb.CreateScheduleResponse(schedule=convert.schedule(row))

    async def GetSchedule(
        self, request: sch_pb.GetScheduleRequest, context: Context
    ) -> sch_pb.GetScheduleResponse:
        who = caller(context)
        row = await schedules.get_schedule(self.app.sessions, who.tenant_id, request.schedule_id)
        return sch_pb.GetScheduleResponse(schedule=convert.schedule(row))

    async def ListSchedules(
        self, request: sch_pb.ListSchedulesRequest, context: Context
    ) -> sch_pb.ListSchedulesResponse:
        who = caller(context)
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
        who = caller(context)
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
        who = caller(context)
        await schedules.delete_schedule(self.app.sessions, who.tenant_id, request.schedule_id)
        return sch_pb.DeleteScheduleResponse(schedule_id=request.schedule_id)

    async def WhoIsOnCall(
        self, request: sch_pb.WhoIsOnCallRequest, context: Context
    ) -> sch_pb.WhoIsOnCallResponse:
        who = caller(context)
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
        who = caller(context)
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
        who = caller(context)
        row = await schedules.remove_override(
            self.app.sessions,
            self.app.clock,
            who.tenant_id,
            request.schedule_id,
            convert.override_spec(request.override),
        )
        return sch_pb.RemoveScheduleOverrideResponse(schedule=convert.schedule(row))
