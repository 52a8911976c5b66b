"""The mobile recharge page at ``/m``: plain HTML forms, no JavaScript, no cookies.

Made for feature-phone browsers (WAP 2.0 / XHTML-MP era): one small page, phone number
and PIN in, the result out. A voucher with several offers answers with a choice of
offers and asks for the PIN again, so the PIN is never written into a page. Attempts are
limited per client address (``VOMS_MOBILE_RATE_LIMIT_PER_MINUTE``, per process). The
number is typed, so it proves nothing: bad PINs count against the client address (the
service's failed-lookup budget, VOMS_LOOKUP_FAILURES_PER_CLIENT), never against the
number, so nobody can get someone else blacklisted from here. The address is the peer's,
or the one a proxy of VOMS_TRUSTED_PROXIES forwarded for (voms.api.forwarded).
"""

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment

from voms.channels import subscriber
from voms.channels.texts import Messages
from voms.domain.results import Result
from voms.runtime import Runtime
from voms.serving import RuntimeDep, TokenBuckets, client_address, run_redemption_work

CHANNEL = "web"

router = APIRouter(tags=["channels"], lifespan=subscriber.texts_checked, include_in_schema=False)

_PAGE = Environment(autoescape=True).from_string(
    """<!DOCTYPE html>
<html lang="{{ language }}"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width">
<title>{{ t("web.title") }}</title></head>
<body>
<h1>{{ t("web.title") }}</h1>
{% if message %}<p><strong>{{ message }}</strong></p>{% endif %}
{% if form %}
<form method="post" action="/m">
<input type="hidden" name="rid" value="{{ rid }}">
{% if scenarios %}
{% for s in scenarios %}<label><input type="radio" name="scenario" value="{{ s.number }}"
{%- if loop.first %} checked{% endif %}> {{ s.label }}</label><br>
{% endfor %}
<input type="hidden" name="msisdn" value="{{ msisdn }}">
<input type="hidden" name="recipient" value="{{ recipient }}">
{% else %}
<label>{{ t("web.msisdn") }}<br>
<input type="tel" name="msisdn" value="{{ msisdn }}" size="16" maxlength="20"></label><br>
<label>{{ t("web.recipient") }}<br>
<input type="tel" name="recipient" value="{{ recipient }}" size="16" maxlength="20"></label><br>
{% endif %}
<label>{{ t("web.pin") }}<br>
<input type="tel" name="pin" value="" size="24" maxlength="40" autocomplete="off"></label><br>
<input type="submit" value="{{ t("web.submit") }}">
</form>
{% else %}
<p><a href="/m">{{ t("web.again") }}</a></p>
{% endif %}
</body></html>
"""
)


def _limiter(rt: Runtime) -> TokenBuckets:
    """Attempts per client address: ``VOMS_MOBILE_RATE_LIMIT_PER_MINUTE``, bursts as large."""
    limiter = rt.caches.get("mobile_attempts")
    if not isinstance(limiter, TokenBuckets):
        per_minute = rt.settings.mobile_rate_limit_per_minute
        limiter = TokenBuckets(per_minute / 60.0, per_minute)
        rt.caches["mobile_attempts"] = limiter
    return limiter


def _language(rt: Runtime, request: Request) -> str:
    """The most preferred language of Accept-Language that the texts have (or the default)."""
    known = subscriber.texts(rt).languages()
    asked: list[tuple[float, int, str]] = []
    for position, part in enumerate(request.headers.get("accept-language", "").split(",")):
        tag, _, parameters = part.partition(";")
        quality = 1.0
        if parameters.strip().startswith("q="):
            try:
                quality = float(parameters.strip()[2:])
            except ValueError:
                quality = 0.0
        asked.append((-quality, position, tag.strip().replace("_", "-")))
    for quality, _, tag in sorted(asked):
        for candidate in (tag, tag.split("-", 1)[0]):
            if quality < 0 and candidate in known:
                return candidate
    return known[0]


def _page(
    said: Messages,
    language: str,
    *,
    status: int = 200,
    form: bool = True,
    headers: dict[str, str] | None = None,
    **values: Any,
) -> HTMLResponse:
    values.setdefault("rid", f"web-{uuid.uuid4().hex}")
    html = _PAGE.render(t=said.text, language=language, form=form, **values)
    # Results are personal: no cache along the way may keep them.
    return HTMLResponse(
        html, status_code=status, headers={"Cache-Control": "no-store", **(headers or {})}
    )


def _enabled(rt: Runtime) -> None:
    if not rt.settings.mobile_enabled:
        raise HTTPException(status_code=404)


@router.get("/m", response_class=HTMLResponse)
async def form(request: Request, rt: RuntimeDep) -> HTMLResponse:
    """The empty recharge form."""
    _enabled(rt)
    language = _language(rt, request)
    return _page(subscriber.texts(rt).messages(None, language), language, msisdn="", recipient="")


def _recharge(
    rt: Runtime,
    client: str,
    language: str,
    msisdn: str,
    pin: str,
    recipient: str,
    scenario: str,
    rid: str,
) -> HTMLResponse:
    said = subscriber.messages(rt, CHANNEL, subscriber.msisdn_or_none(msisdn), language)
    answer = subscriber.redeem(
        rt,
        CHANNEL,
        msisdn=msisdn,
        pin=pin,
        recipient=recipient or None,
        scenario=scenario or None,
        request_id=rid[:100] if rid.startswith("web-") else None,
        client=client,
    )
    code = answer["result_code"]
    if code == Result.SUCCESS.code:
        return _page(said, language, form=False, message=said.result(answer))
    if code == Result.SCENARIO_REQUIRED.code:
        offers = [
            {"number": s["number"], "label": said.scenario(s)} for s in answer.get("scenarios", [])
        ]
        return _page(
            said,
            language,
            message=said.text("web.choose_scenario"),
            scenarios=offers,
            msisdn=msisdn,
            recipient=recipient,
        )
    # 200 even for a refusal: some feature-phone browsers show only their own error page
    # for a 4xx answer, and the result is this page's content.
    return _page(said, language, message=said.result(answer), msisdn=msisdn, recipient=recipient)


@router.post("/m", response_class=HTMLResponse)
async def recharge(
    request: Request,
    rt: RuntimeDep,
    msisdn: Annotated[str, Form(max_length=40)] = "",
    pin: Annotated[str, Form(max_length=60)] = "",
    recipient: Annotated[str, Form(max_length=40)] = "",
    scenario: Annotated[str, Form(max_length=8)] = "",
    rid: Annotated[str, Form(max_length=100)] = "",
) -> HTMLResponse:
    """Redeem the PIN for the number (or the other number); the result as a page."""
    _enabled(rt)
    language = _language(rt, request)
    client = client_address(request)
    if not _limiter(rt).allow(client):
        said = subscriber.texts(rt).messages(None, language)
        answer = Result.TOO_MANY_REQUESTS.body()
        wait = _limiter(rt).retry_after(client)
        return _page(
            said,
            language,
            status=429,
            headers={"Retry-After": str(wait)},
            message=f"{said.result(answer)} {said.text('web.retry_after', seconds=wait)}",
            msisdn=msisdn,
            recipient=recipient,
        )
    return await run_redemption_work(
        request,
        _recharge,
        rt,
        client,
        language,
        msisdn.strip(),
        pin,
        recipient.strip(),
        scenario.strip(),
        rid,
    )
