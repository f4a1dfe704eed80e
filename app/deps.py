"""Dependencies of the routes, as ``Annotated`` aliases; the objects live in the lifespan (app.state)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials

from app.auth import bearer_scheme, require_token
from app.jobs import JobRunner
from app.scheduler import JobScheduler
from config.settings import Settings
from dataset.manager import DatasetManager


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _runner(request: Request) -> JobRunner:
    return request.app.state.runner


def _scheduler(request: Request) -> JobScheduler:
    return request.app.state.scheduler


def _dataset(request: Request) -> DatasetManager:
    return request.app.state.dataset


def _authorized(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)]
) -> None:
    require_token(request, credentials)


SettingsDep = Annotated[Settings, Depends(_settings)]
RunnerDep = Annotated[JobRunner, Depends(_runner)]
SchedulerDep = Annotated[JobScheduler, Depends(_scheduler)]
DatasetDep = Annotated[DatasetManager, Depends(_dataset)]
Authorized = Depends(_authorized)
