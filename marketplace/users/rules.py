"""Normalising e-mail addresses and phone numbers, ages on the business calendar, settings and client."""

from __future__ import annotations

import re
from datetime import date

from email_validator import EmailNotValidError, validate_email
from flask import current_app, request

from marketplace.clock import business_today
from marketplace.config import Settings
from marketplace.errors import Unprocessable
from marketplace.users.errors import Underage

MINIMUM_AGE = 21
_PHONE = re.compile(r"^\+[1-9][0-9]{7,14}$")  # ASCII digits only (\d would take Arabic-Indic digits too)


def normalise_email(raw: str) -> str:
    try:
        result = validate_email(raw.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise Unprocessable(details={"fields": {"email": ["Not a valid e-mail address."]}}) from exc
    return result.normalized.lower()


def normalise_phone(raw: str, field: str = "phone") -> str:
    cleaned = re.sub(r"[\s\-().]", "", raw.strip())
    if cleaned.startswith("00"):
        cleaned = "+" + cleaned[2:]
    if not _PHONE.match(cleaned):
        raise Unprocessable(
            details={"fields": {field: ["Use international format with the country code, e.g. +971501234567."]}}
        )
    return cleaned


def age_on(dob: date, day: date) -> int:
    years = day.year - dob.year
    if (day.month, day.day) < (dob.month, dob.day):
        years -= 1
    return years


def ensure_adult(dob: date) -> None:
    today = business_today()
    if dob > today:
        raise Unprocessable(details={"fields": {"date_of_birth": ["Date of birth is in the future."]}})
    if age_on(dob, today) < MINIMUM_AGE:
        raise Underage()
    if age_on(dob, today) > 120:
        raise Unprocessable(details={"fields": {"date_of_birth": ["Date of birth is not plausible."]}})


def _settings() -> Settings:
    value: Settings = current_app.config["SETTINGS"]
    return value


def _client() -> tuple[str | None, str | None]:
    try:
        return request.remote_addr, (request.user_agent.string or None)
    except RuntimeError:
        return None, None
